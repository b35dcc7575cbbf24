"""The two things every part of the pipeline asks about: which attempts are in flight, and whether the
worker still takes work.

- `Attempts`: the registry of attempts claimed and not yet committed or handed back, by attempt id. An
  attempt enters when its job is claimed (admission) and leaves when its outcome is committed or it is
  handed back (writing). The heartbeat renews what it holds; a feed asks whether a run still has jobs here.
- `StopState`: running, stopping (asked to stop), or dead (a fatal error: the engine died or hung, a
  background task ended). The first fatal error wins; the pipeline waits on it to hand the jobs back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from vlmbatch.schema.contracts.errors import EngineDead
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.worker.engines.base import TraceProgress


@dataclass
class InFlight:
    """One attempt in flight: its claimed job, the engine request's id, the task that runs it, and whether
    its outcome went to the writer."""

    job: ClaimedJob
    request_id: str
    task: asyncio.Task[None] | None = None
    reported: bool = False
    # The engine's output so far (checkpoints), and how many of its tokens the ledger holds, since when.
    progress: TraceProgress | None = None
    checkpointed_tokens: int = 0
    checkpointed_at: float = 0.0


class Attempts:
    """The attempts in flight, by attempt id (used on the pipeline's loop only)."""

    def __init__(self) -> None:
        self._by_attempt: dict[int, InFlight] = {}

    def add(self, job: ClaimedJob, *, progress: TraceProgress | None = None, now: float = 0.0) -> InFlight:
        entry = InFlight(job=job, request_id=f"job-{job.job_id}-attempt-{job.attempt_id}", progress=progress)
        # What the ledger holds already: a continued checkpoint is not written again until it grew.
        entry.checkpointed_tokens = job.checkpoint.tokens if job.checkpoint is not None else 0
        entry.checkpointed_at = now
        self._by_attempt[job.attempt_id] = entry
        return entry

    def get(self, attempt_id: int) -> InFlight | None:
        return self._by_attempt.get(attempt_id)

    def pop(self, attempt_id: int) -> InFlight | None:
        return self._by_attempt.pop(attempt_id, None)

    def ids(self) -> list[int]:
        return list(self._by_attempt)

    def __len__(self) -> int:
        return len(self._by_attempt)

    def all(self) -> list[InFlight]:
        return list(self._by_attempt.values())

    def holds_jobs_of(self, run_id: int) -> bool:
        return any(entry.job.run_id == run_id for entry in self._by_attempt.values())

    def unfinished(self, *, include_reported: bool) -> list[InFlight]:
        """Attempts whose outcome never reached the writer; with `include_reported`, also those the writer
        holds uncommitted."""
        return [e for e in self._by_attempt.values() if include_reported or not e.reported]


class StopState:
    """Whether the worker takes work, and why not."""

    def __init__(self) -> None:
        self.closing = False
        self.fatal: BaseException | None = None
        self._fatal_declared = asyncio.Event()

    @property
    def reason(self) -> str | None:
        """Why the worker takes no more work (None while it does)."""
        if self.fatal is not None:
            return f"engine died: {self.fatal}" if isinstance(self.fatal, EngineDead) else str(self.fatal)
        return "worker is stopping" if self.closing else None

    @property
    def engine_died(self) -> bool:
        return isinstance(self.fatal, EngineDead)

    def stop(self) -> None:
        self.closing = True

    def declare_fatal(self, error: BaseException) -> None:
        """The worker cannot go on: stop taking work; the first error is the one reported."""
        if self.fatal is not None:
            return
        self.fatal = error
        self.closing = True
        self._fatal_declared.set()

    async def wait_fatal(self) -> BaseException:
        await self._fatal_declared.wait()
        fatal = self.fatal
        if fatal is None:  # set together with the event
            raise RuntimeError("a fatal error was declared without an error")
        return fatal
