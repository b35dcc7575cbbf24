"""`export --format sft|internvl --out DIR`: a dataset folder that trainers load as it is, checked on runs
from every kind of source (tests/integration/training_runs.py) with the consumers' own rules: images
named by paths that `Image.open` (LLaMA-Factory, joined to `dataset_dir`) and InternVL (`os.path.join(root,
path)`) open, one `<image>` per image, the system turn, the row's own id, one schema across runs, the
meta files; and the filters that distillation needs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

import vlmbatch.producer.cli.outputs  # noqa: F401  (registers export)
from tests.fixtures.bad_images import exif_rotated_jpeg, good_jpeg
from tests.integration.training_runs import (
    RUNS,
    SYSTEM_PROMPT,
    folder_run,
    graded_run,
    mmmu_run,
    run_source,
    system_run,
)
from vlmbatch.media.http import HttpOptions
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.cli import cli
from vlmbatch.producer.reports.dataset import DatasetOptions
from vlmbatch.producer.reports.export import ExportFilter, ExportReport, export_run
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.schema.ledger.tables import Run

IMAGE_TOKEN = "<image>"
# InternVL's multi-image path (internvl_chat_finetune.py): the image list's length is what `<image>`
# tokens are counted against; a single image given as a string gets `<image>\n` prepended when absent.
RECORD_KEYS = [
    "custom_id", "source_images", "run", "run_id", "job_id", "attempt_id", "sample_index", "finish_reason",
    "trace_closed", "graded", "correct", "valid", "completion_tokens",
]  # fmt: skip


def _export(
    sessions: sessionmaker[Session],
    run: Run,
    fmt: str,
    out: Path,
    options: DatasetOptions | None = None,
    **selection: Any,
) -> tuple[ExportReport, list[dict[str, Any]]]:
    report = export_run(
        sessions,
        run=run,
        fmt=fmt,  # type: ignore[arg-type]
        out=out,
        selection=ExportFilter(**selection),
        store=ObjectStores(s3_endpoint_url=None),
        dataset=options,
    )
    records = [json.loads(line) for shard in report.shards for line in shard.read_text(encoding="utf-8").splitlines()]
    assert report.rows == len(records)
    return report, records


def _internvl_image_count_ok(record: dict[str, Any]) -> bool:
    """InternVL's rule: as many `<image>` in the conversation as images in the record."""
    text = "".join(turn["value"] for turn in record["conversations"])
    return text.count(IMAGE_TOKEN) == len(record["image"])


@pytest.mark.parametrize("kind", list(RUNS))
def test_every_record_names_its_images_by_paths_that_the_trainers_open(
    sqlite_url: str, tmp_path: Path, kind: str
) -> None:
    sessions, run = RUNS[kind](sqlite_url, tmp_path)
    out = tmp_path / "sft"
    report, records = _export(sessions, run, "sft", out)
    assert records and report.skipped == 0
    for record in records:
        assert list(record) == ["messages", "images", "id", *RECORD_KEYS]
        text = "".join(message["content"] for message in record["messages"])
        assert text.count(IMAGE_TOKEN) == len(record["images"]) == len(record["source_images"])
        for path in record["images"]:
            assert "://" not in path and not os.path.isabs(path)
            with Image.open(os.path.join(out, path)) as image:  # LLaMA-Factory: media_dir (= dataset_dir) + path
                image.load()
    _, internvl = _export(sessions, run, "internvl", tmp_path / "internvl")
    meta = json.loads((tmp_path / "internvl" / "internvl_meta.json").read_text())
    [entry] = meta.values()
    assert entry["length"] == len(internvl) == len(records)
    assert entry["annotation"].endswith("jsonl") and entry["repeat_time"] == 1  # InternVL asserts the suffix
    for record in internvl:
        assert list(record) == ["id", "image", "conversations", *RECORD_KEYS]
        assert isinstance(record["image"], list) and _internvl_image_count_ok(record)
        for path in record["image"]:
            assert os.path.isfile(os.path.join(entry["root"], path))


