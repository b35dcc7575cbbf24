"""Runs: create or reuse by name, look up by id or name; what a worker needs to know of a run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.errors import InternalError, RunConflict, RunNotFound
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.keyset import Keyset
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.tables import Job, Run


@dataclass(frozen=True)
class Schedule:
    """A run's place among its queue's runs (schema/ledger/shares.py); None: the default, or what a reused
    run has."""

    priority: int | None = None
    weight: int | None = None


class RunView(Protocol):
    """What readers outside the ledger (exports, reports) read of a run: a run row as `get_run` returns it
    satisfies it, without its readers naming the ledger's tables."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def settings(self) -> dict[str, Any]: ...
    @property
    def queue(self) -> str: ...
    @property
    def source(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def cancelled_at(self) -> datetime | None: ...
    @property
    def paused_at(self) -> datetime | None: ...


# Ids are 64-bit; a larger number names no run (and would overflow the database's integer).
_MAX_ID = 2**63 - 1


def get_run(session: Session, ref: str | int) -> Run:
    """The run whose id or name is `ref`. Raises RunNotFound."""
    text = str(ref)
    run = session.scalar(select(Run).where(Run.name == text))
    if run is None and text.isascii() and text.isdigit() and int(text) <= _MAX_ID:
        run = session.get(Run, int(text))
    if run is None:
        raise RunNotFound(f"no run has the id or name {text!r}")
    return run


def find_run(session: Session, *, run_id: int) -> RunView | None:
    """The run `run_id`, detached from the session (it outlives it); None when there is none."""
    run = session.get(Run, run_id)
    if run is not None:
        session.expunge(run)
    return run


def run_settings(run: RunView) -> RunSettings:
    return RunSettings.model_validate(run.settings)


def get_or_create_run(
    session: Session,
    *,
    name: str,
    settings: RunSettings,
    queue: str,
    source: str | None,
    held: bool = False,
    model_fingerprint: str | None = None,
    schedule: Schedule | None = None,
) -> Run:
    """Within the caller's transaction: the run called `name`, created if new (`held`: its jobs are not
    claimable until released; `schedule`: a new run's priority and weight, `reschedule` changes a reused
    run's). Raises RunConflict when it exists with other settings."""
    wanted = settings.model_dump(mode="json")
    run = session.scalar(select(Run).where(Run.name == name))
    schedule = schedule or Schedule()
    if run is None:
        run = Run(
            name=name,
            model=settings.model,
            model_fingerprint=model_fingerprint,
            queue=queue,
            settings=wanted,
            source=source,
            held=held,
            priority=schedule.priority if schedule.priority is not None else 0,
            weight=schedule.weight if schedule.weight is not None else 1,
        )
        session.add(run)
        session.flush()
        return run
    # Compared as models: a run stored before a settings field existed holds that field's default.
    if RunSettings.model_validate(run.settings) != settings:
        raise RunConflict(
            f"run {name!r} exists with other settings (fingerprint "
            f"{RunSettings.model_validate(run.settings).fingerprint()} vs {settings.fingerprint()}); "
            "choose another --run name"
        )
    return run


def reschedule(session: Session, *, run_id: int, schedule: Schedule) -> None:
    """After a submit added jobs to the run (in its transaction, after its job and counter writes: the
    ledger's lock order): its priority and weight, when given, and its share starts level with the active
    runs' (it may have drained long ago, schema.ledger.shares)."""
    values: dict[str, object] = {"share_offset": None}
    if schedule.priority is not None:
        values["priority"] = schedule.priority
    if schedule.weight is not None:
        values["weight"] = schedule.weight
    session.execute(update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False))


def create_or_reuse_run(
    sessions: sessionmaker[Session],
    *,
    name: str,
    settings: RunSettings,
    queue: str,
    source: str | None,
    held: bool = False,
    model_fingerprint: str | None = None,
    schedule: Schedule | None = None,
) -> Run:
    """The run called `name`, created with `settings` if new, in a transaction of its own.

    Raises RunConflict when a run of that name exists with other settings: mixing two sampling set-ups
    in one run would make its results incomparable.
    """
    for _ in range(2):  # a concurrent submit may create the same run between our read and our insert
        try:
            with sessions() as session, session.begin():
                return get_or_create_run(
                    session,
                    name=name,
                    settings=settings,
                    queue=queue,
                    source=source,
                    held=held,
                    model_fingerprint=model_fingerprint,
                    schedule=schedule,
                )
        except IntegrityError:
            continue
    raise RunConflict(f"run {name!r} could not be created")


def release_run(session: Session, *, run_id: int) -> None:
    """Make a held run's queued jobs claimable (in the caller's transaction)."""
    session.execute(update(Run).where(Run.id == run_id).values(held=False))


@dataclass(frozen=True)
class RunFacts:
    """What a worker reads of a run once, before its first job: settings, queue, and where its source is."""

    settings: RunSettings
    queue: str
    source: str | None


def run_facts(session: Session, *, run_id: int) -> RunFacts:
    """The facts of run `run_id`. Raises InternalError when it does not exist (a claimed job's run does)."""
    run = session.get(Run, run_id)
    if run is None:
        raise InternalError(f"run {run_id} does not exist")
    return RunFacts(settings=RunSettings.model_validate(run.settings), queue=run.queue, source=run.source)


def run_drained(session: Session, *, run_id: int) -> bool:
    """True when none of the run's jobs is queued or running (after taking back expired leases)."""
    requeue_expired_leases(session, run_id=run_id)
    # One probe of ix_jobs_run_state_id per state (keyset.py): exact, and as cheap as the counters.
    for state in (JobState.QUEUED, JobState.RUNNING):
        keys = Keyset([(Job.run_id, run_id), (Job.state, state.value)])
        if session.scalar(keys.page(select(Job.id), session=session).limit(1)) is not None:
            return False
    return True
