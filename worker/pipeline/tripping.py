"""The worker's side of a run pausing itself (schema/ledger/breaker.py): the breaker's policy from the
settings (outcomes are written with it, writing.py), engines that do not start recorded, and the trips said
in the log and the metrics."""

from __future__ import annotations

import logging
from functools import partial

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.breaker import BreakerPolicy, Trip, engine_failed_to_start
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.telemetry.log_format import log_context
from vlmbatch.worker.telemetry.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        streak=settings.breaker_streak,
        window=settings.breaker_window,
        ratio=settings.breaker_ratio,
        min_failures=settings.breaker_min_failures,
        enabled=settings.breaker_enabled,
    )


class BreakerWatch:
    def __init__(self, *, settings: Settings, db: DatabasePool, metrics: WorkerMetrics) -> None:
        self._settings = settings
        self._policy = breaker_policy(settings)
        self._db = db
        self._metrics = metrics

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    async def engine_failed(self, exc: Exception, *, model: str) -> None:
        """An engine that does not start (a model that does not load): every run it would serve counts it
        as a failure of its breaker, so that a fleet crash-looping on it pauses them with the reason
        instead of leaving them queued with none."""
        record = partial(
            engine_failed_to_start,
            queue=self._settings.queue,
            model=model,
            message=f"{type(exc).__name__}: {exc}"[:2000],
            policy=self._policy,
        )
        try:
            trips = await self._db.transaction(record)
        except Exception:  # the ledger is what failed: nothing to record it in
            log.warning("could not record the engine's failed start", exc_info=True)
            return
        self.say(trips)

    def say(self, trips: list[Trip]) -> None:
        """Log each trip at ERROR and count it in `vlmbatch_breaker_trips_total{run}`."""
        for trip in trips:
            self._metrics.breaker_trips.labels(run=str(trip.run_id)).inc()
            with log_context(run_id=trip.run_id):
                log.error("run %s paused: %s; `vlmbatch resume %s` once fixed", trip.run_id, trip.reason, trip.run_id)
