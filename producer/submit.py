"""Submitting a source: validate it, create or reuse the run, insert its jobs in bulk (idempotently) and
publish claim tokens for them (one per `jobs_per_message` jobs). Jobs are committed before their tokens
are published, so a token never finds them missing; a crash in between leaves queued jobs without tokens,
for which the reconciler publishes some.

On PostgreSQL the whole submit is one transaction: rows stream into a temporary table by COPY while they
are validated, and a refusal (a malformed row under `--strict`, too many rejects, no job at all) rolls
everything back, run included. Elsewhere (SQLite) the source is validated in a first pass, then inserted
in chunks. Either way the source is read as often as before rejects existed: they are recorded where the
inserting pass meets them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from itertools import islice

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.producer.sources.base import (
    STRICT,
    RejectPolicy,
    Rejects,
    Row,
    Source,
    SpecCheck,
    checked_rows,
    reject_of,
    source_empty_message,
    source_unplaced,
)
from vlmbatch.schema.contracts.errors import BrokerUnavailable, SourceError
from vlmbatch.schema.contracts.model_identity import identify
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
from vlmbatch.schema.ledger.rejects import record_rejects
from vlmbatch.schema.ledger.runs import Schedule, create_or_reuse_run, get_or_create_run, reschedule
from vlmbatch.worker.transport.publisher import Publisher

# Jobs inserted per transaction: large enough to amortise round trips, small enough to stream.
SUBMIT_CHUNK = 5000
# Rows per COPY into PostgreSQL's staging table (and per INSERT ... SELECT out of it).
STAGE_CHUNK = 50_000
# Jobs whose claim tokens are published between two marks of the run as published.
PUBLISH_PART = 100_000


def default_run_name(source_uri: str, name_basis: str | None, settings: RunSettings) -> str:
    """A stable name, so that submitting the same source with the same settings twice reuses the run;
    `name_basis` is what else tells this run from another (what is asked, a dataset's config)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", source_uri.rstrip("/").rsplit("/", 1)[-1]).strip("-") or "run"
    digest = hashlib.sha256(f"{source_uri}\n{name_basis}\n{settings.fingerprint()}".encode()).hexdigest()[:8]
    return f"{stem[:60]}-{digest}"


def submit(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    source: Source,
    settings: RunSettings,
    queue: str,
    run_name: str | None = None,
    name_basis: str | None = None,
    held: bool = False,
    policy: RejectPolicy = STRICT,
    schedule: Schedule | None = None,
) -> SubmitReport:
    """Submit every job of `source` to the run (`held`: a new run's jobs are not claimable until it is
    released, schema.ledger.runs.release_run; `schedule`: its priority and weight). Rows that cannot become
    jobs refuse the submit under a strict `policy`, else they are recorded as the run's rejects
    (sources.base.RejectPolicy). Raises SourceError (nothing written) for a bad source, one that yields no
    job, or too many rejects; RunConflict when the named run exists with other settings."""
    name = run_name or default_run_name(source.uri, name_basis, settings)
    rejects = Rejects(source.uri, policy)
    if sessions.kw["bind"].dialect.name == "postgresql":
        return _submit_in_one_transaction(
            sessions=sessions,
            publisher=publisher,
            source=source,
            settings=settings,
            queue=queue,
            name=name,
            held=held,
            rejects=rejects,
            schedule=schedule,
        )
    check = reference_check(settings)
    source.validate(check, rejects)  # the first pass: counts and checks, writes nothing
    _refuse(source, rejects)
    rejects.drain()  # the second pass records them where it meets them
    run = create_or_reuse_run(
        sessions,
        name=name,
        settings=settings,
        queue=queue,
        source=source.uri,
        held=held,
        model_fingerprint=identify(settings.model).fingerprint,
        schedule=schedule,
    )
    submitted = skipped = 0
    broker_error: Exception | None = None
    numbers = _RowNumbers()
    for chunk in _chunks(checked_rows(source, check), SUBMIT_CHUNK):
        numbered = [(numbers.of(where), spec) for where, spec in chunk]
        specs = [spec for _, spec in numbered if isinstance(spec, JobSpec)]
        source_rows = [n for n, spec in numbered if isinstance(spec, JobSpec)]
        with sessions() as session, session.begin():
            new_ids = insert_jobs(session, run_id=run.id, specs=specs, source_rows=source_rows)
            record_rejects(
                session, run_id=run.id, rejects=[reject_of(w, e) for w, e in chunk if not isinstance(e, JobSpec)]
            )
        if broker_error is None:  # once the broker is down, the rest still goes into the ledger
            broker_error = _publish(publisher, queue, len(new_ids))
        submitted += len(new_ids)
        skipped += len(specs) - len(new_ids)
    with sessions() as session, session.begin():
        reschedule(session, run_id=run.id, schedule=schedule or Schedule())
    _raise_if_unpublished(broker_error, run.id, submitted)
    return _report(run.id, submitted, skipped, rejects, source)


def _refuse(source: Source, rejects: Rejects) -> None:
    """Raise SourceError when the rows read refuse the submit: too many rejects, or no job at all (never
    an empty run in silence: the error says what was looked for and what was found)."""
    rejects.settle()
    if rejects.rows:
        return
    if rejects.total:
        rejects.errors.raise_if_any()
    raise SourceError(source_empty_message(source))


def _report(run_id: int, submitted: int, skipped: int, rejects: Rejects, source: Source) -> SubmitReport:
    return SubmitReport(
        run=run_id,
        submitted=submitted,
        skipped=skipped,
        rejected=rejects.total,
        first_rejects=rejects.first,
        unplaced=source_unplaced(source),
    )


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
    rejects: Rejects,
    schedule: Schedule | None,
) -> SubmitReport:
    seen = submitted = 0
    strict = rejects.policy.strict
    with sessions() as session, session.begin():
        run = get_or_create_run(
            session,
            name=name,
            settings=settings,
            queue=queue,
            source=source.uri,
            held=held,
            model_fingerprint=identify(settings.model).fingerprint,
            schedule=schedule,
        )
        staging = PostgresStaging(session)
        chunk: list[StagedRow] = []
        numbers = _RowNumbers()
        for where, spec in checked_rows(source, reference_check(settings)):
            number = numbers.of(where)
            if isinstance(spec, ValueError):
                rejects.add(where, spec)
                if len(rejects.pending) >= STAGE_CHUNK:  # recorded as they come: memory stays flat
                    record_rejects(session, run_id=run.id, rejects=rejects.drain())
                continue
            rejects.accept()
            if strict and rejects.total:  # once a row is bad, only look for more bad rows
                continue
            chunk.append(staged_row(spec, number))
            if len(chunk) == STAGE_CHUNK:
                submitted += _stage(staging, chunk, run.id)
                seen += len(chunk)
                chunk = []
        _refuse(source, rejects)  # raising rolls back: nothing of this submit remains, not even a new run
        record_rejects(session, run_id=run.id, rejects=rejects.drain())
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
    return _report(run_id, submitted, seen - submitted, rejects, source)


def _stage(staging: PostgresStaging, chunk: list[StagedRow], run_id: int) -> int:
    if not chunk:
        return 0
    staging.copy(chunk)
    return staging.move(run_id)


class _RowNumbers:
    """The source row number of each job, in the order submit reads them: a source names every row
    (`line 12`, `row 7`, a key, an image), and the jobs of one row's several questions come together
    under its name (sources/prompts.py), so a new name is the next row."""

    def __init__(self) -> None:
        self._where: str | None = None
        self._number = -1

    def of(self, where: str) -> int:
        if where != self._where:
            self._where, self._number = where, self._number + 1
        return self._number


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while chunk := list(islice(rows, size)):
        yield chunk


def reference_check(settings: RunSettings) -> SpecCheck | None:
    """With a grader, every reference must be one the grader can read (a letter for `choice`, a number for
    `numeric`...): refusing the submit beats spending a run on answers that cannot be graded."""
    grader = settings.grader
    if grader is None:
        return None

    def check(spec: JobSpec) -> None:
        if spec.reference is not None:
            normalize_reference(grader, spec.reference, options=parse_options((spec.meta or {}).get("options")))

    return check
