"""`export --format parquet --join-source`: the annotations back onto the dataset, one row per source row in
source order, with the source's columns and one answer column per question; to a folder or through the
object store (moto over HTTP), in parts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from click.testing import CliRunner

import vlmbatch.producer.cli.outputs  # noqa: F401  (registers export)
from tests.fixtures.bad_images import good_jpeg
from tests.integration.training_runs import mmmu_run, run_source, webdataset_run
from vlmbatch.media.stores import ObjectStores, S3Objects, make_s3_client
from vlmbatch.producer.cli import cli
from vlmbatch.producer.reports.export import ExportFilter, export_run
from vlmbatch.producer.reports.joined import JoinOptions, export_joined
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.schema.contracts.states import TERMINAL_STATES


def _two_question_run(url: str, tmp: Path, images: int = 5) -> Any:
    folder = tmp / "imgs"
    folder.mkdir()
    for i in range(images):
        (folder / f"{i:02d}.jpg").write_bytes(good_jpeg(30 + i, 20, seed=i))
    source = open_source(str(folder), prompting=Prompting(questions=("One?", "Two?")), stores=ObjectStores())
    return run_source(url, source, "two-questions", samples=2)


def _rows(files: list[str]) -> list[dict[str, Any]]:
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def test_one_row_per_source_row_in_order_with_an_answer_column_per_question(database_url: str, tmp_path: Path) -> None:
    sessions, run = _two_question_run(database_url, tmp_path)  # both submit paths number the rows
    report = export_joined(
        sessions,
        run=run,
        out=str(tmp_path / "joined"),
        selection=ExportFilter(),
        options=JoinOptions(extras=("trace", "finish", "correct"), shard_rows=2),
    )
    assert (report.rows, report.questions, len(report.files)) == (5, 2, 3)  # 2 + 2 + 1 rows
    rows = _rows(report.files)
    assert [r["row"] for r in rows] == list(range(5))
    assert [r["images"][0].rsplit("/", 1)[-1] for r in rows] == [f"{i:02d}.jpg" for i in range(5)]
    export_run(sessions, run=run, fmt="jsonl", out=tmp_path / "all.jsonl")
    first_samples = {
        (s["images"][0], s["question"]): s
        for s in map(json.loads, (tmp_path / "all.jsonl").read_text().splitlines())
        if s["sample_index"] == 0
    }
    for row in rows:
        assert (row["question_1"], row["question_2"]) == ("One?", "Two?")
        for n, question in ((1, "One?"), (2, "Two?")):
            sample = first_samples[(row["images"][0], question)]
            assert row[f"answer_{n}"] == sample["answer"] and row[f"trace_{n}"] == sample["reasoning"]
            assert (row[f"finish_{n}"], row[f"state_{n}"], row[f"correct_{n}"]) == ("stop", "succeeded", None)


def test_an_mmmu_parquet_keeps_its_own_columns_and_our_answer_does_not_clobber_its_answer(
    sqlite_url: str, tmp_path: Path
) -> None:
    sessions, run = mmmu_run(sqlite_url, tmp_path)
    report = export_joined(
        sessions, run=run, out=str(tmp_path / "joined"), selection=ExportFilter(), options=JoinOptions()
    )
    rows = _rows(report.files)
    assert [r["id"] for r in rows] == [f"validation_Art_{i}" for i in range(3)]
    assert [r["answer"] for r in rows] == ["A", "C", "D"]  # the source's own column
    assert all(r["vlmbatch_answer"] and r["vlmbatch_state"] == "succeeded" for r in rows)
    assert [json.loads(r["options"]) for r in rows] == [["A", "B", "C", "D"]] * 3  # a text column, as stored


def test_a_webdataset_run_keeps_each_samples_key_and_failed_samples_have_no_answer(
    sqlite_url: str, tmp_path: Path
) -> None:
    sessions, run = webdataset_run(sqlite_url, tmp_path)
    states = tuple(TERMINAL_STATES)
    report = export_joined(
        sessions, run=run, out=str(tmp_path / "j"), selection=ExportFilter(states=states), options=JoinOptions()
    )
    rows = _rows(report.files)
    assert [r["key"] for r in rows] == [f"{n:09d}" for n in (1, 2, 3, 4, 6, 7, 8)]  # 5 has no image
    broken = rows[1]
    assert (broken["state"], broken["answer"]) == ("failed", None)
    assert all(r["answer"] for r in rows if r["key"] != "000000002")


def test_joined_parts_go_to_s3_through_the_object_store(
    sqlite_url: str, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    sessions, run = _two_question_run(sqlite_url, tmp_path)
    out = f"s3://{s3_bucket}/annotations/run-1/"
    report = export_joined(
        sessions,
        run=run,
        out=out,
        selection=ExportFilter(),
        options=JoinOptions(shard_rows=3),
        s3=S3Objects(s3_endpoint),
    )
    assert report.files == [f"{out}part-00000.parquet", f"{out}part-00001.parquet"]
    client = make_s3_client(s3_endpoint)
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="annotations/run-1/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "annotations/run-1/part-00000.parquet",
        "annotations/run-1/part-00001.parquet",
    ]
    rows = []
    for key in sorted(o["Key"] for o in listed):
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        rows += pq.read_table(io.BytesIO(body)).to_pylist()
    assert [r["row"] for r in rows] == list(range(5))
    assert not list(tmp_path.glob("**/*.partial"))


def test_a_large_part_is_uploaded_in_several_parts(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    big = tmp_path / "big.parquet"
    big.write_bytes(bytes(range(256)) * (6 * 4096 + 7))  # ~6 MiB: two 5 MiB parts
    S3Objects(s3_endpoint).upload_file(str(big), f"s3://{s3_bucket}/big", part_bytes=5 << 20)
    head = make_s3_client(s3_endpoint).head_object(Bucket=s3_bucket, Key="big")
    assert head["ContentLength"] == big.stat().st_size
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload's ETag counts its parts


def test_join_source_from_the_command_line_and_its_misuse(sqlite_url: str, tmp_path: Path) -> None:
    _two_question_run(sqlite_url, tmp_path)
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    runner = CliRunner()
    out = tmp_path / "joined"
    done = runner.invoke(
        cli,
        [
            "export",
            "two-questions",
            "--format",
            "parquet",
            "--join-source",
            "--join-columns",
            "trace",
            "--out",
            str(out),
        ],
        env=env,
    )
    assert done.exit_code == 0, done.output
    assert "wrote 5 source rows (2 question(s) each) in 1 files" in done.output
    assert "trace_2" in pq.read_schema(out / "part-00000.parquet").names
    for args in (
        ["--format", "jsonl", "--join-source", "--out", str(tmp_path / "a")],
        ["--format", "parquet", "--join-source", "--join-columns", "bogus", "--out", str(tmp_path / "b")],
    ):
        refused = runner.invoke(cli, ["export", "two-questions", *args], env=env)
        assert refused.exit_code == 2, (args, refused.output)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_adjacent_rows_of_one_image_with_their_own_questions_stay_two_rows(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(good_jpeg(30, 20, seed=1))
    manifest = tmp_path / "vqa.jsonl"
    rows = [{"image": "a.jpg", "question": "Is it red?"}, {"image": "a.jpg", "question": "Is it round?"}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = open_source(str(manifest), stores=ObjectStores())
    sessions, run = run_source(database_url, source, "vqa")
    report = export_joined(sessions, run=run, out=str(tmp_path / "j"), selection=ExportFilter(), options=JoinOptions())
    joined = _rows(report.files)
    assert [(r["row"], r["question"]) for r in joined] == [(0, "Is it red?"), (1, "Is it round?")]
    assert all(r["answer"] for r in joined)
