"""WebDataset shards written by `webdataset`'s TarWriter (img2dataset's layout, a corrupt JPEG, a sample
without an image), as a folder, a brace pattern and an S3 prefix on a server over HTTP. The worker reads
each image with one ranged GET of that member's bytes, never the shard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select

from tests.conftest import fill_bucket
from tests.fixtures.embedded import write_shards
from tests.integration.pipeline_helpers import running_pipeline, settings_for
from vlmbatch.media.shards import parse_member_uri
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.base import Source, source_notes
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.parquet import ColumnChoice
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.sources.webdataset import WebDatasetSource
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import ErrorType, SourceError
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.transport.publisher import NullPublisher


def _submit_then_work(settings: Settings, source: Source, question: str | None = "What is shown?") -> list[Job]:
    _, sessions = open_ledger(settings.resolved_database_url())
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=source,
        settings=RunSettings(model="fake-model"),
        queue="q",
        name_basis=question,
    )
    with running_pipeline(settings) as (pipeline, _):
        pipeline.feed_run(report.run).result(timeout=120)
    with sessions() as session:
        return list(session.scalars(select(Job).where(Job.run_id == report.run).order_by(Job.id)))


def _assert_samples_ran(jobs: list[Job], expected: dict[str, bytes | None], endpoint: str | None = None) -> None:
    store = ObjectStores(s3_endpoint_url=endpoint)
    by_key = {job.meta["key"]: job for job in jobs if job.meta}
    assert sorted(by_key) == sorted(k for k, image in expected.items() if image is not None)
    for key, job in by_key.items():
        assert [store.fetch(uri, max_bytes=1 << 20) for uri in job.images] == [expected[key]]
        assert job.meta is not None and job.meta["caption"] == f"a photo number {int(key)}"
        assert job.meta["shard"].endswith(f"{(int(key) - 1) // 4:05d}.tar")
        if key == "000000002":
            assert (job.state, job.error_type) == (JobState.FAILED, ErrorType.INPUT_UNREADABLE)
        else:
            assert job.state == JobState.SUCCEEDED, job.error_message


def test_a_folder_of_shards_runs_one_job_per_sample_with_an_image(database_url: str, tmp_path: Path) -> None:
    expected = write_shards(tmp_path / "shards")
    source = open_source(str(tmp_path / "shards"), prompting=Prompting.of("What is shown?"), stores=ObjectStores())
    assert isinstance(getattr(source, "inner", source), WebDatasetSource)
    jobs = _submit_then_work(settings_for(database_url), source)
    _assert_samples_ran(jobs, expected)
    assert source_notes(source) == ["1 sample(s) without an image member, not submitted: 00001.tar:000000005"]


def test_a_brace_pattern_names_the_shards_and_a_json_field_supplies_the_question(
    sqlite_url: str, tmp_path: Path
) -> None:
    expected = write_shards(tmp_path / "shards", shards=3)
    pattern = str(tmp_path / "shards" / "{00000..00001}.tar")  # the third shard is left out
    source = open_source(pattern, stores=ObjectStores(), columns=ColumnChoice(question_column="caption"))
    jobs = _submit_then_work(settings_for(sqlite_url), source, question=None)
    assert len(jobs) == 7
    assert all(job.meta is not None and job.question == job.meta["caption"] for job in jobs)
    _assert_samples_ran(jobs, {k: v for k, v in expected.items() if int(k) <= 8})


def test_a_sample_without_a_question_is_a_malformed_row(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", shards=1)
    source = open_source(str(tmp_path / "shards" / "00000.tar"), stores=ObjectStores())
    with pytest.raises(SourceError, match=r"00000.tar:000000001: no question"):
        source.validate()


@pytest.fixture
def served_gets(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every GetObject response of S3 clients made from now on (each store makes its own boto3 session):
    its byte count and range."""
    served: list[dict[str, Any]] = []

    def record(parsed: dict[str, Any], **_: Any) -> None:
        served.append({"bytes": parsed.get("ContentLength"), "range": parsed.get("ContentRange")})

    make_client = boto3.session.Session.client

    def client(self: boto3.session.Session, *args: Any, **kwargs: Any) -> Any:
        made = make_client(self, *args, **kwargs)
        made.meta.events.register("after-call.s3.GetObject", record)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    yield served


def test_shards_on_s3_are_read_one_member_per_image_by_ranged_gets(
    sqlite_url: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path, served_gets: list[dict[str, Any]]
) -> None:
    expected = write_shards(tmp_path / "shards")
    fill_bucket(
        s3_endpoint, s3_bucket, {f"wds/{p.name}": p.read_bytes() for p in sorted((tmp_path / "shards").iterdir())}
    )
    settings = settings_for(sqlite_url, s3_endpoint_url=s3_endpoint)
    source = open_source(
        f"s3://{s3_bucket}/wds/",
        prompting=Prompting.of("What is shown?"),
        stores=ObjectStores(s3_endpoint_url=s3_endpoint),
    )
    assert isinstance(getattr(source, "inner", source), WebDatasetSource)
    _, sessions = open_ledger(settings.resolved_database_url())
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=source,
        settings=RunSettings(model="fake-model"),
        queue="q",
        name_basis="What is shown?",
    )
    submit_gets = len(served_gets)
    with running_pipeline(settings) as (pipeline, _):
        pipeline.feed_run(report.run).result(timeout=120)
    with sessions() as session:
        jobs = list(session.scalars(select(Job).where(Job.run_id == report.run)))
    worker_gets = served_gets[submit_gets:]
    sizes = sorted(parse_member_uri(job.images[0]).size for job in jobs)
    # One ranged GET per job, each serving exactly its member's bytes (a member is ~3 KB; a shard ~40 KB).
    assert sorted(get["bytes"] for get in worker_gets) == sizes
    assert all(str(get["range"]).startswith("bytes ") for get in worker_gets)
    shard_bytes = min(p.stat().st_size for p in (tmp_path / "shards").iterdir())
    assert max(sizes) * 10 < shard_bytes
    _assert_samples_ran(jobs, expected, s3_endpoint)


def test_a_shard_that_is_not_an_uncompressed_tar_refuses_the_source(tmp_path: Path) -> None:
    import gzip

    folder = tmp_path / "shards"
    write_shards(folder, shards=1)
    (folder / "00001.tar").write_bytes(gzip.compress((folder / "00000.tar").read_bytes()))
    source = open_source(str(folder), prompting=Prompting.of("q?"), stores=ObjectStores())
    with pytest.raises(SourceError, match=r"00001.tar: not a readable \(uncompressed\) tar shard"):
        source.validate()
