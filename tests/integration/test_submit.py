"""Submitting on both databases: counts, idempotence, all-or-nothing refusal, claim tokens published for
every new job (and for no old one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Job, Run


class RecordingPublisher:
    """Counts the jobs that claim tokens were published for, per call."""

    def __init__(self) -> None:
        self.published: list[int] = []

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        self.published.append(jobs)
        return 1


def _manifest(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _submit(database_url: str, manifest: Path, publisher: RecordingPublisher) -> tuple[int, int, int]:
    _, sessions = open_ledger(database_url)
    report = submit(
        sessions=sessions,
        publisher=publisher,
        source=open_source(str(manifest), prompting=Prompting.of("What?"), stores=ObjectStores()),
        settings=RunSettings(model="m"),
        queue="q",
        run_name="r",
    )
    return report.run, report.submitted, report.skipped


def test_a_submit_inserts_and_publishes_each_new_job_once(database_url: str, tmp_path: Path) -> None:
    rows: list[object] = [{"image": f"s3://b/{i}.jpg", "meta_i": i} for i in range(300)]
    rows.append({"image": "s3://b/0.jpg", "meta_i": 0})  # the same job twice in one source
    publisher = RecordingPublisher()
    run, submitted, skipped = _submit(database_url, _manifest(tmp_path / "m.jsonl", rows), publisher)
    assert (submitted, skipped) == (300, 1)
    _, sessions = open_ledger(database_url)
    with sessions() as session:
        ids = sorted(session.scalars(select(Job.id).where(Job.run_id == run)))
        meta = session.scalar(select(Job.meta).where(Job.images[0].as_string() == "s3://b/7.jpg"))
    assert sum(publisher.published) == len(ids) == 300
    assert meta == {"meta_i": 7}

    more = [*rows, {"image": "s3://b/new.jpg"}]
    again = RecordingPublisher()
    assert _submit(database_url, _manifest(tmp_path / "m2.jsonl", more), again)[1:] == (1, 301)
    assert sum(again.published) == 1


def test_a_malformed_row_leaves_nothing_behind_not_even_the_run(database_url: str, tmp_path: Path) -> None:
    rows: list[object] = [{"image": f"s3://b/{i}.jpg"} for i in range(100)]
    rows.insert(50, "{broken")
    publisher = RecordingPublisher()
    with pytest.raises(SourceError, match="line 51: invalid JSON"):
        _submit(database_url, _manifest(tmp_path / "m.jsonl", rows), publisher)
    _, sessions = open_ledger(database_url)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Run)) == 0
    assert publisher.published == []


def test_a_bulk_submit_leaves_statistics_for_the_planner(postgres_url: str, tmp_path: Path) -> None:
    """Workers claim right after a submit: `jobs` must be analysed by then (autovacuum may be off or
    behind), and a later submit that grows the table little does not analyse it again."""
    from sqlalchemy import text

    publisher = RecordingPublisher()
    rows: list[object] = [{"image": f"s3://b/{i}.jpg"} for i in range(2000)]
    _submit(postgres_url, _manifest(tmp_path / "m.jsonl", rows), publisher)
    _, sessions = open_ledger(postgres_url)
    # pg_class and pg_stats change with the ANALYZE's transaction (the activity counters lag behind).
    stats = text(
        "SELECT reltuples, (SELECT count(*) FROM pg_stats WHERE tablename = 'jobs' AND attname = 'state') "
        "FROM pg_class WHERE relname = 'jobs'"
    )
    with sessions() as session:
        assert session.execute(stats).one() == (2000, 1)

    more: list[object] = [*rows, *({"image": f"s3://b/more-{i}.jpg"} for i in range(100))]
    _submit(postgres_url, _manifest(tmp_path / "m2.jsonl", more), publisher)
    with sessions() as session:
        assert session.execute(stats).one() == (2000, 1)  # 5% growth: not analysed again
