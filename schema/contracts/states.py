"""Job states and attempt outcomes (docs/ARCHITECTURE.md, "Job lifecycle")."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TRUNCATED = "truncated"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


TERMINAL_STATES: frozenset[JobState] = frozenset(s for s in JobState if s.terminal)


class AttemptOutcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TRUNCATED = "truncated"
    CANCELLED = "cancelled"
    # The attempt stopped without an outcome of its own: its lease expired, or its worker handed it back.
    ABANDONED = "abandoned"
