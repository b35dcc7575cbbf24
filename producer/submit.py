"""Submitting a source: validate it, create or reuse the run, insert its jobs in bulk (idempotently) and
publish claim tokens for them (one per `jobs_per_message` jobs). Jobs are committed before their tokens
are published, so a token never finds them missing; a crash in between leaves queued jobs without tokens,
for which the reconciler publishes some.

On PostgreSQL the whole submit is one transaction: rows stream into a temporary table by COPY while they
are validated, and a malformed row rolls everything back, run included. Elsewhere (SQLite) the source
is validated in a first pass, then inserted in chunks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from itertools import islice

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.producer.sources.base import RowErrors, Source, SpecCheck, checked_rows
from vlmbatch.schema.contracts.errors import BrokerUnavailable
from vlmbatch.schema.contracts.models import JobSpec, RunSettings, SubmitReport
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.grading import normalize_reference, parse_options
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.enqueue import (
    PostgresStaging,
    StagedRow,
    insert_jobs,
    mark_published,
    refresh_statistics,
    staged_row,
)
from vlmbatch.schema.ledger.runs import Schedule, create_or_reuse_run, get_or_create_run, reschedule
from vlmbatch.worker.transport.publisher import Publisher

# Jobs inserted per transaction: large enough to amortise round trips, small enough to stream.
SUBMIT_CHUNK = 5000
# Rows per COPY into PostgreSQL's staging table (and per INSERT ... SELECT out of it).
STAGE_CHUNK = 50_000
# Jobs whose claim tokens are published between two marks of the run as published.
PUBLISH_PART = 100_000


def default_run_name(source_uri: str, question: str | None, settings: RunSettings) -> str:
    """A stable name, so that submitting the same source with the same settings twice reuses the run."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", source_uri.rstrip("/").rsplit("/", 1)[-1]).strip("-") or "run"
    digest = hashlib.sha256(f"{source_uri}\n{question}\n{settings.fingerprint()}".encode()).hexdigest()[:8]
    return f"{stem[:60]}-{digest}"


def submit(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    source: Source,
    settings: RunSettings,
    queue: str,
    run_name: str | None = None,
    question: str | None = None,
    held: bool = False,
    schedule: Schedule | None = None,
) -> SubmitReport:
    """Submit every job of `source` to the run (`held`: a new run's jobs are not claimable until it is
    released, schema.ledger.runs.release_run; `schedule`: its priority and weight). Raises SourceError
    (nothing written) for a bad source, RunConflict when the named run exists with other settings."""
    name = run_name or default_run_name(source.uri, question, settings)
    if sessions.kw["bind"].dialect.name == "postgresql":
        return _submit_in_one_transaction(
            sessions=sessions,
            publisher=publisher,
            source=source,
            settings=settings,
            queue=queue,
            name=name,
            held=held,
            schedule=schedule,
        )
    source.validate(_reference_check(settings))
    run = create_or_reuse_run(
        sessions, name=name, settings=settings, queue=queue, source=source.uri, held=held, schedule=schedule
    )
    submitted = skipped = 0
    broker_error: Exception | None = None
    for chunk in _chunks(source.specs(), SUBMIT_CHUNK):
        with sessions() as session, session.begin():
            new_ids = insert_jobs(session, run_id=run.id, specs=chunk)
        if broker_error is None:  # once the broker is down, the rest still goes into the ledger
            broker_error = _publish(publisher, queue, len(new_ids))
        submitted += len(new_ids)
        skipped += len(chunk) - len(new_ids)
    with sessions() as session, session.begin():
        reschedule(session, run_id=run.id, schedule=schedule or Schedule())
    _raise_if_unpublished(broker_error, run.id, submitted)
    return SubmitReport(run=run.id, submitted=submitted, skipped=skipped)


