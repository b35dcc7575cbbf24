"""Reading the broker for the reconciler, on a real Redis: waiting claim tokens are counted by the list's
length, a token a live worker holds unacknowledged (reserved, waiting for room) stays counted once the
worker stamps it, however long it waits; an acknowledged one is never brought back by a stamp, and
foreign or other queues' messages count for nothing."""

from __future__ import annotations

import json
import time

import redis

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.transport.broker_scan import jobs_covered, touch_unacked
from vlmbatch.worker.transport.celery_app import make_celery
from vlmbatch.worker.transport.publisher import RedisPublisher

STALE_S = 300.0


def _covered(redis_url: str, queue: str) -> int | None:
    return jobs_covered(redis_url, queue, jobs_per_message=16, unacked_stale_s=STALE_S)


def test_a_held_token_stays_counted_while_its_worker_stamps_it(redis_url: str, queue_name: str) -> None:
    app = make_celery(Settings(broker_url=redis_url, queue=queue_name))  # type: ignore[call-arg]
    assert RedisPublisher(app, jobs_per_message=16).publish(queue_name, 20) == 2
    client = redis.Redis.from_url(redis_url)
    client.lpush(queue_name, "not a message")  # counted by length as a token: at worst one spare
    assert _covered(redis_url, queue_name) == 48
    client.lpop(queue_name)
    with app.connection_for_read() as connection:
        held = connection.SimpleQueue(queue_name).get(timeout=5)  # delivered, not acknowledged
        tag = str(held.delivery_tag)
        assert client.llen(queue_name) == 1 and client.hexists("unacked", tag)
        assert _covered(redis_url, queue_name) == 32
        assert _covered(redis_url, f"{queue_name}-other") == 0

        client.zadd("unacked_index", {tag: time.time() - 2 * STALE_S})  # it has waited long
        assert _covered(redis_url, queue_name) == 16
        assert touch_unacked(redis_url, [tag, "not-a-held-tag"]) == 1
        assert _covered(redis_url, queue_name) == 32
        assert client.zscore("unacked_index", "not-a-held-tag") is None

        held.ack()
        assert touch_unacked(redis_url, [tag]) == 0
        assert client.zscore("unacked_index", tag) is None
        assert _covered(redis_url, queue_name) == 16
    client.delete(queue_name)
    client.close()


def test_an_unacknowledged_message_that_is_not_a_token_counts_for_nothing(redis_url: str, queue_name: str) -> None:
    client = redis.Redis.from_url(redis_url)
    tag = f"foreign-{queue_name}"
    foreign = {"body": "e30=", "properties": {"body_encoding": "base64"}}  # base64 of {}
    client.hset("unacked", tag, json.dumps([foreign, "", queue_name]))
    client.zadd("unacked_index", {tag: time.time()})
    try:
        assert _covered(redis_url, queue_name) == 0
    finally:
        client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)
        client.close()


def test_tokens_for_a_wiped_queue_are_published_a_pipeline_at_a_time(redis_url: str, queue_name: str) -> None:
    """What the reconciler publishes after Redis lost a queue of 10^7 jobs is 625,000 messages: they are
    built and sent PIPELINE_MESSAGES at a time, so memory does not grow with the deficit."""
    import tracemalloc

    app = make_celery(Settings(broker_url=redis_url, queue=queue_name))  # type: ignore[call-arg]
    publisher = RedisPublisher(app, jobs_per_message=1)
    messages = 4 * RedisPublisher.PIPELINE_MESSAGES + 7
    tracemalloc.start()
    try:
        assert publisher.publish(queue_name, messages) == messages
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert redis.Redis.from_url(redis_url).llen(queue_name) == messages
    # ~1.9 KB a message while a pipeline is built: 5,000 messages at once measured 9.7 MB here.
    assert peak < RedisPublisher.PIPELINE_MESSAGES * 4_000, peak
