"""Submitting a source: validate it, create or reuse the run, insert its jobs in bulk (idempotently) and
publish their ids in batches. Jobs are committed before their message is published, so a worker never
receives an id it cannot find; a crash in between leaves queued jobs that the reconciler republishes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from itertools import islice

from sqlalchemy.orm import Session, sessionmaker

from producer.sources import Source, SpecCheck
from schema.enqueue import insert_jobs
from schema.models import JobSpec, RunSettings, SubmitReport
from schema.runs import create_or_reuse_run
from worker.grading import normalize_reference
from worker.publisher import Publisher

# Jobs inserted per transaction: large enough to amortise round trips, small enough to stream.
SUBMIT_CHUNK = 5000


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
) -> SubmitReport:
    """Submit every job of `source` to the run. Raises SourceError (nothing written) for a bad source,
    RunConflict when the named run exists with other settings."""
    source.validate(_reference_check(settings))
    name = run_name or default_run_name(source.uri, question, settings)
    run = create_or_reuse_run(sessions, name=name, settings=settings, queue=queue, source=source.uri)
    submitted = skipped = 0
    for chunk in _chunks(source.specs(), SUBMIT_CHUNK):
        with sessions() as session, session.begin():
            new_ids = insert_jobs(session, run_id=run.id, specs=chunk)
        publisher.publish(queue, new_ids)
        submitted += len(new_ids)
        skipped += len(chunk) - len(new_ids)
    return SubmitReport(run=run.id, submitted=submitted, skipped=skipped)


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
            normalize_reference(grader, spec.reference)

    return check
