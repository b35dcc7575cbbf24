"""Checkpoints: the partial output of a job's running attempt, kept so that a new attempt continues the
trace instead of generating it again from token 0 (issue 26; docs/ARCHITECTURE.md, "Outcome contract").

- One row per job (`checkpoints`), written by the attempt that holds the job and fenced like a result:
  a write whose attempt no longer holds its running job changes nothing, so a stale attempt (its lease
  lapsed, the job claimed again) can never overwrite a newer attempt's checkpoint.
- A worker writes the checkpoints of all its attempts in flight in one transaction per interval
  (`record_checkpoints`): the cost grows with the attempts in flight, never with tokens or the run.
- The outcome's transaction settles them (`settle_checkpoints`): a job that succeeded (or was
  cancelled, or samples again) loses its checkpoint; a job truncated at its `max_tokens` keeps its whole
  output as its checkpoint, which `resubmit --status truncated --max-tokens N` continues.
- Token ids are stored packed (little-endian int32), never re-tokenised from text.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.finish import LENGTH
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.dialect import lock_for_update
from vlmbatch.schema.ledger.tables import Attempt, Job
from vlmbatch.schema.ledger.tables import Checkpoint as CheckpointRow

# The finish kind a checkpoint keeps after its attempt ended: only a `length` stop can be continued.
CONTINUABLE_FINISH = LENGTH


def pack_tokens(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian int32 bytes (4 bytes a token)."""
    packed = array("i", token_ids)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack_tokens(data: bytes) -> tuple[int, ...]:
    """The token ids `pack_tokens` packed."""
    packed = array("i")
    packed.frombytes(data)
    if sys.byteorder != "little":
        packed.byteswap()
    return tuple(packed)


@dataclass(frozen=True)
class Checkpoint:
    """A job's output so far, as the attempt `attempt_id` generated it."""

    job_id: int
    attempt_id: int
    token_ids: tuple[int, ...]
    text: str
    # None: the attempt was still running; `length`: it ended at its max_tokens.
    finish_reason: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


def record_checkpoints(session: Session, checkpoints: Sequence[Checkpoint]) -> list[int]:
    """Write each checkpoint whose attempt still holds its running job (replacing the job's previous
    one); return the job ids written. One SELECT, one DELETE and one INSERT for the whole batch. Runs in
    the caller's transaction."""
    if not checkpoints:
        return []
    holding = _holding(session, [(c.job_id, c.attempt_id) for c in checkpoints])
    # The last one per job, should a batch carry a job twice.
    written = {c.job_id: c for c in checkpoints if (c.job_id, c.attempt_id) in holding}
    if not written:
        return []
    _replace(session, list(written.values()))
    return sorted(written)


def settle_checkpoints(session: Session, *, drop: Iterable[int] = (), keep_final: Sequence[Checkpoint] = ()) -> None:
    """In an outcome's transaction, for jobs whose outcome was just written (the fence already checked):
    drop the checkpoints of `drop`, and store each of `keep_final` (a truncated attempt's whole output)
    as its job's checkpoint."""
    jobs = sorted(set(drop) | {c.job_id for c in keep_final})
    if not jobs:
        return
    if keep_final:
        _replace(session, list(keep_final), also_drop=jobs)
    else:
        session.execute(delete(CheckpointRow).where(CheckpointRow.job_id.in_(jobs)))


def drop_checkpoints(session: Session, *, job_ids: Sequence[int]) -> None:
    """Forget the checkpoints of `job_ids` (a resubmit that restarts them from token 0)."""
    if job_ids:
        session.execute(delete(CheckpointRow).where(CheckpointRow.job_id.in_(list(job_ids))))


def checkpoints_of(session: Session, *, job_ids: Sequence[int]) -> dict[int, Checkpoint]:
    """The checkpoints of those of `job_ids` that have one (one SELECT on the primary key)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(
            CheckpointRow.job_id,
            CheckpointRow.attempt_id,
            CheckpointRow.token_ids,
            CheckpointRow.text,
            CheckpointRow.finish_reason,
        ).where(CheckpointRow.job_id.in_(list(job_ids)))
    )
    return {
        job_id: Checkpoint(job_id, attempt_id, unpack_tokens(data), text, finish)
        for job_id, attempt_id, data, text, finish in rows
    }


def final_checkpoint_tokens(session: Session, *, job_ids: Sequence[int]) -> dict[int, int]:
    """Tokens kept for each of `job_ids` whose last attempt ended at its max_tokens (what a resubmit
    continues)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(CheckpointRow.job_id, CheckpointRow.tokens).where(
            CheckpointRow.job_id.in_(list(job_ids)), CheckpointRow.finish_reason == CONTINUABLE_FINISH
        )
    )
    return {job_id: tokens for job_id, tokens in rows}


@dataclass(frozen=True)
class TokenReuse:
    """What checkpoints saved a run: attempts that continued one, the tokens they did not generate again,
    and the jobs that hold tokens now (running ones' checkpoints, `length`-truncated ones' outputs)."""

    resumed_attempts: int
    reused_tokens: int
    jobs_with_tokens: int


def token_reuse(session: Session, *, run_id: int) -> TokenReuse:
    """The run's TokenReuse: one aggregate over its attempts (as `stats`' cost totals), one over its
    checkpoints."""
    resumed, reused = session.execute(
        select(func.count(Attempt.resumed_from_attempt_id), func.sum(Attempt.reused_tokens))
        .select_from(Attempt)
        .join(Job, Job.id == Attempt.job_id)
        .where(Job.run_id == run_id)
    ).one()
    holding = session.scalar(
        select(func.count())
        .select_from(CheckpointRow)
        .join(Job, Job.id == CheckpointRow.job_id)
        .where(Job.run_id == run_id)
    )
    return TokenReuse(resumed_attempts=int(resumed), reused_tokens=int(reused or 0), jobs_with_tokens=int(holding or 0))


def _holding(session: Session, pairs: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
    """Those (job, attempt) pairs whose attempt still holds its running job, the job rows locked in the
    ledger's one order (ascending id) until the transaction ends."""
    stmt = (
        select(Job.id, Job.current_attempt_id)
        .where(Job.id.in_({job for job, _ in pairs}), Job.state == JobState.RUNNING.value)
        .order_by(Job.id)
    )
    rows = session.execute(lock_for_update(stmt, session))
    held = {(job_id, attempt_id) for job_id, attempt_id in rows if attempt_id is not None}
    return held & set(pairs)


def _replace(session: Session, checkpoints: list[Checkpoint], *, also_drop: Sequence[int] = ()) -> None:
    now = database_now(session)
    jobs = sorted({c.job_id for c in checkpoints} | set(also_drop))
    session.execute(delete(CheckpointRow).where(CheckpointRow.job_id.in_(jobs)))
    session.execute(
        insert(cast(Table, CheckpointRow.__table__)),
        [
            {
                "job_id": c.job_id,
                "attempt_id": c.attempt_id,
                "tokens": c.tokens,
                "token_ids": pack_tokens(c.token_ids),
                "text": c.text.replace("\x00", "\ufffd"),  # PostgreSQL's text holds no NUL
                "finish_reason": c.finish_reason,
                "updated_at": now,
            }
            for c in checkpoints
        ],
    )
