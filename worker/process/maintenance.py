"""Background duties of a Celery worker process besides running jobs:

- the reconciler, every `reconcile_seconds` (one worker at a time on PostgreSQL, by advisory lock);
- stamping the messages this worker holds unacknowledged as fresh (broker_scan.touch_unacked), so that
  live work waiting for room is not taken for a dead worker's (keep `reconcile_seconds` well under
  `unacked_stale_seconds`);
- a consumer watchdog: messages wait in the queue, this worker has room, yet nothing has been delivered
  for a long time. Celery workers can reconnect to a restarted broker and then stop consuming
  (celery#10205, #10302); the cure is a restart, so the worker exits non-zero for its supervisor.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.dialect import advisory_lock
from vlmbatch.worker.pipeline.pipeline import Pipeline
from vlmbatch.worker.transport.broker_scan import queue_depth, touch_unacked
from vlmbatch.worker.transport.publisher import Publisher
from vlmbatch.worker.transport.reconciler import reconcile

log = logging.getLogger(__name__)
_RECONCILE_LOCK_KEY = 0x766C6D63
# Checks in a row that must find the consumer stalled before the worker gives up on it.
STALL_CHECKS = 3


class Maintenance:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: sessionmaker[Session],
        db_engine: Engine,
        publisher: Publisher,
        pipeline: Pipeline,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._db_engine = db_engine
        self._publisher = publisher
        self._pipeline = pipeline
        self._stop = threading.Event()
        self.stalled = threading.Event()
        self._stall_checks = 0
        self._thread = threading.Thread(target=self._loop, name="vlmbatch-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = self._settings.reconcile_seconds
        while not self._stop.wait(interval * random.uniform(0.8, 1.2)):  # jitter spreads the workers
            try:
                self.touch_held_messages()
                self.reconcile_once()
                self.check_consumer()
            except Exception:
                log.exception("maintenance pass failed; trying again next time")
            if self.stalled.is_set():
                return

    def touch_held_messages(self) -> None:
        """Keep the messages this worker reserved but has not acknowledged yet (waiting for room) from
        looking abandoned: the reconciler would not count them, and Redis would redeliver them."""
        touch_unacked(self._settings.resolved_broker_url(), held_delivery_tags())

    def reconcile_once(self) -> None:
        with self._leader() as leader:
            if not leader:
                return
            report = reconcile(
                sessions=self._sessions,
                publisher=self._publisher,
                broker_url=self._settings.resolved_broker_url(),
                jobs_per_message=self._settings.jobs_per_message,
                grace_seconds=self._settings.republish_grace_seconds,
                unacked_stale_seconds=self._settings.unacked_stale_seconds,
            )
        if report.leases_requeued or report.leases_failed or report.republished:
            log.warning(
                "reconciled: %d expired leases requeued, %d failed for good, tokens for %s queued jobs republished",
                report.leases_requeued,
                report.leases_failed,
                report.republished,
            )

    def check_consumer(self) -> None:
        depth = queue_depth(self._settings.resolved_broker_url(), self._settings.queue)
        if depth is not None:
            self._pipeline.metrics.queue_depth.set(depth)
        quiet_for = time.monotonic() - self._pipeline.last_admitted_at
        window = max(120.0, 2 * self._settings.reconcile_seconds)
        if quiet_for < window or not self._pipeline.has_room():
            self._stall_checks = 0
            return
        if not depth:
            self._stall_checks = 0
            return
        self._stall_checks += 1
        log.warning("%d messages wait in %r but none arrived for %.0fs", depth, self._settings.queue, quiet_for)
        if self._stall_checks >= STALL_CHECKS:
            log.error("the broker consumer looks stuck; exiting so that the supervisor restarts this worker")
            self.stalled.set()

    @contextmanager
    def _leader(self) -> Iterator[bool]:
        with advisory_lock(self._db_engine, _RECONCILE_LOCK_KEY, wait=False) as got:
            yield got


def held_delivery_tags() -> list[str]:
    """Delivery tags of the messages this worker process holds (reserved or running, not acknowledged)."""
    from celery.worker import state

    for _ in range(3):
        try:
            requests = list(state.reserved_requests)
        except RuntimeError:  # the set changed while it was copied: take it again
            continue
        return [str(r.message.delivery_tag) for r in requests if r.message is not None and r.message.delivery_tag]
    return []