def publish_run(sessions: sessionmaker[Session], publisher: Publisher, *, queue: str, run_id: int) -> None:
    """Publish claim tokens for the run's queued jobs (a submit made with a publisher that held them
    back), by its counters, in parts, each noted as published. Raises BrokerUnavailable when the broker
    cannot be reached (the rest is left to the reconciler)."""
    with sessions() as session:
        queued = read_counts(session, run_id).by_state[JobState.QUEUED.value]
    for start in range(0, queued, PUBLISH_PART):
        _raise_if_unpublished(_publish(publisher, queue, min(PUBLISH_PART, queued - start)), run_id, queued)
        with sessions() as session, session.begin():
            mark_published(session, run_id=run_id)


def _publish(publisher: Publisher, queue: str, jobs: int) -> Exception | None:
    """Publish claim tokens for `jobs` new jobs; the broker's connection error, if it is down (the jobs
    are committed already)."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        publisher.publish(queue, jobs)
    except (OSError, KombuOperationalError, RedisConnectionError, RedisTimeoutError) as exc:
        return exc
    return None


def _raise_if_unpublished(error: Exception | None, run_id: int, submitted: int) -> None:
    if error is not None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BrokerUnavailable(
            f"run {run_id}: {submitted} jobs are queued in the ledger, but the broker could not be reached "
            f"({first}); `vlmbatch reconcile` or any running worker will publish them"
        )


def _submit_in_one_transaction(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    source: Source,
    settings: RunSettings,
    queue: str,
    name: str,
    held: bool,
    schedule: Schedule | None,
) -> SubmitReport:
    errors = RowErrors(source.uri)
    seen = submitted = 0
    with sessions() as session, session.begin():
        run = get_or_create_run(
            session, name=name, settings=settings, queue=queue, source=source.uri, held=held, schedule=schedule
        )
        staging = PostgresStaging(session)
        chunk: list[StagedRow] = []
        for where, spec in checked_rows(source, _reference_check(settings)):
            if isinstance(spec, ValueError):
                errors.add(where, spec)
            elif not errors.total:  # once a row is bad, only look for more bad rows
                chunk.append(staged_row(spec))
                if len(chunk) == STAGE_CHUNK:
                    submitted += _stage(staging, chunk, run.id)
                    seen += len(chunk)
                    chunk = []
        errors.raise_if_any()  # rolls back: nothing of this submit remains, not even a new run
        submitted += _stage(staging, chunk, run.id)
        seen += len(chunk)
        run_id = run.id
        staging.count()
        reschedule(session, run_id=run_id, schedule=schedule or Schedule())
        mark_published(session, run_id=run_id)
    with sessions() as session, session.begin():
        # Before the first message: workers claim right away, and need plans made for this table's size.
        refresh_statistics(session, inserted=submitted)
    # Claim tokens name no jobs (schema/contracts/tokens.py): one per `jobs_per_message` new jobs, in
    # parts, each noted as published so the reconciler's grace covers the rest.
    for start in range(0, submitted, PUBLISH_PART):
        _raise_if_unpublished(_publish(publisher, queue, min(PUBLISH_PART, submitted - start)), run_id, submitted)
        with sessions() as marking, marking.begin():
            mark_published(marking, run_id=run_id)
    return SubmitReport(run=run_id, submitted=submitted, skipped=seen - submitted)


def _stage(staging: PostgresStaging, chunk: list[StagedRow], run_id: int) -> int:
    if not chunk:
        return 0
    staging.copy(chunk)
    return staging.move(run_id)


def _chunks(specs: Iterator[JobSpec], size: int) -> Iterator[list[JobSpec]]:
    while chunk := list(islice(specs, size)):
        yield chunk


def _reference_check(settings: RunSettings) -> SpecCheck | None:
    """With a grader, every reference must be one the grader can read (a letter for `choice`, a number for
    `numeric`...): refusing the submit beats spending a run on answers that cannot be graded."""
    grader = settings.grader
    if grader is None:
        return None

    def check(spec: JobSpec) -> None:
        if spec.reference is not None:
            normalize_reference(grader, spec.reference, options=parse_options((spec.meta or {}).get("options")))

    return check
