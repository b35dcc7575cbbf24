"""Building a pipeline around the fake engine for control-plane tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.stores import ObjectStore, ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.engines.base import Engine
from vlmbatch.worker.engines.fake import FakeBehaviour, FakeEngine
from vlmbatch.worker.pipeline.pipeline import Pipeline
from vlmbatch.worker.transport.publisher import NullPublisher, Publisher


def settings_for(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "engine": "fake",
        "model": "fake-model",
        # The queue submit_folder's runs are on: claim tokens claim from the worker's queue.
        "queue": "q",
        "max_num_seqs": 8,
        "heartbeat_seconds": 0.5,
        "lease_seconds": 30,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def running_pipeline(
    settings: Settings,
    *,
    engine: Engine | None = None,
    store: ObjectStore | None = None,
    publisher: Publisher | None = None,
    behaviour: FakeBehaviour | None = None,
) -> Iterator[tuple[Pipeline, sessionmaker[Session]]]:
    _, sessions = open_ledger(settings.resolved_database_url())
    pipeline = Pipeline(
        settings=settings,
        engine=engine or FakeEngine(settings.model, behaviour),
        sessions=sessions,
        store=store or ObjectStores.from_settings(settings),
        publisher=publisher or NullPublisher(),
        worker_id="test-worker",
    )
    pipeline.start()
    try:
        yield pipeline, sessions
    finally:
        pipeline.stop()


def submit_folder(
    sessions: sessionmaker[Session], folder: Path, *, question: str = "What is shown?", **run: object
) -> int:
    sampling = {k: run.pop(k) for k in list(run) if k in SamplingSettings.model_fields}
    run.setdefault("model", "fake-model")
    settings = RunSettings(sampling=SamplingSettings(**sampling), **run)  # type: ignore[arg-type]
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=open_source(str(folder), prompting=Prompting.of(question), stores=ObjectStores()),
        settings=settings,
        queue="q",
        name_basis=question,
    )
    return report.run


def jobs_by_name(sessions: sessionmaker[Session], run_id: int) -> dict[str, Job]:
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.run_id == run_id)).all()
    return {job.images[0].rsplit("/", 1)[-1]: job for job in jobs}
