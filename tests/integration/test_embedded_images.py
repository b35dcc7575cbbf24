"""Images inside the source: Parquet written by Hugging Face `datasets` (an Image column, a list of
images, MMMU's image_1..image_7), local and on an S3 server over HTTP, and JSONL with `data:` URIs, run
through the worker pipeline (fake engine). Submit stages each image once, content-addressed; the ledger
holds only URIs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import fill_bucket
from tests.fixtures.bad_images import good_jpeg
from tests.fixtures.embedded import (
    MMMU_IMAGE_COLUMNS,
    mmmu_question,
    write_image_list_parquet,
    write_image_parquet,
    write_mmmu_parquet,
)
from tests.integration.pipeline_helpers import running_pipeline, settings_for
from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import ObjectStores, make_s3_client
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.parquet import ColumnChoice
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import ErrorType, SourceError
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.transport.publisher import NullPublisher

MAX_BYTES = 1 << 20


def _run(
    settings: Any, uri: str, *, stage_to: str, question: str | None = None, columns: ColumnChoice | None = None
) -> tuple[list[Job], sessionmaker[Session]]:
    """Submit `uri` and work the run to its end; its jobs in id order."""
    source = open_source(
        uri,
        prompting=Prompting.of(question),
        stores=ObjectStores(s3_endpoint_url=settings.s3_endpoint_url),
        columns=columns,
        stage_to=stage_to,
    )
    with running_pipeline(settings) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=source,
            settings=RunSettings(model="fake-model", max_images_per_prompt=8),
            queue="q",
            name_basis=question,
        )
        pipeline.feed_run(report.run).result(timeout=120)
    with sessions() as session:
        jobs = list(session.scalars(select(Job).where(Job.run_id == report.run).order_by(Job.id)))
    return jobs, sessions


def _image_bytes(job: Job, endpoint: str | None = None) -> list[bytes]:
    store = ObjectStores(s3_endpoint_url=endpoint)
    return [store.fetch(uri, max_bytes=MAX_BYTES) for uri in job.images]


def test_a_datasets_parquet_with_an_image_column_runs_each_row_with_its_own_image(
    database_url: str, tmp_path: Path
) -> None:
    images = write_image_parquet(tmp_path / "data.parquet", rows=6, corrupt_row=3)
    settings = settings_for(database_url)
    jobs, _ = _run(settings, str(tmp_path / "data.parquet"), stage_to=str(tmp_path / "staged"), question="Q?")
    by_question = {job.question: job for job in jobs}
    assert len(jobs) == 6
    for row, data in enumerate(images):
        job = by_question[f"What is in picture {row}?"]
        assert _image_bytes(job) == [data]
        # Default columns: `answer` is not the reference column, so it is metadata; the image is not.
        assert (job.reference, job.meta) == (None, {"answer": "ABCD"[row % 4]})
        if row == 3:
            assert (job.state, job.error_type) == (JobState.FAILED, ErrorType.INPUT_UNREADABLE)
        else:
            assert job.state == JobState.SUCCEEDED, job.error_message
    staged = sorted(p for p in (tmp_path / "staged").rglob("*") if p.is_file())
    assert len(staged) == 6 and all(p.parent.parent.name == "sha256" for p in staged)


def test_a_list_of_images_column_is_found_through_the_huggingface_metadata_and_keeps_its_order(
    sqlite_url: str, tmp_path: Path
) -> None:
    rows = write_image_list_parquet(tmp_path / "multi.parquet")
    jobs, _ = _run(
        settings_for(sqlite_url), str(tmp_path / "multi.parquet"), stage_to=str(tmp_path / "s"), question="Compare."
    )
    by_id = {job.meta["prompt_id"]: job for job in jobs if job.meta}
    assert sorted(by_id) == [0, 1, 2]
    for prompt_id, expected in enumerate(rows):
        assert _image_bytes(by_id[prompt_id]) == expected
        assert by_id[prompt_id].state == JobState.SUCCEEDED


def test_an_mmmu_shaped_parquet_skips_null_image_columns_and_stages_a_shared_figure_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    rows = write_mmmu_parquet(tmp_path / "mmmu.parquet")
    columns = ColumnChoice(image_columns=MMMU_IMAGE_COLUMNS, question_column="question", reference_column="answer")
    jobs, _ = _run(
        settings_for(sqlite_url), str(tmp_path / "mmmu.parquet"), stage_to=str(tmp_path / "s"), columns=columns
    )
    by_id = {job.meta["id"]: job for job in jobs if job.meta}
    for row, expected in enumerate(rows):
        job = by_id[f"validation_Art_{row}"]
        assert _image_bytes(job) == expected
        assert (job.question, job.reference) == (mmmu_question(row, len(expected)), "ACD"[row])
        assert set(job.meta or {}) == {"id", "options"}
        assert job.state == JobState.SUCCEEDED
    distinct = {data for row in rows for data in row}
    assert len(list((tmp_path / "s").rglob("*/*/*"))) == len(distinct) == 5  # 6 images, one shared by two rows


def test_a_parquet_on_s3_is_read_by_ranges_and_staged_to_an_s3_prefix(
    database_url: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    rows = write_mmmu_parquet(tmp_path / "mmmu.parquet")
    fill_bucket(s3_endpoint, s3_bucket, {"data/mmmu.parquet": (tmp_path / "mmmu.parquet").read_bytes()})
    settings = settings_for(database_url, s3_endpoint_url=s3_endpoint)
    columns = ColumnChoice(reference_column="answer")  # image columns from the huggingface metadata
    jobs, _ = _run(
        settings, f"s3://{s3_bucket}/data/mmmu.parquet", stage_to=f"s3://{s3_bucket}/staged", columns=columns
    )
    assert [_image_bytes(job, s3_endpoint) for job in jobs] == rows
    assert all(uri.startswith(f"s3://{s3_bucket}/staged/sha256/") for job in jobs for uri in job.images)
    assert {job.state for job in jobs} == {JobState.SUCCEEDED}
    listing = make_s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="staged/")
    assert listing["KeyCount"] == 5


def test_jsonl_images_as_base64_data_uris_are_staged_and_run(sqlite_url: str, tmp_path: Path) -> None:
    images = [good_jpeg(30, 20, seed=s) for s in (1, 2)]
    uris = [f"data:image/jpeg;base64,{base64.b64encode(data).decode()}" for data in images]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": uris, "question": "Compare them.", "id": 1}) + "\n")
    jobs, _ = _run(settings_for(sqlite_url), str(manifest), stage_to=str(tmp_path / "s"))
    assert len(jobs) == 1 and _image_bytes(jobs[0]) == images
    assert all(uri.startswith((tmp_path / "s" / "sha256").as_uri()) for uri in jobs[0].images)
    assert jobs[0].state == JobState.SUCCEEDED


def test_a_broken_data_uri_is_a_malformed_row(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "data:image/png;base64,%%%"}) + "\n")
    source = open_source(
        str(manifest), prompting=Prompting.of("q?"), stores=ObjectStores(), stage_to=str(tmp_path / "s")
    )
    with pytest.raises(SourceError, match="line 1: a data: URI whose base64 payload is invalid"):
        source.validate()


def test_a_named_image_column_that_does_not_exist_refuses_the_source(tmp_path: Path) -> None:
    write_mmmu_parquet(tmp_path / "mmmu.parquet")
    with pytest.raises(SourceError, match="no column image_9"):
        open_source(
            str(tmp_path / "mmmu.parquet"),
            stores=ObjectStores(),
            columns=ColumnChoice(image_columns=("image_1", "image_9")),
            stage_to=str(tmp_path / "s"),
        )


def test_column_flags_on_a_uri_manifest_are_refused_rather_than_ignored(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "a.jpg"}) + "\n")
    with pytest.raises(SourceError, match="apply to Parquet with images and to WebDataset"):
        open_source(
            str(manifest),
            prompting=Prompting.of("q"),
            stores=ObjectStores(),
            columns=ColumnChoice(reference_column="answer"),
        )


def test_staging_the_same_image_to_s3_again_keeps_the_first_object(s3_endpoint: str, s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/staged"
    first = Stager(root, stores=ObjectStores(s3_endpoint_url=s3_endpoint)).stage(b"figure bytes")
    again = Stager(root, stores=ObjectStores(s3_endpoint_url=s3_endpoint))  # a fresh process: nothing remembered
    again.stage_ahead([b"figure bytes", b"other bytes"])
    assert again.stage(b"figure bytes") == first  # the conditional PUT was refused (412) and that is fine
    listing = make_s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="staged/")
    assert listing["KeyCount"] == 2
    assert ObjectStores(s3_endpoint_url=s3_endpoint).fetch(first, max_bytes=100) == b"figure bytes"


def test_a_url_list_parquet_names_its_url_column_and_keeps_the_urls_for_the_worker(tmp_path: Path) -> None:
    urls = [f"https://images.example.org/{i}.jpg" for i in range(3)]
    table = pa.table({"url": urls, "caption": [f"caption {i}" for i in range(3)], "width": [64, 65, 66]})
    pq.write_table(table, tmp_path / "laion.parquet")
    columns = ColumnChoice(image_columns=("url",), question_column="caption")
    source = open_source(
        str(tmp_path / "laion.parquet"), stores=ObjectStores(), columns=columns, stage_to=str(tmp_path / "s")
    )
    source.validate()
    specs = list(source.specs())
    assert [(s.images, s.question, s.meta) for s in specs] == [
        ((url,), f"caption {i}", {"width": 64 + i}) for i, url in enumerate(urls)
    ]
    assert not (tmp_path / "s").exists()  # nothing embedded, nothing staged
