"""Writing the output so far of the attempts in flight to the ledger, so that a worker's death, a drain
or an engine death costs at most one interval of tokens (schema/ledger/checkpoints.py).

Every `checkpoint_seconds`, and whenever a trace grew by `checkpoint_tokens`, the attempts whose output
grew since their last checkpoint are written in one fenced transaction: the cost per interval follows the
attempts in flight, not the tokens or the run. A failed write is logged and tried again at the next
interval (a checkpoint only saves work; the results stay exactly-once without it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.checkpoints import Checkpoint, record_checkpoints
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.inflight import Attempts, InFlight

log = logging.getLogger(__name__)

# How often the token threshold is looked at (a check of counters in memory, no database call).
TICK_SECONDS = 1.0


class Checkpointer:
    def __init__(
        self,
        *,
        settings: Settings,
        attempts: Attempts,
        db: DatabasePool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._every_s = settings.checkpoint_seconds
        self._every_tokens = settings.checkpoint_tokens
        self._attempts = attempts
        self._db = db
        self._clock = clock
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self._every_s > 0

    async def run(self) -> None:
        """Checkpoint what is due, forever (a background task of the pipeline)."""
        if not self.enabled:
            await asyncio.Event().wait()  # nothing to do; ends only when cancelled
        while True:
            await asyncio.sleep(min(TICK_SECONDS, self._every_s))
            try:
                await self.checkpoint(everything=False)
            except Exception:
                log.warning("could not write checkpoints; trying again at the next interval", exc_info=True)

    async def checkpoint(self, *, everything: bool) -> int:
        """Write the due checkpoints (`everything`: every attempt whose output grew, as when draining or
        before handing jobs back); return how many the ledger took."""
        now = self._clock()
        due = [
            (entry, entry.progress.snapshot())
            for entry in self._attempts.all()
            if entry.progress is not None and self._due(entry, now, everything)
        ]
        if not due:
            return 0
        checkpoints = [Checkpoint(e.job.job_id, e.job.attempt_id, ids, text) for e, (ids, text) in due]
        written = set(await self._db.transaction(partial(record_checkpoints, checkpoints=checkpoints)))
        for entry, (ids, _) in due:
            entry.checkpointed_at = now
            if entry.job.job_id in written:
                entry.checkpointed_tokens = len(ids)
        self.written += len(written)
        return len(written)

    def _due(self, entry: InFlight, now: float, everything: bool) -> bool:
        progress = entry.progress
        if progress is None or entry.reported:
            return False
        grown = len(progress) - entry.checkpointed_tokens
        if grown <= 0:
            return False
        if everything or now - entry.checkpointed_at >= self._every_s:
            return True
        return self._every_tokens is not None and grown >= self._every_tokens
