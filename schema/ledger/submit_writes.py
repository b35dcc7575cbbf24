"""How a submit writes its run, jobs and rejects: the one place where the two databases' submits differ
(producer/submit.py reads the source once, through one path, and hands every row here).

- PostgreSQL (`_OneTransaction`): the whole submit is one transaction. Rows stream into a temporary table
  by COPY (enqueue.PostgresStaging) while they are read, so a refusal found at the end (too many rejects,
  no job) rolls everything back, run included. The jobs are published once committed, in parts, each
  noted as published so that the reconciler's grace covers the rest.
- SQLite (`_ChunkCommits`): its writer holds the database's one write lock, and workers must write while
  a large submit runs, so rows are inserted in chunks, a transaction each, each chunk published once
  committed. Nothing could be rolled back then: the source is checked first, in a pass that writes
  nothing (`check_first`).

Either way the source is read as often as before rejects existed: they are recorded where the writing
pass meets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.models import JobSpec, RowReject, RunSettings
from vlmbatch.schema.ledger.dialect import stages_rows_by_copy
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

# Rows (jobs and rejects) per committed chunk (SQLite): large enough to amortise round trips, small
# enough to stream and to hold the write lock briefly.
CHUNK_ROWS = 5000
# Rows per COPY into PostgreSQL's staging table (and per INSERT ... SELECT out of it), and rejects held
# before they are recorded (memory stays flat).
STAGE_ROWS = 50_000
# Jobs whose claim tokens are published between two marks of the run as published (PostgreSQL).
PUBLISH_PART = 100_000


class JobWrites(Protocol):
    """A submit's writes, in the order the submit makes them: `open_run`, then `add` and `reject` for
    each row as it is read, `finish_rows`, `finish_run`. `committed_parts` hands out the numbers of jobs
    committed since it was last called, each to be published (then `note_published`)."""

    inserted: int
    offered: int

    def open_run(
        self,
        *,
        name: str,
        settings: RunSettings,
        queue: str,
        source: str | None,
        held: bool,
        model_fingerprint: str | None,
        schedule: Schedule | None,
    ) -> int: ...

    def add(self, spec: JobSpec, source_row: int) -> None: ...

    def reject(self, rejects: Sequence[RowReject]) -> None: ...

    def finish_rows(self) -> None: ...

    def finish_run(self, schedule: Schedule) -> None: ...

    def committed_parts(self) -> list[int]: ...

    def note_published(self) -> None: ...


@contextmanager
def job_writes(sessions: sessionmaker[Session], *, check_first: Callable[[], None]) -> Iterator[JobWrites]:
    """The writes of one submit (module docstring). `check_first` is a pass over the source that writes
    nothing and raises when the source is refused: called first where chunks are committed as they come.
    An exception in the block rolls back what is not committed yet."""
    with sessions() as probe:
        one_transaction = stages_rows_by_copy(probe)
    if not one_transaction:
        check_first()
        yield _ChunkCommits(sessions)
        return
    writes = _OneTransaction(sessions)
    with writes.transaction():
        yield writes
    with sessions() as session, session.begin():
        # Before the first message: workers claim right away, and need plans made for this table's size.
        refresh_statistics(session, inserted=writes.inserted)
    writes.committed = writes.inserted


class _OneTransaction:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._session: Session | None = None
        self._staging: PostgresStaging | None = None
        self._chunk: list[StagedRow] = []
        self._rejects: list[RowReject] = []
        self._run_id = 0
        self.inserted = self.offered = self.committed = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with ExitStack() as stack:
            session = stack.enter_context(self._sessions())
            stack.enter_context(session.begin())
            self._session = session
            yield

    def _open(self) -> Session:
        assert self._session is not None, "used outside job_writes"
        return self._session

    def open_run(
        self,
        *,
        name: str,
        settings: RunSettings,
        queue: str,
        source: str | None,
        held: bool,
        model_fingerprint: str | None,
        schedule: Schedule | None,
    ) -> int:
        session = self._open()
        run = get_or_create_run(
            session,
            name=name,
            settings=settings,
            queue=queue,
            source=source,
            held=held,
            model_fingerprint=model_fingerprint,
            schedule=schedule,
        )
        self._run_id = run.id
        self._staging = PostgresStaging(session)
        return run.id

    def add(self, spec: JobSpec, source_row: int) -> None:
        self._chunk.append(staged_row(spec, source_row))
        if len(self._chunk) == STAGE_ROWS:
            self._stage()

    def reject(self, rejects: Sequence[RowReject]) -> None:
        self._rejects.extend(rejects)
        if len(self._rejects) >= STAGE_ROWS:  # recorded as they come: memory stays flat
            self._record_rejects()

    def finish_rows(self) -> None:
        self._record_rejects()
        self._stage()

    def finish_run(self, schedule: Schedule) -> None:
        session = self._open()
        assert self._staging is not None
        self._staging.count()
        reschedule(session, run_id=self._run_id, schedule=schedule)
        mark_published(session, run_id=self._run_id)

    def committed_parts(self) -> list[int]:
        total, self.committed = self.committed, 0
        return [min(PUBLISH_PART, total - start) for start in range(0, total, PUBLISH_PART)]

    def note_published(self) -> None:
        with self._sessions() as marking, marking.begin():
            mark_published(marking, run_id=self._run_id)

    def _stage(self) -> None:
        if not self._chunk:
            return
        assert self._staging is not None
        self._staging.copy(self._chunk)
        self.inserted += self._staging.move(self._run_id)
        self.offered += len(self._chunk)
        self._chunk = []

    def _record_rejects(self) -> None:
        record_rejects(self._open(), run_id=self._run_id, rejects=self._rejects)
        self._rejects = []


class _ChunkCommits:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._run_id = 0
        self._jobs: list[tuple[int, JobSpec]] = []
        self._rejects: list[RowReject] = []
        self._rows = 0
        self._parts: list[int] = []
        self.inserted = self.offered = 0

    def open_run(
        self,
        *,
        name: str,
        settings: RunSettings,
        queue: str,
        source: str | None,
        held: bool,
        model_fingerprint: str | None,
        schedule: Schedule | None,
    ) -> int:
        run = create_or_reuse_run(
            self._sessions,
            name=name,
            settings=settings,
            queue=queue,
            source=source,
            held=held,
            model_fingerprint=model_fingerprint,
            schedule=schedule,
        )
        self._run_id = run.id
        return run.id

    def add(self, spec: JobSpec, source_row: int) -> None:
        self._jobs.append((source_row, spec))
        self._count_rows(1)

    def reject(self, rejects: Sequence[RowReject]) -> None:
        self._rejects.extend(rejects)
        self._count_rows(len(rejects))

    def finish_rows(self) -> None:
        if self._rows:
            self._commit_chunk()

    def finish_run(self, schedule: Schedule) -> None:
        with self._sessions() as session, session.begin():
            reschedule(session, run_id=self._run_id, schedule=schedule)

    def committed_parts(self) -> list[int]:
        parts, self._parts = self._parts, []
        return parts

    def note_published(self) -> None:
        """Nothing to note: each chunk is published right after its commit."""

    def _count_rows(self, n: int) -> None:
        self._rows += n
        if self._rows >= CHUNK_ROWS:
            self._commit_chunk()

    def _commit_chunk(self) -> None:
        specs = [spec for _, spec in self._jobs]
        source_rows = [row for row, _ in self._jobs]
        with self._sessions() as session, session.begin():
            new_ids = insert_jobs(session, run_id=self._run_id, specs=specs, source_rows=source_rows)
            record_rejects(session, run_id=self._run_id, rejects=self._rejects)
        self._parts.append(len(new_ids))
        self.inserted += len(new_ids)
        self.offered += len(specs)
        self._jobs, self._rejects, self._rows = [], [], 0
