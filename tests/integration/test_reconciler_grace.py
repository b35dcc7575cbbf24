"""The reconciler's grace for a lost message counts from the job's queue time and from the run's last
publication: a long submit inserts its jobs well before it publishes them, and they are not lost."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import update

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.schema.enqueue import mark_published
from vlmbatch.schema.tables import Job, Run, utcnow
from vlmbatch.worker.transport.reconciler import reconcile


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[int] = []

    def publish(self, queue: str, job_ids: Sequence[int], *, countdown: float | None = None) -> int:
        self.published.extend(job_ids)
        return 1


def test_jobs_of_a_run_still_publishing_are_not_republished(database_url: str, redis_url: str) -> None:
    sessions = ledger(database_url)
    run_id, ids = make_run(sessions, jobs=5)
    long_ago = utcnow() - timedelta(minutes=10)
    with sessions() as session, session.begin():
        # Inserted ten minutes ago by a submit that is still publishing (the broker holds nothing yet).
        session.execute(update(Job).values(queued_at=long_ago))
        mark_published(session, run_id=run_id)
    publisher = RecordingPublisher()
    report = reconcile(sessions=sessions, publisher=publisher, broker_url=redis_url, grace_seconds=30)
    assert report.republished == 0 and publisher.published == []

    with sessions() as session, session.begin():  # the submit died: no publication for the grace time
        session.execute(update(Run).values(published_at=long_ago))
    report = reconcile(sessions=sessions, publisher=publisher, broker_url=redis_url, grace_seconds=30)
    assert report.republished == 5 and sorted(publisher.published) == ids
