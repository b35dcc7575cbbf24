"""The chaos suite's "tokens lost" figure (issue 26): what kill -9 costs a fleet that checkpoints.

At each kill the harness reads, right after the kill (the dead worker writes nothing more, and its
leases have not lapsed yet), what the ledger holds of each job the worker had in flight: the job's
checkpoint, which attempt wrote it and when (the database's clock), and the attempt's start. The fake
engine generates at a known pace (its progress never outruns `tokens_per_second`), so the tokens an
attempt had past its durable checkpoint at the kill are about pace x (kill - that checkpoint's write, or
the attempt's start when it wrote none): the tokens lost, which must stay within what the pace makes in
one checkpoint interval plus the tick at which the checkpointer notices it is due. An estimate: the
write's stamp comes a little after the snapshot it saves, and the fake spreads its latency over the trace.

After the run the ledger says the rest exactly: every good job's final trace (all good jobs ask the same
question of the same image size, so the fake engine's uninterrupted output is the same for all: the
trace of any job that finished in one attempt), the tokens that attempts reused from checkpoints, and
whether each checkpoint seen at a kill is, token for token, the start of that trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.checkpoints import unpack_tokens
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.schema.ledger.tables import Checkpoint as CheckpointRow
from vlmbatch.worker.engines.fake import token_ids_of


@dataclass(frozen=True)
class InFlightAtKill:
    job_id: int
    worker: str
    # Tokens the ledger held for the job at the kill, and since when they were durable (the killed
    # attempt's last checkpoint write, or its start when it wrote none).
    checkpoint_ids: tuple[int, ...]
    durable_since: datetime
    killed_at: datetime
    # Whether the killed attempt had written a checkpoint (else `durable_since` is its start).
    own: bool = True


@dataclass
class TokenFigures:
    pace: float  # tokens per second of the fake engine
    cadence_s: float  # the longest a trace goes unsaved: `checkpoint_seconds` plus the checkpointer's tick
    interval_tokens: float  # the bound per job: that cadence at the engine's pace
    max_tokens: int
    in_flight: list[InFlightAtKill] = field(default_factory=list)
    # After the run:
    lost_per_job: list[float] = field(default_factory=list)
    resumed_attempts: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0  # by attempts that reported (a killed attempt reports nothing)
    final_tokens: int = 0
    traces_checked: int = 0
    mismatched_traces: list[str] = field(default_factory=list)
    mismatched_checkpoints: list[str] = field(default_factory=list)
    _good: set[int] = field(default_factory=set)

    @property
    def lost(self) -> float:
        return sum(self.lost_per_job)

    @property
    def over_bound(self) -> int:
        return sum(1 for lost in self.lost_per_job if lost > self.interval_tokens)

    @property
    def passed(self) -> bool:
        return not self.over_bound and not self.mismatched_traces and not self.mismatched_checkpoints

    def render(self) -> str:
        worst = max(self.lost_per_job, default=0.0)
        early = sum(1 for s in self.in_flight if not s.own)
        return (
            f"tokens lost to {len(self.lost_per_job)} in-flight jobs of killed workers: {self.lost:.0f} "
            f"({early} before their first checkpoint; worst job {worst:.0f}, "
            f"bound {self.interval_tokens:.0f} = {self.pace:.0f} tok/s x {self.cadence_s:.2f} s, one checkpoint "
            f"interval and the tick that notices it; {self.over_bound} over it); "
            f"{self.resumed_attempts} attempts continued a "
            f"checkpoint, reusing {self.reused_tokens} tokens; attempts generated {self.generated_tokens} "
            f"tokens for {self.final_tokens} in final traces; {self.traces_checked} traces equal the "
            f"uninterrupted one, {len(self.mismatched_traces)} do not; checkpoints not a prefix of it "
            f"{len(self.mismatched_checkpoints)}"
        )

    def per_job(self) -> str:
        """Each killed trace: its job, whether it had checkpointed, the tokens kept and the tokens lost."""
        return ", ".join(
            f"{s.job_id}{'' if s.own else '*'}:{len(s.checkpoint_ids)}+{lost:.0f}"
            for s, lost in zip([s for s in self.in_flight if s.job_id in self._good], self.lost_per_job, strict=True)
        )


def at_kill(session: Session, *, worker: str, job_ids: set[int], killed_at: datetime) -> list[InFlightAtKill]:
    """What the ledger holds of the jobs `worker` ran, read right after it was killed at `killed_at` (the
    ledger's clock, read just before the signal)."""
    if not job_ids:
        return []
    attempts = session.execute(
        select(Attempt.job_id, Attempt.id, Attempt.started_at).where(
            Attempt.job_id.in_(job_ids), Attempt.worker == worker
        )
    ).all()
    started = {job_id: (attempt_id, at) for job_id, attempt_id, at in attempts}
    rows = session.execute(
        select(CheckpointRow.job_id, CheckpointRow.attempt_id, CheckpointRow.token_ids, CheckpointRow.updated_at).where(
            CheckpointRow.job_id.in_(job_ids)
        )
    ).all()
    checkpoints = {job_id: (attempt_id, data, at) for job_id, attempt_id, data, at in rows}
    found = []
    for job_id, (attempt_id, started_at) in started.items():
        own, data, written = checkpoints.get(job_id, (None, b"", None))
        own_write = own == attempt_id and written is not None
        since = written if own_write and written is not None else started_at
        found.append(InFlightAtKill(job_id, worker, unpack_tokens(data), since, killed_at, own=own_write))
    return found


def figures(session: Session, tokens: TokenFigures, *, good_jobs: set[int]) -> TokenFigures:
    """Fill `tokens`' after-the-run figures from the ledger."""
    finals = dict(
        session.execute(
            select(Result.job_id, Result.raw_text)
            .join(Job, Job.current_attempt_id == Result.attempt_id)
            .where(Result.job_id.in_(good_jobs))
        ).all()
    )
    first_try = session.scalars(
        select(Job.id)
        .join(Attempt, Attempt.id == Job.current_attempt_id)
        .where(Job.id.in_(good_jobs), Attempt.number == 1, Attempt.reused_tokens.is_(None))
    ).all()
    reference = next((finals[j] for j in first_try if j in finals), None)
    resumed, reused, generated = session.execute(
        select(
            func.count(Attempt.resumed_from_attempt_id),
            func.coalesce(func.sum(Attempt.reused_tokens), 0),
            func.coalesce(func.sum(Attempt.completion_tokens), 0),
        ).where(Attempt.job_id.in_(good_jobs))
    ).one()
    tokens.resumed_attempts, tokens.reused_tokens, tokens.generated_tokens = (
        int(resumed or 0),
        int(reused or 0),
        int(generated or 0),
    )
    final = session.scalar(select(func.sum(Result.completion_tokens)).where(Result.job_id.in_(good_jobs)))
    tokens.final_tokens = int(final or 0)
    tokens.traces_checked = sum(1 for text in finals.values() if text == reference)
    tokens.mismatched_traces = [f"job {j}" for j, text in finals.items() if text != reference]
    whole = token_ids_of(reference or "")
    tokens._good = good_jobs
    for seen in tokens.in_flight:
        if seen.job_id not in good_jobs:
            continue
        ids = seen.checkpoint_ids
        if whole[: len(ids)] != ids:
            tokens.mismatched_checkpoints.append(f"job {seen.job_id}: {len(ids)} tokens")
        age = max(0.0, (seen.killed_at - seen.durable_since).total_seconds())
        tokens.lost_per_job.append(min(tokens.max_tokens - len(ids), tokens.pace * age))
    return tokens
