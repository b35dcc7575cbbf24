"""The reconciler counts claim tokens against queued jobs, queue by queue, on a real Redis: it publishes
what a lost token leaves uncovered and nothing while the tokens cover the queue, counts tokens a live
worker holds, and leaves out a run whose submit is still publishing (it inserts its jobs well before it
publishes their tokens)."""

from __future__ import annotations

from datetime import timedelta

import redis
from sqlalchemy import update

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.enqueue import mark_published
from vlmbatch.schema.ledger.tables import Run, utcnow
from vlmbatch.worker.transport.celery_app import make_celery
from vlmbatch.worker.transport.publisher import RedisPublisher
from vlmbatch.worker.transport.reconciler import reconcile

PER_MESSAGE = 16


class CountingPublisher:
    def __init__(self) -> None:
        self.published = 0

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        self.published += jobs
        return 1


def test_jobs_of_a_run_still_publishing_are_not_republished(database_url: str, redis_url: str, queue_name: str) -> None:
    sessions = ledger(database_url)
    make_run(sessions, jobs=5, queue=queue_name)
    long_ago = utcnow() - timedelta(minutes=10)
    with sessions() as session, session.begin():  # a submit still publishing (the broker holds nothing yet)
        mark_published(session, run_id=session.query(Run.id).scalar())
    publisher = CountingPublisher()

    def reconciled() -> int | None:
        return reconcile(
            sessions=sessions, publisher=publisher, broker_url=redis_url, jobs_per_message=PER_MESSAGE, grace_seconds=30
        ).republished

    assert reconciled() == 0 and publisher.published == 0
    with sessions() as session, session.begin():  # the submit died: no publication for the grace time
        session.execute(update(Run).values(published_at=long_ago))
    assert reconciled() == 5 and publisher.published == 5


def test_tokens_lost_from_the_queue_are_published_again_and_spare_ones_are_not(
    database_url: str, redis_url: str, queue_name: str
) -> None:
    sessions = ledger(database_url)
    make_run(sessions, jobs=40, queue=queue_name)  # three tokens' worth (16 + 16 + 8)
    app = make_celery(Settings(broker_url=redis_url, queue=queue_name))  # type: ignore[call-arg]
    publisher = RedisPublisher(app, jobs_per_message=PER_MESSAGE)
    assert publisher.publish(queue_name, 40) == 3
    client = redis.Redis.from_url(redis_url)

    def reconciled() -> int | None:
        return reconcile(
            sessions=sessions, publisher=publisher, broker_url=redis_url, jobs_per_message=PER_MESSAGE, grace_seconds=0
        ).republished

    try:
        assert reconciled() == 0 and client.llen(queue_name) == 3  # covered: nothing published
        client.rpop(queue_name)  # one token lost
        assert reconciled() == 8 and client.llen(queue_name) == 3  # 32 covered, 8 were not: one token
        client.delete(queue_name)  # Redis lost the queue
        assert reconciled() == 40 and client.llen(queue_name) == 3
        with app.connection_for_read() as connection:
            held = connection.SimpleQueue(queue_name).get(timeout=5)  # delivered to a worker, not acknowledged
            assert client.llen(queue_name) == 2
            assert reconciled() == 0  # the held token still covers its jobs
            client.zadd("unacked_index", {str(held.delivery_tag): 0})  # delivered long ago: its worker is dead
            assert reconciled() == 8 and client.llen(queue_name) == 3
            held.ack()
    finally:
        client.delete(queue_name)
        client.close()


def test_a_held_run_is_neither_claimed_nor_given_tokens_until_released(database_url: str, queue_name: str) -> None:
    """A Batch API batch still validating holds its run: a token of its queue claims none of its jobs
    (one may still be cancelled before any runs), and the reconciler publishes none for them."""
    from vlmbatch.schema.ledger.claims import QueueClaimer
    from vlmbatch.schema.ledger.runs import release_run

    sessions = ledger(database_url)
    run_id, _ = make_run(sessions, jobs=3, queue=queue_name)
    with sessions() as session, session.begin():
        session.execute(update(Run).where(Run.id == run_id).values(held=True))
    claimer = QueueClaimer(queue=queue_name)
    with sessions() as session, session.begin():
        assert claimer.claim(session, limit=16, worker="w", lease_seconds=60) == []
    publisher = CountingPublisher()
    report = reconcile(
        sessions=sessions, publisher=publisher, broker_url="redis://127.0.0.1:1", jobs_per_message=16, grace_seconds=0
    )
    assert report.republished == 0 and publisher.published == 0  # nothing to cover: the broker is not asked
    with sessions() as session, session.begin():
        release_run(session, run_id=run_id)
    with sessions() as session, session.begin():
        assert len(claimer.claim(session, limit=16, worker="w", lease_seconds=60)) == 3