def test_each_image_is_written_once_named_by_its_content_hash_and_local_files_are_hard_links(
    sqlite_url: str, tmp_path: Path
) -> None:
    sessions, run = folder_run(sqlite_url, tmp_path)
    out = tmp_path / "sft"
    report, records = _export(sessions, run, "sft", out)
    files = sorted(p for p in (out / "images").rglob("*") if p.is_file())
    assert len(files) == report.images_written == 3
    for path in files:
        assert path.stem == hashlib.sha256(path.read_bytes()).hexdigest()
    by_source = {record["source_images"][0].rsplit("/", 1)[-1]: out / record["images"][0] for record in records}
    for name in ("a.jpg", "b.png"):  # hard links, not copies
        assert os.stat(by_source[name]).st_ino == os.stat(tmp_path / "folder" / name).st_ino
    # Again: nothing new is written, the same names come back.
    again, same = _export(sessions, run, "sft", out)
    assert again.images_written == 0 and same == records


def test_an_exif_rotated_image_is_written_as_the_model_saw_it(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = folder_run(sqlite_url, tmp_path)
    _, records = _export(sessions, run, "sft", tmp_path / "sft")
    [rotated] = [r for r in records if r["source_images"][0].endswith("rotated.jpg")]
    with Image.open(tmp_path / "sft" / rotated["images"][0]) as written:
        stored = Image.open(tmp_path / "folder" / "rotated.jpg")
        assert stored.size == (40, 20) and written.size == (20, 40)  # the EXIF orientation is applied
        assert written.format == "PNG"
    assert exif_rotated_jpeg() == (tmp_path / "folder" / "rotated.jpg").read_bytes()


def test_the_system_prompt_is_the_first_turn_of_every_record(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = system_run(sqlite_url, tmp_path)
    _, sft = _export(sessions, run, "sft", tmp_path / "sft")
    _, internvl = _export(sessions, run, "internvl", tmp_path / "internvl")
    assert len(sft) == len(internvl) == 2
    assert all(r["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT, "reasoning_content": ""} for r in sft)
    assert all(r["conversations"][0] == {"from": "system", "value": SYSTEM_PROMPT} for r in internvl)


def test_a_batch_lines_own_system_message_and_custom_id_reach_the_records(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = RUNS["openai-n2"](sqlite_url, tmp_path)
    _, sft = _export(sessions, run, "sft", tmp_path / "sft")
    assert len(sft) == 6  # three lines, n = 2
    assert sorted({r["custom_id"] for r in sft}) == ["req-0", "req-1", "req-2"]
    for record in sft:
        system, user, _ = record["messages"]
        assert system["content"] == "Answer in one word."
        # The image where the line placed it, between its two text parts.
        assert user["content"].endswith(":\n<image>\nWhat is it?")


def test_mmmu_rows_keep_one_image_token_per_image_at_its_placeholder_and_their_own_id(
    sqlite_url: str, tmp_path: Path
) -> None:
    sessions, run = mmmu_run(sqlite_url, tmp_path)
    _, sft = _export(sessions, run, "sft", tmp_path / "sft")
    _, internvl = _export(sessions, run, "internvl", tmp_path / "internvl")
    assert (
        sorted(r["id"] for r in sft) == sorted(r["id"] for r in internvl) == [f"validation_Art_{i}" for i in range(3)]
    )
    for record in internvl:
        human = record["conversations"][0]["value"]
        assert human.startswith(IMAGE_TOKEN) and "<image 1>" not in human and "Image-1:" not in human
        assert _internvl_image_count_ok(record)
    for record in sft:
        user = record["messages"][0]["content"]
        assert user.count(IMAGE_TOKEN) == len(record["images"]) and "<image 1>" not in user


def test_a_webdataset_samples_key_is_the_records_id(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = RUNS["webdataset"](sqlite_url, tmp_path)
    _, records = _export(sessions, run, "sft", tmp_path / "sft")
    assert {r["id"] for r in records} == {f"{n:09d}" for n in (1, 3, 4, 6, 7, 8)}  # 2 is corrupt, 5 has no image


def test_graded_and_ungraded_exports_load_together_in_one_load_dataset(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sessions, graded = graded_run(sqlite_url, tmp_path)
    _, ungraded = system_run(sqlite_url, tmp_path)
    files: list[str] = []
    for fmt in ("sft", "internvl"):
        shards = []
        for run in (ungraded, graded):
            report, _ = _export(sessions, run, fmt, tmp_path / f"{fmt}-{run.name}")
            shards += [str(p) for p in report.shards]
        for order in (shards, shards[::-1]):
            cache = tmp_path / f"cache-{len(files)}"
            files.append(fmt)
            loaded = datasets.load_dataset("json", data_files=order, split="train", cache_dir=str(cache))
            assert len(loaded) == 2 + 6
            assert sorted(loaded["correct"]) == [False] * 5 + [True] * 3
            assert sorted(loaded["graded"]) == [False] * 2 + [True] * 6


def test_dataset_info_and_provenance_describe_the_folder(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = system_run(sqlite_url, tmp_path)
    out = tmp_path / "sft"
    _export(sessions, run, "sft", out)
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {
        "vlmbatch_system": {
            "file_name": "records",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }
    provenance = json.loads((out / "provenance.json").read_text())
    [entry] = provenance["runs"]
    assert (entry["model"], entry["system_prompt"]) == ("fake-model", SYSTEM_PROMPT)
    assert entry["sampling"]["samples"] == 1 and entry["vllm_version"] is None


def test_shards_image_dir_and_image_root(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = graded_run(sqlite_url, tmp_path)
    report, records = _export(sessions, run, "sft", tmp_path / "a", DatasetOptions(shard_size=4))
    assert [len(p.read_text().splitlines()) for p in report.shards] == [4, 2]
    elsewhere = tmp_path / "pictures"
    _, records = _export(sessions, run, "sft", tmp_path / "b", DatasetOptions(images_dir=elsewhere))
    assert all(path.startswith("../pictures/") for r in records for path in r["images"])
    assert all((tmp_path / "b" / path).is_file() for r in records for path in r["images"])
    report, records = _export(sessions, run, "sft", tmp_path / "c", DatasetOptions(image_root=tmp_path))
    assert report.images_written == 0 and not (tmp_path / "c" / "images").exists()
    assert sorted({p for r in records for p in r["images"]}) == ["g0.jpg", "g1.jpg", "g2.jpg"]


def test_an_image_outside_the_image_root_or_gone_is_left_out_and_reported(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = graded_run(sqlite_url, tmp_path)
    (tmp_path / "g1.jpg").unlink()
    report, _ = _export(sessions, run, "sft", tmp_path / "out")
    assert (report.rows, report.skipped) == (4, 2)
    assert all("g1.jpg" in line for line in report.skipped_shown)
    elsewhere = tmp_path / "root"
    elsewhere.mkdir()
    report, _ = _export(sessions, run, "sft", tmp_path / "out2", DatasetOptions(image_root=elsewhere))
    assert (report.rows, report.skipped) == (0, 6)


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ({}, 6),
        ({"one_per_job": "first"}, 3),
        ({"one_per_job": "best"}, 3),
        ({"finish": ("length",)}, 0),
        ({"finish": ("stop",)}, 6),
        ({"min_trace_tokens": 1000}, 0),
        ({"max_trace_tokens": 1}, 0),
    ],
)
def test_filters_apply_to_the_training_formats(
    sqlite_url: str, tmp_path: Path, selection: dict[str, Any], expected: int
) -> None:
    sessions, run = graded_run(sqlite_url, tmp_path)
    _, records = _export(sessions, run, "sft", tmp_path / "out", **selection)
    assert len(records) == expected
    if selection.get("one_per_job") == "best":
        assert all(r["correct"] for r in records)  # each job has a correct sample (answers cycle A, B)
    if selection.get("one_per_job") == "first":
        assert [r["sample_index"] for r in records] == [0, 0, 0]


def test_the_command_line_writes_a_folder_and_refuses_misuse_before_writing(sqlite_url: str, tmp_path: Path) -> None:
    graded_run(sqlite_url, tmp_path)
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    runner = CliRunner()
    out = tmp_path / "ds"
    done = runner.invoke(cli, ["export", "graded", "--format", "sft", "--out", str(out), "--shard-size", "5"], env=env)
    assert done.exit_code == 0, done.output
    assert "wrote 6 samples in 2 files and 3 new images" in done.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for args in (
        ["--format", "sft", "--out", str(foreign)],
        ["--format", "jsonl", "--out", str(tmp_path / "x.jsonl"), "--shard-size", "3"],
        ["--format", "sft", "--out", str(tmp_path / "y"), "--images-dir", "a", "--image-root", str(tmp_path)],
        ["--format", "sft", "--out", str(tmp_path / "z"), "--finish", "stop,bogus"],
        ["--format", "jsonl", "--out", str(out)],
    ):
        refused = runner.invoke(cli, ["export", "graded", *args], env=env)
        assert refused.exit_code == 2, (args, refused.output)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name in ("x.jsonl", "y", "z")) == []
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_an_image_changed_since_the_worker_read_it_is_reported_not_exported(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = folder_run(sqlite_url, tmp_path)
    jsonl = tmp_path / "all.jsonl"
    export_run(sessions, run=run, fmt="jsonl", out=jsonl)
    recorded = {r["images"][0]: r["image_hashes"] for r in map(json.loads, jsonl.read_text().splitlines())}
    source = tmp_path / "folder" / "a.jpg"
    assert recorded[source.as_uri()] == [hashlib.sha256(source.read_bytes()).hexdigest()]  # the worker's record
    source.write_bytes(good_jpeg(40, 30, seed=77))  # edited in place after the run
    report, records = _export(sessions, run, "sft", tmp_path / "sft")
    assert (report.rows, report.skipped) == (2, 1)
    [reason] = report.skipped_shown
    assert "a.jpg changed since the worker read it" in reason
    assert all(not r["source_images"][0].endswith("a.jpg") for r in records)


def test_s3_objects_are_copied_into_the_folder(
    sqlite_url: str, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    from tests.conftest import fill_bucket

    images = {f"set/{i}.jpg": good_jpeg(30 + i, 20, seed=i) for i in range(3)}
    fill_bucket(s3_endpoint, s3_bucket, images)
    source = open_source(
        f"s3://{s3_bucket}/set/", prompting=Prompting.of("What?"), stores=ObjectStores(s3_endpoint_url=s3_endpoint)
    )
    sessions, run = run_source(sqlite_url, source, "s3", worker_settings={"s3_endpoint_url": s3_endpoint})
    report = export_run(
        sessions,
        run=run,
        fmt="sft",
        out=tmp_path / "sft",
        selection=ExportFilter(),
        store=ObjectStores(s3_endpoint_url=s3_endpoint),
    )
    records = [json.loads(line) for line in report.shards[0].read_text().splitlines()]
    assert (report.rows, report.images_written) == (3, 3)
    for record in records:
        key = record["source_images"][0].split(f"s3://{s3_bucket}/", 1)[1]
        assert (tmp_path / "sft" / record["images"][0]).read_bytes() == images[key]


def test_http_images_are_copied_into_the_folder(sqlite_url: str, tmp_path: Path) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "www"
    served.mkdir()
    for i in range(2):
        (served / f"{i}.jpg").write_bytes(good_jpeg(30 + i, 20, seed=i))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        manifest = tmp_path / "urls.jsonl"
        manifest.write_text("".join(json.dumps({"image": f"{base}/{i}.jpg"}) + "\n" for i in range(2)))
        source = open_source(str(manifest), prompting=Prompting.of("What?"), stores=ObjectStores())
        sessions, run = run_source(sqlite_url, source, "http", worker_settings={"http_allow_private": True})
        store = ObjectStores(s3_endpoint_url=None, http=HttpOptions(allow_private=True))
        report = export_run(sessions, run=run, fmt="sft", out=tmp_path / "sft", selection=ExportFilter(), store=store)
    finally:
        server.shutdown()
    records = [json.loads(line) for line in report.shards[0].read_text().splitlines()]
    assert (report.rows, report.images_written) == (2, 2)
    for record in records:
        name = record["source_images"][0].rsplit("/", 1)[1]
        assert (tmp_path / "sft" / record["images"][0]).read_bytes() == (served / name).read_bytes()
