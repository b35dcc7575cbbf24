"""Reading the broker for the reconciler, on a real Redis: a message a live worker holds unacknowledged
(reserved, waiting for room) stays counted as present once the worker stamps it, however long it waits;
an acknowledged one is never brought back by a stamp."""

from __future__ import annotations

import time

import redis

from vlmbatch.schema.settings import Settings
from vlmbatch.worker.transport.broker_scan import job_ids_in_broker, touch_unacked
from vlmbatch.worker.transport.celery_app import make_celery
from vlmbatch.worker.transport.publisher import RedisPublisher

STALE_S = 300.0


def test_a_held_message_stays_present_while_its_worker_stamps_it(redis_url: str, queue_name: str) -> None:
    app = make_celery(Settings(broker_url=redis_url, queue=queue_name))  # type: ignore[call-arg]
    RedisPublisher(app, jobs_per_message=16).publish(queue_name, [1, 2, 3])
    client = redis.Redis.from_url(redis_url)
    with app.connection_for_read() as connection:
        held = connection.SimpleQueue(queue_name).get(timeout=5)  # delivered, not acknowledged
        tag = str(held.delivery_tag)
        assert client.llen(queue_name) == 0 and client.hexists("unacked", tag)
        assert job_ids_in_broker(redis_url, [queue_name], unacked_stale_s=STALE_S) == {1, 2, 3}

        client.zadd("unacked_index", {tag: time.time() - 2 * STALE_S})  # it has waited long
        assert job_ids_in_broker(redis_url, [queue_name], unacked_stale_s=STALE_S) == set()
        assert touch_unacked(redis_url, [tag, "not-a-held-tag"]) == 1
        assert job_ids_in_broker(redis_url, [queue_name], unacked_stale_s=STALE_S) == {1, 2, 3}
        assert client.zscore("unacked_index", "not-a-held-tag") is None

        held.ack()
        assert touch_unacked(redis_url, [tag]) == 0
        assert client.zscore("unacked_index", tag) is None
    client.close()
