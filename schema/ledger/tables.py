"""SQLAlchemy 2.0 tables: the ledger (runs, jobs, attempts, results). The database is the source of truth.

- A job is unique per (run, input_key); input_key hashes its image URIs and question.
- `jobs.current_attempt_id` is the fence: only that attempt may write the job's outcome, and only while
  the job is `running`. A lease says who runs it (`lease_owner`) and until when: until its claim's own
  lease (`lease_expires_at`) or its worker's heartbeat row (`workers.expires_at`), whichever is later.
- Every attempt is a row; results are one row per sample of the attempt whose write was accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vlmbatch.schema.contracts.states import AttemptOutcome, JobState

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Naive UTC, the one time representation stored (SQLite keeps no time zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


# Queued jobs that were claimed before (a retry, a resample, a lease taken back, a resubmit): the claim
# finds them through ix_jobs_run_requeued, wherever their ids are (schema/ledger/heads.py).
REQUEUED = "state = 'queued' AND attempt_count > 0"


def _in(values: list[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime()}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model: Mapped[str] = mapped_column(String(500))
    # A local model folder's fingerprint (schema/contracts/model_identity.py); None for a hub id.
    model_fingerprint: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(200))
    # schema.contracts.models.RunSettings as JSON.
    settings: Mapped[dict[str, Any]]
    source: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[datetime | None]
    # When a submit last committed or published jobs of this run: the reconciler's grace for a lost
    # message counts from here too, since a long submit publishes its jobs well after inserting them.
    published_at: Mapped[datetime | None]
    # Its queued jobs are not claimable yet: a Batch API batch still `validating` (it may be cancelled
    # before it is accepted, and then none of its jobs may run).
    held: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Scheduling among the runs of a queue (schema/ledger/shares.py): a worker takes from the highest
    # priority first and shares a priority's jobs among its runs by weight.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    # Added to the run's served jobs in its share: set when it (re)joins its queue's active runs, so that
    # it starts level with them instead of owed everything they were served before it came.
    share_offset: Mapped[float | None] = mapped_column(Float)
    # Paused by `vlmbatch pause` or by its circuit breaker (schema/ledger/breaker.py): nothing new of it is
    # claimed; what runs finishes. `pause_reason` says why (the breaker's names its first error).
    paused_at: Mapped[datetime | None]
    pause_reason: Mapped[str | None] = mapped_column(Text)
    # Source rows its submits recorded as rejects (SubmitReject rows), kept here so status reads no rows.
    rejected: Mapped[int] = mapped_column(default=0, server_default=text("0"))


class SubmitReject(Base):
    """A source row that could not become a job (schema.ledger.rejects): where it was and why."""

    __tablename__ = "submit_rejects"
    __table_args__ = (UniqueConstraint("run_id", "position", name="uq_submit_rejects_run_position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    position: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    custom_id: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("run_id", "input_key", name="uq_jobs_run_input"),
        # A run's jobs in one state, in id order: the embedded claim feed (queued, oldest first), the
        # reconciler's pages of queued jobs and the browser's `?status=` keyset pages.
        Index("ix_jobs_run_state_id", "run_id", "state", "id"),
        # A run's jobs in id order, whatever their state: the browser's unfiltered keyset pages.
        Index("ix_jobs_run_id", "run_id", "id"),
        # Partial indexes: a queued job (most inserts) touches none of them, so bulk submits stay fast.
        # Failed jobs of one error type in id order (the browser's `?error=` pages and error examples).
        Index(
            "ix_jobs_run_failed_error",
            "run_id",
            "error_type",
            "id",
            postgresql_where=text("state = 'failed'"),
            sqlite_where=text("state = 'failed'"),
        ),
        # Running jobs by attempt id: the reconciler reads all running jobs (as many as the fleet's slots,
        # not the run's jobs) for expired leases.
        Index(
            "ix_jobs_running_attempt",
            "current_attempt_id",
            postgresql_where=text("state = 'running'"),
            sqlite_where=text("state = 'running'"),
        ),
        # A worker's running jobs: its heartbeat reads them (schema/ledger/liveness.py) and writes none.
        Index(
            "ix_jobs_running_owner",
            "lease_owner",
            "current_attempt_id",
            postgresql_where=text("state = 'running'"),
            sqlite_where=text("state = 'running'"),
        ),
        # A run's requeued jobs in id order: a claim takes them wherever its cursor is (schema/ledger/heads.py).
        # Partial: a job enters it only when it goes back to the queue, so it stays small.
        Index("ix_jobs_run_requeued", "run_id", "id", postgresql_where=text(REQUEUED), sqlite_where=text(REQUEUED)),
        # Throughput over the last minutes (status, browser) without reading the run's whole history.
        Index(
            "ix_jobs_run_finished",
            "run_id",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
            sqlite_where=text("finished_at IS NOT NULL"),
        ),
        CheckConstraint(f"state IN {_in([s.value for s in JobState])}", name="ck_jobs_state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    input_key: Mapped[str] = mapped_column(String(32))
    images: Mapped[list[str]]
    question: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    # The 0-based number of the source row the job came from, in the order submit read them (the jobs of
    # one row's several questions share it); None for jobs submitted before it was recorded.
    source_row: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # attempt_count when the job was last (re)submitted: the run's attempt cap counts from here.
    attempt_base: Mapped[int] = mapped_column(Integer, default=0)
    # Consecutive transient failures (reset by any other outcome); capped by the run's retry limit.
    transient_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The fence: the attempt allowed to write this job's outcome (and, once terminal, whose result stands).
    current_attempt_id: Mapped[int | None] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    # The claim's own lease: it covers the job until its worker's next heartbeat; never renewed.
    lease_expires_at: Mapped[datetime | None]
    # Not before this time (backoff of transient retries).
    not_before: Mapped[datetime | None]
    error_type: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Graded-correct samples so far (runs with a grader; `accept` stops sampling once it is reached).
    accepted_samples: Mapped[int] = mapped_column(Integer, default=0)
    # Overrides for the next attempt (e.g. a larger max_tokens from `resubmit`), copied onto it.
    overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The job's own request settings (schema.contracts.models.JobParams), for every attempt; None: the run's.
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class RunCount(Base):
    """Jobs of a run per (state, error type), kept by the statements that change job states, in their
    transaction (schema.ledger.counters): status, the browser and the drain check read these few rows instead of
    counting millions of jobs. `error_type` is '' except for failed jobs. Each count is split over a few
    `shard` rows so that concurrent workers rarely wait on one another's counter row."""

    __tablename__ = "run_counts"
    __table_args__ = (
        # The runs with queued jobs (a claim token's candidates, the reconciler's demand) without reading
        # every run's other counters. `jobs` is in no index: a counter update stays a HOT update.
        Index("ix_run_counts_state", "state", "run_id"),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    error_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger)


