"""Submitting a source: validate it, create or reuse the run, insert its jobs in bulk (idempotently) and
publish claim tokens for them (one per `jobs_per_message` jobs). Jobs are committed before their tokens
are published, so a token never finds them missing; a crash in between leaves queued jobs without tokens,
for which the reconciler publishes some.

One path for both databases: the source is read once, row by row, and each row handed to the ledger's
writes (schema.ledger.submit_writes), which hold the one difference: on PostgreSQL the whole submit is one
transaction (a refusal at the end rolls everything back, run included); on SQLite chunks are committed and
published as they come, after a first pass that checks the source and writes nothing."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.producer.sources.base import (
    STRICT,
    RejectPolicy,
    Rejects,
    Source,
    SpecCheck,
    checked_rows,
    source_empty_message,
    source_unplaced,
)
from vlmbatch.schema.contracts.errors import BrokerUnavailable, SourceError
from vlmbatch.schema.contracts.model_identity import identify
from vlmbatch.schema.contracts.models import JobSpec, RunSettings, SubmitReport
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.grading import normalize_reference, parse_options
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.enqueue import mark_published
from vlmbatch.schema.ledger.runs import Schedule
from vlmbatch.schema.ledger.submit_writes import PUBLISH_PART, JobWrites, job_writes
from vlmbatch.worker.transport.publisher import Publisher


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
    check = reference_check(settings)
    rejects = Rejects(source.uri, policy)
    strict = policy.strict

    def check_first() -> None:  # a pass that counts and checks, and writes nothing
        counted = Rejects(source.uri, policy)
        source.validate(check, counted)
        _refuse(source, counted)

    broker_error: Exception | None = None
    with job_writes(sessions, check_first=check_first) as writes:
        run_id = writes.open_run(
            name=name,
            settings=settings,
            queue=queue,
            source=source.uri,
            held=held,
            model_fingerprint=identify(settings.model).fingerprint,
            schedule=schedule,
        )
        numbers = _RowNumbers()
        for where, spec in checked_rows(source, check):
            number = numbers.of(where)
            if isinstance(spec, ValueError):
                rejects.add(where, spec)
                writes.reject(rejects.drain())
            else:
                rejects.accept()
                if strict and rejects.total:  # once a row is bad, only look for more bad rows
                    continue
                writes.add(spec, number)
            broker_error = _publish_committed(writes, publisher, queue, broker_error)
        _refuse(source, rejects)  # raising rolls back what is not committed: in one transaction, everything
        writes.finish_rows()
        broker_error = _publish_committed(writes, publisher, queue, broker_error)
        writes.finish_run(schedule or Schedule())
    # Claim tokens name no jobs (schema/contracts/tokens.py): one per `jobs_per_message` new jobs.
    broker_error = _publish_committed(writes, publisher, queue, broker_error)
    _raise_if_unpublished(broker_error, run_id, writes.inserted)
    return _report(run_id, writes.inserted, writes.offered - writes.inserted, rejects, source)


def _publish_committed(
    writes: JobWrites, publisher: Publisher, queue: str, broker_error: Exception | None
) -> Exception | None:
    """Publish claim tokens for the jobs committed since the last call, part by part, each noted as
    published; once the broker is down, the rest still goes into the ledger (the error is returned)."""
    for part in writes.committed_parts():
        if broker_error is not None:
            break
        broker_error = _publish(publisher, queue, part)
        if broker_error is None:
            writes.note_published()
    return broker_error


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
