"""Small builders shared by ledger tests."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.models import JobSpec, RunSettings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.enqueue import insert_jobs
from vlmbatch.schema.ledger.runs import create_or_reuse_run


def ledger(url: str) -> sessionmaker[Session]:
    return open_ledger(url)[1]


def make_run(
    sessions: sessionmaker[Session], *, name: str = "run", jobs: int = 3, queue: str = "q", **settings: object
) -> tuple[int, list[int]]:
    run = create_or_reuse_run(
        sessions,
        name=name,
        settings=RunSettings(**settings),
        queue=queue,
        source="test",  # type: ignore[arg-type]
    )
    specs = [JobSpec(images=(f"file:///img/{i}.jpg",), question="what?") for i in range(jobs)]
    with sessions() as session, session.begin():
        ids = insert_jobs(session, run_id=run.id, specs=specs)
    return run.id, ids
