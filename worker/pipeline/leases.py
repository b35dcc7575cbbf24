"""Keeping claimed jobs ours: every heartbeat beats the worker's liveness row (schema/ledger/liveness.py), learns
which attempts in flight it no longer holds, and watches the engine for a hang (requests in flight, no
token for `engine_hang_seconds`)."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from sqlalchemy.exc import DBAPIError

from vlmbatch.schema.contracts.errors import EngineDead
from vlmbatch.schema.contracts.model_identity import ModelIdentity
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.liveness import renew_leases
from vlmbatch.worker.engines.base import Engine
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.inflight import Attempts, StopState
from vlmbatch.worker.pipeline.watchdog import HangWatchdog
from vlmbatch.worker.telemetry.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        *,
        settings: Settings,
        identity: ModelIdentity,
        worker_id: str,
        engine: Engine,
        db: DatabasePool,
        metrics: WorkerMetrics,
        attempts: Attempts,
        state: StopState,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._worker_id = worker_id
        self._engine = engine
        self._db = db
        self._metrics = metrics
        self._attempts = attempts
        self._state = state

    async def run(self) -> None:
        """Beat every `heartbeat_seconds` until cancelled, or until the engine is declared hung."""
        watchdog = HangWatchdog(self._settings.engine_hang_seconds)
        while True:
            await asyncio.sleep(self._settings.heartbeat_seconds)
            stats = self._engine.stats()
            if stats.dead is not None:
                self._state.declare_fatal(EngineDead(f"engine died: {stats.dead}"))
                return
            hung_for = watchdog.observe(self._engine.progress(), busy=stats.running + stats.waiting > 0)
            if hung_for is not None:
                self._state.declare_fatal(
                    EngineDead(f"engine hung: no token for {hung_for:.0f}s with {stats.running} requests running")
                )
                return
            await self.renew()

    async def renew(self) -> None:
        # Every attempt not yet committed, written-but-pending ones included: the job is ours until then.
        # An idle worker beats too: jobs the ledger still gives its name (a predecessor's) are taken back.
        attempt_ids = self._attempts.ids()
        try:
            lost = await self._db.transaction(
                partial(
                    renew_leases,
                    worker=self._worker_id,
                    attempt_ids=attempt_ids,
                    lease_seconds=self._settings.lease_seconds,
                    model=self._identity.model,
                    fingerprint=self._identity.fingerprint,
                )
            )
        except DBAPIError:
            log.warning("lease renewal failed; retrying at the next heartbeat", exc_info=True)
            return
        self._metrics.lease_renewals.inc(len(attempt_ids) - len(lost))
        self._metrics.leases_lost.inc(len(lost))
        for attempt_id in lost:  # cancelled, or taken back: free the engine's slot now
            entry = self._attempts.get(attempt_id)
            if entry is not None:
                await self._engine.abort(entry.request_id)