class RunBreaker(Base):
    """A run's circuit breaker (schema/ledger/breaker.py): its recent attempts' failures that are not about
    one row, as a few counters updated with each batch of outcomes (no scan of attempts)."""

    __tablename__ = "run_breakers"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    # Failures in a row that are not about one row (reset by any other outcome).
    streak: Mapped[int] = mapped_column(Integer, default=0)
    # A sliding window of attempts, as two tumbling halves: the current one and the one before it.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    previous_attempts: Mapped[int] = mapped_column(Integer, default=0)
    previous_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The first failure since the breaker was last reset: what the run's pause reason quotes.
    first_error_type: Mapped[str | None] = mapped_column(String(32))
    first_error: Mapped[str | None] = mapped_column(Text)
    tripped_at: Mapped[datetime | None]
    trips: Mapped[int] = mapped_column(Integer, default=0)


class Worker(Base):
    """A worker process's heartbeat (schema/ledger/liveness.py): while `expires_at` is ahead of the database's
    clock, the jobs it runs (`jobs.lease_owner`) are alive. One row written per worker per beat, instead
    of one per running job."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[datetime]
    beat_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    # The model it serves, and its fingerprint (`status` warns when no live worker serves a run's).
    model: Mapped[str | None] = mapped_column(String(500))
    model_fingerprint: Mapped[str | None] = mapped_column(String(64))


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_attempts_job_number"),
        CheckConstraint(f"outcome IN {_in([o.value for o in AttemptOutcome])}", name="ck_attempts_outcome"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16), default=AttemptOutcome.RUNNING.value)
    error_type: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    answer_tokens: Mapped[int | None] = mapped_column(Integer)
    # Seconds: queued → claimed, object fetch, image decode, engine submit → last token.
    queue_wait_s: Mapped[float | None] = mapped_column(Float)
    fetch_s: Mapped[float | None] = mapped_column(Float)
    decode_s: Mapped[float | None] = mapped_column(Float)
    generation_s: Mapped[float | None] = mapped_column(Float)
    first_token_s: Mapped[float | None] = mapped_column(Float)
    # This attempt's share of engine time, in GPU-seconds: while N requests share the engine, each is
    # charged 1/N of its time, times the GPUs the engine holds.
    gpu_seconds: Mapped[float | None] = mapped_column(Float)
    # SHA-256 of each image's bytes as the worker read them, in the job's image order (None: not read,
    # or before this column): an export checks that the bytes it writes are the ones the model saw.
    image_hashes: Mapped[list[str] | None] = mapped_column(JSON)
    # The attempt continued a checkpoint (schema.ledger.checkpoints): the attempt that wrote it, and how
    # many of the trace's tokens came from it (`completion_tokens` counts only what this attempt generated).
    resumed_from_attempt_id: Mapped[int | None] = mapped_column(BigInteger)
    reused_tokens: Mapped[int | None] = mapped_column(Integer)


class Checkpoint(Base):
    """The partial output of a job's running attempt (one row per job; n = 1 only), rewritten every
    checkpoint interval by the attempt that holds the job, so that a new attempt continues it instead of
    starting again. Kept after a `length`-truncated attempt (its whole output: `resubmit --status truncated`
    continues it); dropped in the result's transaction when the job succeeds (schema.ledger.checkpoints)."""

    __tablename__ = "checkpoints"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # The attempt that wrote it: a resumed attempt names it as `resumed_from_attempt_id`.
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id", ondelete="CASCADE"), index=True)
    tokens: Mapped[int] = mapped_column(Integer)
    # The output token ids, packed little-endian int32 (4 bytes a token, not a JSON list's ~7).
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)
    # The output as text, for people (a resumed request is built from the ids, never from this).
    text: Mapped[str] = mapped_column(Text)
    # None while the attempt ran; `length` once it ended at its max_tokens.
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (
        # A second result for the same attempt and sample is refused by the database itself.
        # (Not unique per job: a resubmitted job keeps its earlier attempts' results as history.)
        UniqueConstraint("attempt_id", "sample_index", name="uq_results_attempt_sample"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id", ondelete="CASCADE"))
    sample_index: Mapped[int] = mapped_column(Integer)
    answer: Mapped[str] = mapped_column(Text)
    reasoning: Mapped[str | None] = mapped_column(Text)
    raw_text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    # The trace ended (a `</think>` was produced) before the length limit.
    trace_closed: Mapped[bool] = mapped_column(Boolean)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    answer_tokens: Mapped[int | None] = mapped_column(Integer)
    extracted_answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    # Whether the answer obeys the run's constraint (one of --choices, or JSON matching --json-schema);
    # None when the run has no constraint.
    valid: Mapped[bool | None] = mapped_column(Boolean)
    # What graded it (None when the run has no grader): the grader's name and `grading.grader_version`.
    grader: Mapped[str | None] = mapped_column(String(16))
    grader_version: Mapped[str | None] = mapped_column(String(100))
    # The run's thinking budget ran out and vLLM closed the trace (the sample still answered); None when
    # no budget was set.
    thinking_capped: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiFile(Base):
    """A file of the OpenAI-compatible Batch API (producer/api): an uploaded batch input, or a batch's
    output or error file. Its bytes live at `path`; the row says what it is."""

    __tablename__ = "api_files"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    filename: Mapped[str] = mapped_column(String(500))
    # `batch` (an upload), `batch_output` (an output or error file of a batch).
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiBatch(Base):
    """A batch of the Batch API: a run (once its input was accepted) plus what OpenAI's batch object says
    that the run does not (endpoint, window, metadata, refusal errors, output files)."""

    __tablename__ = "api_batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    input_file_id: Mapped[int] = mapped_column(BigInteger)
    endpoint: Mapped[str] = mapped_column(String(100))
    completion_window: Mapped[str] = mapped_column(String(16))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    # OpenAI's `errors.data` of a refused input file (the batch is `failed`, nothing was queued).
    errors: Mapped[dict[str, Any] | None]
    output_file_id: Mapped[int | None] = mapped_column(BigInteger)
    error_file_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    failed_at: Mapped[datetime | None]
    finalizing_at: Mapped[datetime | None]
    # When the output files were written (the batch is `completed`, or `cancelled` after a cancel).
    finished_at: Mapped[datetime | None]
    # The deadline: created_at + completion_window. Past it with work unfinished, the batch is expired.
    expires_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    # When a cancel was asked: possibly while `validating`, before the batch has a run.
    cancelling_at: Mapped[datetime | None]
