"""`vlmbatch export`: the standing samples of a run as JSONL, typed Parquet, SFT and InternVL chat records, each
loadable with `datasets.load_dataset`, and the OpenAI Batch output and error files (checked with the `openai`
SDK's classes); filtered by job state, grade and trace length, in flat memory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, literal, select, true, union_all, update
from sqlalchemy.orm import Session, sessionmaker

import vlmbatch.producer.cli.outputs  # noqa: F401  (registers export and stats)
from tests.fixtures.bad_images import good_jpeg, truncated_jpeg
from tests.integration.ledger_helpers import ledger
from tests.integration.pipeline_helpers import jobs_by_name, running_pipeline, settings_for, submit_folder
from tests.integration.test_stats import build_graded_run
from tests.processes import vlmbatch_json
from vlmbatch.media.local_roots import local_path
from vlmbatch.producer.cli import cli
from vlmbatch.producer.reports.export import ExportFilter, ExportFormat, export_run, parquet_schema
from vlmbatch.producer.reports.training import sft_record
from vlmbatch.schema.contracts.errors import RunNotFound
from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
from vlmbatch.schema.contracts.states import TERMINAL_STATES, JobState
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.resubmit import resubmit_jobs
from vlmbatch.schema.ledger.runs import create_or_reuse_run, get_run
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Run, utcnow

QUESTION = "What is shown?"
TERMINAL = sorted(TERMINAL_STATES)
JSONL_KEYS = [
    "run",
    "run_id",
    "job_id",
    "attempt_id",
    "sample_index",
    "images",
    "question",
    "system",
    "reference",
    "metadata",
    "state",
    "answer",
    "reasoning",
    "raw_text",
    "finish_reason",
    "trace_closed",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "answer_tokens",
    "extracted_answer",
    "correct",
    "valid",
    "grader",
    "grader_version",
    "thinking_capped",
    "gpu_seconds",
    "image_hashes",
    "timings",
]
TIMING_KEYS = ["queue_wait_s", "fetch_s", "decode_s", "generation_s", "first_token_s"]


def _manifest_run(url: str, tmp_path: Path) -> tuple[sessionmaker[Session], Run]:
    """Three jobs through the fake-engine pipeline, three samples each: a two-image job with a reference,
    a one-image job with a reference, and one without; every job carries metadata."""
    rows: list[dict[str, Any]] = [
        {"image": ["a.jpg", "b.jpg"], "reference": "A", "source": "set-1", "page": 1},
        {"image": "c.jpg", "reference": "B", "source": "set-1", "page": 2},
        {"image": "d.jpg", "source": "set-2", "page": 3},
    ]
    for seed, name in enumerate("abcd"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg(32 + 8 * seed, 32, seed=seed))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in rows))
    with running_pipeline(settings_for(url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, question=QUESTION, samples=3)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        return sessions, session.get_one(Run, run_id)


def _export(
    sessions: sessionmaker[Session], run: Run, fmt: ExportFormat, out: Path, **selection: Any
) -> list[dict[str, Any]]:
    report = export_run(sessions, run=run, fmt=fmt, out=out, selection=ExportFilter(**selection))
    assert report.path == out and not out.with_name(out.name + ".partial").exists()
    if fmt == "parquet":
        records: list[dict[str, Any]] = pq.read_table(out).to_pylist()
    else:
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert report.rows == len(records)
    return records


def _load_dataset(builder: str, path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    cache = tmp_path / "hf-datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache))


def _standing(sessions: sessionmaker[Session], run_id: int) -> dict[tuple[int, int], tuple[Job, Attempt, Result]]:
    """(job id, sample index) → the job, its current attempt and that attempt's result, from the ledger."""
    with sessions() as session:
        rows = session.execute(
            select(Job, Attempt, Result)
            .join(Attempt, Attempt.id == Job.current_attempt_id)
            .join(Result, Result.attempt_id == Attempt.id)
            .where(Job.run_id == run_id)
        ).tuples()
        return {(job.id, result.sample_index): (job, attempt, result) for job, attempt, result in rows}


def _letters(records: list[dict[str, Any]]) -> set[str]:
    """`A0` for sample 0 of job A of the graded run (its letter is in the job's metadata)."""
    return {f"{r['metadata']['letter']}{r['sample_index']}" for r in records}


def test_jsonl_holds_every_field_of_each_standing_sample_and_loads_with_datasets(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, run = _manifest_run(sqlite_url, tmp_path)
    records = _export(sessions, run, "jsonl", tmp_path / "out" / "samples.jsonl")

    ledger_rows = _standing(sessions, run.id)
    assert len(records) == len(ledger_rows) == 9
    assert [(r["job_id"], r["sample_index"]) for r in records] == sorted(ledger_rows)  # by job, then sample
    for record in records:
        job, attempt, result = ledger_rows[(record["job_id"], record["sample_index"])]
        assert list(record) == JSONL_KEYS
        assert record == {
            "run": run.name,
            "run_id": run.id,
            "job_id": job.id,
            "attempt_id": attempt.id,
            "sample_index": result.sample_index,
            "images": job.images,
            "question": QUESTION,
            "system": None,
            "reference": job.reference,
            "metadata": job.meta,
            "state": "succeeded",
            "answer": result.answer,
            "reasoning": result.reasoning,
            "raw_text": result.raw_text,
            "finish_reason": "stop",
            "trace_closed": True,
            "prompt_tokens": attempt.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "reasoning_tokens": result.reasoning_tokens,
            "answer_tokens": result.answer_tokens,
            "extracted_answer": None,
            "correct": None,
            "valid": None,
            "grader": None,
            "grader_version": None,
            "thinking_capped": None,
            "gpu_seconds": attempt.gpu_seconds,
            "image_hashes": attempt.image_hashes,
            "timings": {key: getattr(attempt, key) for key in TIMING_KEYS},
        }
        assert record["prompt_tokens"] and record["timings"]["generation_s"] is not None
        assert record["image_hashes"] == [
            hashlib.sha256(local_path(uri).read_bytes()).hexdigest() for uri in job.images
        ]
    two_images = [r for r in records if len(r["images"]) == 2]
    assert len(two_images) == 3
    assert [Path(uri).name for uri in two_images[0]["images"]] == ["a.jpg", "b.jpg"]
    assert two_images[0]["reference"] == "A"

    dataset = _load_dataset("json", tmp_path / "out" / "samples.jsonl", tmp_path, monkeypatch)
    assert dataset.column_names == JSONL_KEYS
    assert dataset.to_list() == records


def test_a_manifests_extra_columns_reach_the_export_as_metadata(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = _manifest_run(sqlite_url, tmp_path)
    records = _export(sessions, run, "jsonl", tmp_path / "samples.jsonl")
    by_page = {r["metadata"]["page"]: r["metadata"] for r in records if r["metadata"] is not None}
    assert by_page == {
        1: {"source": "set-1", "page": 1},
        2: {"source": "set-1", "page": 2},
        3: {"source": "set-2", "page": 3},
    }


def test_parquet_has_the_declared_typed_columns_written_in_row_groups_and_loads_with_datasets(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, run = _manifest_run(sqlite_url, tmp_path)
    as_jsonl = _export(sessions, run, "jsonl", tmp_path / "samples.jsonl")
    out = tmp_path / "samples.parquet"
    report = export_run(sessions, run=run, fmt="parquet", out=out, row_group_rows=4)

    schema = pq.read_schema(out)
    assert schema.equals(parquet_schema())
    assert schema.names == JSONL_KEYS
    expected_types = {
        "job_id": pa.int64(),
        "images": pa.list_(pa.string()),
        "metadata": pa.string(),
        "trace_closed": pa.bool_(),
        "reasoning_tokens": pa.int64(),
        "correct": pa.bool_(),
        "valid": pa.bool_(),
        "gpu_seconds": pa.float64(),
        "timings": pa.struct([(key, pa.float64()) for key in TIMING_KEYS]),
    }
    assert {name: schema.field(name).type for name in expected_types} == expected_types
    assert (report.rows, pq.ParquetFile(out).metadata.num_row_groups) == (9, 3)  # 4 + 4 + 1 rows

    # The same values as the JSONL export; metadata travels as JSON text.
    rows = pq.read_table(out).to_pylist()
    assert [{**row, "metadata": row["metadata"] and json.loads(row["metadata"])} for row in rows] == as_jsonl

    dataset = _load_dataset("parquet", out, tmp_path, monkeypatch)
    assert dataset.data.schema.equals(parquet_schema(), check_metadata=False)
    assert dataset.to_list() == rows


def test_parquet_carries_each_jobs_metadata_as_json_text(sqlite_url: str, tmp_path: Path) -> None:
    sessions = ledger(sqlite_url)
    build_graded_run(sessions)
    with sessions() as session:
        run = get_run(session, "graded")
    rows = _export(sessions, run, "parquet", tmp_path / "graded.parquet", only_correct=True)
    assert [json.loads(row["metadata"]) for row in rows] == [{"letter": "A", "page": 0}, {"letter": "F", "page": 5}]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ({}, {"A0", "A1", "B0", "B1", "C0", "C1", "F0"}),
        ({"only_correct": True}, {"A0", "F0"}),
        ({"states": (JobState.SUCCEEDED, JobState.TRUNCATED)}, {"A0", "A1", "B0", "B1", "C0", "C1", "D0", "F0"}),
        ({"states": (JobState.TRUNCATED,)}, {"D0"}),
        ({"states": (JobState.FAILED,)}, set()),
        ({"max_trace_tokens": 30}, {"A0", "A1", "B0"}),
        ({"only_correct": True, "max_trace_tokens": 50}, {"A0"}),
    ],
    ids=["default-succeeded", "only-correct", "succeeded+truncated", "truncated", "failed", "max-trace", "combined"],
)
def test_filters_select_standing_samples_by_job_state_grade_and_trace_length(
    sqlite_url: str, tmp_path: Path, selection: dict[str, Any], expected: set[str]
) -> None:
    sessions = ledger(sqlite_url)
    build_graded_run(sessions)
    with sessions() as session:
        run = get_run(session, "graded")
    assert _letters(_export(sessions, run, "jsonl", tmp_path / "out.jsonl", **selection)) == expected


def test_a_truncated_sample_goes_to_sft_as_the_unclosed_trace_it_was(sqlite_url: str, tmp_path: Path) -> None:
    sessions = ledger(sqlite_url)
    jobs = build_graded_run(sessions)
    with sessions() as session:
        run = get_run(session, "graded")
    [sample] = _export(sessions, run, "jsonl", tmp_path / "t.jsonl", states=(JobState.TRUNCATED,))
    record = sft_record(sample, ["images/d.jpg"])  # type: ignore[arg-type]
    assert record["messages"][1]["content"] == f"<think>\ntrace 0 of job {jobs['D']}"
    assert (record["finish_reason"], record["trace_closed"], record["graded"]) == ("length", False, False)


def test_only_finished_states_can_be_exported() -> None:
    with pytest.raises(ValueError, match="queued"):
        ExportFilter(states=(JobState.SUCCEEDED, JobState.QUEUED))


def test_a_resubmitted_job_exports_only_the_samples_of_its_standing_attempt(sqlite_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(good_jpeg(32, 32, seed=i))
    settings = settings_for(sqlite_url)
    with running_pipeline(settings) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder, samples=2)
        pipeline.feed_run(run_id).result(timeout=30)
    again = jobs_by_name(sessions, run_id)["0.jpg"].id
    with sessions() as session, session.begin():
        assert resubmit_jobs(session, job_ids=[again]) == [again]
    with running_pipeline(settings) as (pipeline, sessions):
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        run = session.get_one(Run, run_id)
        current = {job: attempt for job, attempt in session.execute(select(Job.id, Job.current_attempt_id))}
        second = session.scalar(select(Attempt.id).where(Attempt.job_id == again, Attempt.number == 2))
        results_kept = session.scalar(select(func.count()).select_from(Result))

    records = _export(sessions, run, "jsonl", tmp_path / "out.jsonl")
    assert results_kept == 8  # the first attempt's two samples stay in the ledger as history
    assert len(records) == 6
    assert all(r["attempt_id"] == current[r["job_id"]] for r in records)
    assert [r["attempt_id"] for r in records if r["job_id"] == again] == [second, second]


def _openai_run(url: str, tmp_path: Path) -> tuple[sessionmaker[Session], Run]:
    """Through the fake-engine pipeline, two samples each: two jobs carrying OpenAI `custom_id`s, one
    without (a manifest row), one with an unreadable image (fails), and one cancelled before it ran."""
    rows: list[dict[str, Any]] = [
        {"image": "a.jpg", "custom_id": "request-1"},
        {"image": ["b.jpg", "a.jpg"], "custom_id": "request-2"},
        {"image": "c.jpg"},
        {"image": "broken.jpg", "custom_id": "request-broken"},
    ]
    for seed, name in enumerate("abc"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg(32, 32, seed=seed))
    (tmp_path / "broken.jpg").write_bytes(truncated_jpeg())
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in rows))
    with running_pipeline(settings_for(url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, question=QUESTION, samples=2)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session, session.begin():  # a fifth job, cancelled while queued
        session.add(
            Job(
                run_id=run_id,
                input_key="cancelled",
                images=["file:///x.jpg"],
                question=QUESTION,
                meta={"custom_id": "request-cancelled"},
                state=JobState.CANCELLED.value,
                error_type="cancelled",
                finished_at=utcnow(),
            )
        )
    with sessions() as session:
        return sessions, session.get_one(Run, run_id)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_openai_export_writes_batch_output_and_error_lines_with_each_custom_id_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    from openai.types import BatchError
    from openai.types.chat import ChatCompletion

    sessions, run = _openai_run(sqlite_url, tmp_path)
    out = tmp_path / "out" / "o.jsonl"
    report = export_run(sessions, run=run, fmt="openai", out=out, selection=ExportFilter(states=tuple(TERMINAL)))
    errors_path = tmp_path / "out" / "o.errors.jsonl"
    assert (report.path, report.errors_path, report.rows, report.errors) == (out, errors_path, 3, 2)
    assert not list(out.parent.glob("*.partial"))
    outputs, errors = _read_lines(out), _read_lines(errors_path)
    ledger_rows = _standing(sessions, run.id)
    with sessions() as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.run_id == run.id))}
    derived = next(f"job-{job.id}" for job in jobs.values() if not (job.meta or {}).get("custom_id"))

    custom_ids = [line["custom_id"] for line in outputs + errors]
    assert sorted(custom_ids) == sorted(["request-1", "request-2", derived, "request-broken", "request-cancelled"])
    for line in outputs:
        assert list(line) == ["id", "custom_id", "response", "error"] and line["error"] is None
        response = line["response"]
        assert list(response) == ["status_code", "request_id", "body"] and response["status_code"] == 200
        assert isinstance(response["request_id"], str) and line["id"].startswith("batch_req_")
        completion = ChatCompletion.model_validate(response["body"])
        assert (completion.object, completion.model) == ("chat.completion", run.model)
        job_id = int(line["id"].rsplit("_", 1)[1])
        job = jobs[job_id]
        assert line["custom_id"] == (job.meta or {}).get("custom_id", f"job-{job_id}")
        assert [choice.index for choice in completion.choices] == [0, 1]  # n = 2: two choices in one completion
        for choice in completion.choices:
            _, attempt, result = ledger_rows[(job_id, choice.index)]
            assert choice.finish_reason == "stop"
            assert choice.message.role == "assistant" and choice.message.content == result.answer
            # vLLM's current name, and the older one (extra fields of the SDK's message).
            assert getattr(choice.message, "reasoning") == result.reasoning  # noqa: B009
            assert getattr(choice.message, "reasoning_content") == result.reasoning  # noqa: B009
        usage = completion.usage
        assert usage is not None
        samples = [ledger_rows[(job_id, i)][2] for i in (0, 1)]
        assert usage.prompt_tokens == attempt.prompt_tokens
        assert usage.completion_tokens == sum(s.completion_tokens for s in samples)
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == sum(s.reasoning_tokens or 0 for s in samples)
    by_custom_id = {line["custom_id"]: line for line in errors}
    for line in errors:
        assert list(line) == ["id", "custom_id", "response", "error"] and line["response"] is None
        BatchError.model_validate(line["error"])
        assert set(line["error"]) == {"code", "message"}
    assert by_custom_id["request-broken"]["error"]["code"] == "input.unreadable"
    assert by_custom_id["request-cancelled"]["error"]["code"] == "cancelled"


def test_openai_export_of_a_truncated_job_has_a_length_choice_without_content(sqlite_url: str, tmp_path: Path) -> None:
    from openai.types.chat import ChatCompletion

    sessions = ledger(sqlite_url)
    jobs = build_graded_run(sessions)
    with sessions() as session:
        run = get_run(session, "graded")
    out = tmp_path / "o.jsonl"
    report = export_run(sessions, run=run, fmt="openai", out=out, selection=ExportFilter(states=tuple(TERMINAL)))
    lines = {line["custom_id"]: line for line in _read_lines(out)}
    assert sorted(lines) == sorted(f"job-{jobs[letter]}" for letter in "ABCDF")  # E failed, G still queued
    assert [line["custom_id"] for line in _read_lines(tmp_path / "o.errors.jsonl")] == [f"job-{jobs['E']}"]
    [choice] = ChatCompletion.model_validate(lines[f"job-{jobs['D']}"]["response"]["body"]).choices
    assert (choice.finish_reason, choice.message.content) == ("length", None)
    assert getattr(choice.message, "reasoning_content") == f"trace 0 of job {jobs['D']}"  # noqa: B009
    assert report.rows == 5


def test_openai_export_from_the_command_line(sqlite_url: str, tmp_path: Path) -> None:
    sessions = ledger(sqlite_url)
    build_graded_run(sessions)
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    out, errors = tmp_path / "o.jsonl", tmp_path / "failed.jsonl"
    report = vlmbatch_json(["export", "graded", "--format", "openai", "--out", str(out), "--json"], env)
    assert {k: report[k] for k in ("format", "rows", "errors", "errors_path")} == {
        "format": "openai",
        "rows": 5,
        "errors": 1,
        "errors_path": str(tmp_path / "o.errors.jsonl"),
    }
    runner = CliRunner()
    named = runner.invoke(
        cli, ["export", "graded", "--format", "openai", "--out", str(out), "--errors-out", str(errors)], env=env
    )
    assert named.exit_code == 0, named.output
    assert f"wrote 5 jobs to {out} and 1 failed jobs to {errors} (openai)" in named.output
    assert len(_read_lines(errors)) == 1
    for args in (["--errors-out", str(tmp_path / "r.jsonl")],):
        refused = runner.invoke(
            cli, ["export", "graded", "--format", "openai", "--out", str(tmp_path / "r.jsonl"), *args], env=env
        )
        assert refused.exit_code == 2, refused.output
    wrong_format = runner.invoke(
        cli, ["export", "graded", "--out", str(tmp_path / "r.jsonl"), "--errors-out", str(errors)], env=env
    )
    assert wrong_format.exit_code == 2 and "--errors-out" in wrong_format.output
    assert not (tmp_path / "r.jsonl").exists()


def test_export_by_run_name_or_id_from_the_command_line(sqlite_url: str, tmp_path: Path) -> None:
    sessions = ledger(sqlite_url)
    jobs = build_graded_run(sessions)
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    with sessions() as session:
        run_id = get_run(session, "graded").id

    out = tmp_path / "sft" / "graded.jsonl"
    args = ["--status", "succeeded,truncated", "--only-correct", "--max-trace-tokens", "50", "--json"]
    report = vlmbatch_json(["export", "graded", "--format", "jsonl", "--out", str(out), *args], env)
    assert report == {"run": run_id, "format": "jsonl", "path": str(out), "rows": 1}
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["job_id"], record["sample_index"], record["correct"]) == (jobs["A"], 0, True)

    runner = CliRunner()
    by_id = runner.invoke(cli, ["export", str(run_id), "--out", str(tmp_path / "all.jsonl")], env=env)
    assert by_id.exit_code == 0, by_id.output
    assert f"wrote 7 samples to {tmp_path / 'all.jsonl'} (jsonl)" in by_id.output

    queued = runner.invoke(cli, ["export", "graded", "--out", str(tmp_path / "q.jsonl"), "--status", "queued"], env=env)
    assert queued.exit_code == 2 and "--status" in queued.output
    missing = runner.invoke(cli, ["export", "no-such-run", "--out", str(tmp_path / "m.jsonl")], env=env)
    assert isinstance(missing.exception, RunNotFound)  # main() prints it and exits 2
    assert not (tmp_path / "q.jsonl").exists() and not (tmp_path / "m.jsonl").exists()


# ---- flat memory -------------------------------------------------------------------------------------

LARGE_JOBS = 25_000
LARGE_SAMPLES = 8  # 200,000 result rows
LARGE_IMAGES = 500
TRACE = " ".join(f"step {i}: the region at the left holds a shape." for i in range(8))  # ~380 characters
MAX_GROWTH_MIB = 150
# Exports in a fresh process, so that its peak RSS measures the export alone. pyarrow is loaded before
# the baseline: its libraries are code, not memory that grows with the run.
_EXPORT_CHILD = """
import json, sys
from pathlib import Path
import pyarrow.parquet
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.reports.export import ExportFilter, export_run, parquet_schema
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.contracts.errors import RunNotFound
from vlmbatch.schema.ledger.runs import get_run
from vlmbatch.schema.contracts.states import TERMINAL_STATES

def peak_mib():
    # VmHWM, not ru_maxrss: Linux carries the peak RSS across fork and exec, so ru_maxrss would
    # report at least the size of the test process that started this one.
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

_, sessions = open_ledger(sys.argv[1], auto_migrate=False)
with sessions() as session:
    run = get_run(session, "large")
parquet_schema()
baseline = peak_mib()
states = tuple(TERMINAL_STATES) if sys.argv[3] == "openai" else ExportFilter().states
selection = ExportFilter(states=states)
store = ObjectStores(s3_endpoint_url=None)
if sys.argv[3] == "joined":
    from vlmbatch.producer.reports.joined import JoinOptions, export_joined
    options = JoinOptions(shard_rows=10_000)
    joined = export_joined(sessions, run=run, out=sys.argv[2], selection=selection, options=options)
    measured = {"rows": joined.rows, "files": len(joined.files), "baseline_mib": baseline, "peak_mib": peak_mib()}
else:
    report = export_run(sessions, run=run, fmt=sys.argv[3], out=Path(sys.argv[2]), selection=selection, store=store)
    measured = {"rows": report.rows, "images": report.images_written, "baseline_mib": baseline, "peak_mib": peak_mib()}
print(json.dumps(measured))
"""


RESULT_COLUMNS = (
    "job_id", "attempt_id", "sample_index", "answer", "reasoning", "raw_text", "finish_reason", "trace_closed",
    "completion_tokens", "reasoning_tokens", "answer_tokens", "created_at",
)  # fmt: skip


def _fill_large_run(url: str, images: Path) -> None:
    """LARGE_JOBS succeeded jobs of LARGE_SAMPLES samples each, on LARGE_IMAGES local images (job i reads
    image i mod LARGE_IMAGES). Jobs go in as one Core bulk insert; their attempts and results are
    generated by the database itself (INSERT ... SELECT), in a second or two."""
    images.mkdir()
    for i in range(LARGE_IMAGES):
        (images / f"{i:05d}.jpg").write_bytes(good_jpeg(24, 16, seed=i))
    engine, sessions = open_ledger(url)
    settings = RunSettings(sampling=SamplingSettings(samples=LARGE_SAMPLES))
    run = create_or_reuse_run(sessions, name="large", settings=settings, queue="q", source="test")
    now = utcnow()
    jobs = [
        {
            "run_id": run.id,
            "input_key": f"{i:064x}",
            "images": [(images / f"{i % LARGE_IMAGES:05d}.jpg").as_uri()],
            "question": QUESTION,
            "reference": "B",
            "state": JobState.SUCCEEDED.value,
            "attempt_count": 1,
            "finished_at": now,
        }
        for i in range(LARGE_JOBS)
    ]
    answer = "The answer is B."
    samples = union_all(*(select(literal(s).label("sample_index")) for s in range(LARGE_SAMPLES))).subquery()
    with engine.begin() as connection:
        connection.execute(insert(Job), jobs)
        connection.execute(
            insert(Attempt).from_select(
                ["job_id", "number", "worker", "outcome", "prompt_tokens", "started_at"],
                select(Job.id, literal(1), literal("w"), literal("succeeded"), literal(300), literal(now)),
            )
        )
        connection.execute(update(Job).values(current_attempt_id=Job.id))  # attempt i belongs to job i
        connection.execute(
            insert(Result).from_select(
                list(RESULT_COLUMNS),
                select(
                    Attempt.job_id,
                    Attempt.id,
                    samples.c.sample_index,
                    literal(answer),
                    literal(TRACE),
                    literal(f"{TRACE}</think>{answer}"),
                    literal("stop"),
                    literal(True),
                    literal(110),
                    literal(100),
                    literal(10),
                    literal(now),
                ).select_from(Attempt.__table__.join(samples, true())),
            )
        )
    engine.dispose()


@pytest.mark.parametrize("fmt", ["parquet", "internvl", "openai", "joined"])
def test_exporting_200_000_samples_keeps_memory_flat(sqlite_url: str, tmp_path: Path, fmt: ExportFormat) -> None:
    _fill_large_run(sqlite_url, tmp_path / "images")
    out = tmp_path / f"large.{fmt}"
    child = subprocess.run(
        [sys.executable, "-c", _EXPORT_CHILD, sqlite_url, str(out), fmt],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    growth = measured["peak_mib"] - measured["baseline_mib"]
    assert growth < MAX_GROWTH_MIB, measured
    if fmt == "parquet":
        assert measured["rows"] == LARGE_JOBS * LARGE_SAMPLES
        metadata = pq.ParquetFile(out).metadata
        assert (metadata.num_rows, metadata.num_row_groups) == (200_000, 20)  # streamed, 10,000 rows per group
    elif fmt == "joined":  # one row per job (a row each), in parts of 10,000 rows
        assert (measured["rows"], measured["files"]) == (LARGE_JOBS, 3)
        assert sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("part-*.parquet")) == LARGE_JOBS
    elif fmt == "internvl":  # a dataset folder: the records, and each image written once
        assert (measured["rows"], measured["images"]) == (LARGE_JOBS * LARGE_SAMPLES, LARGE_IMAGES)
        with (out / "records" / "part-00000.jsonl").open(encoding="utf-8") as lines:
            assert sum(1 for _ in lines) == 200_000
        assert len(list((out / "images").rglob("*.jpg"))) == LARGE_IMAGES
    else:  # one line per job, its eight samples as eight choices
        assert measured["rows"] == LARGE_JOBS
        with out.open(encoding="utf-8") as lines:
            counts = {len(json.loads(line)["response"]["body"]["choices"]) for line in lines}
        assert counts == {LARGE_SAMPLES}
        assert out.with_name("large.errors.openai").read_text() == ""


def test_exporting_a_mostly_unfinished_run_reads_only_the_pages_with_results(sqlite_url: str) -> None:
    """20,000 jobs, 4 finished: the export skips the empty windows of job ids instead of querying each
    (2,000 windows at 10 samples a page), so what it costs follows what it exports, not the run's size."""
    from sqlalchemy import event

    from vlmbatch.producer.reports.records import iter_records

    engine, sessions = open_ledger(sqlite_url)
    run = create_or_reuse_run(sessions, name="sparse", settings=RunSettings(), queue="q", source="test")
    now = utcnow()
    finished = {0, 7_000, 13_001, 19_999}
    jobs = [
        {
            "run_id": run.id,
            "input_key": f"{i:064x}",
            "images": [f"s3://bucket/{i}.jpg"],
            "question": QUESTION,
            "state": JobState.SUCCEEDED.value if i in finished else JobState.QUEUED.value,
            "attempt_count": 1 if i in finished else 0,
            "finished_at": now if i in finished else None,
        }
        for i in range(20_000)
    ]
    with engine.begin() as connection:
        connection.execute(insert(Job), jobs)
        done = select(Job.id).where(Job.state == JobState.SUCCEEDED.value)
        connection.execute(
            insert(Attempt).from_select(
                ["job_id", "number", "worker", "outcome", "started_at"],
                select(Job.id, literal(1), literal("w"), literal("succeeded"), literal(now)).where(Job.id.in_(done)),
            )
        )
        connection.execute(
            update(Job)
            .where(Job.id.in_(done))
            .values(current_attempt_id=select(Attempt.id).where(Attempt.job_id == Job.id).scalar_subquery())
        )
        connection.execute(
            insert(Result).from_select(
                list(RESULT_COLUMNS),
                select(
                    Attempt.job_id, Attempt.id, literal(0), literal("B"), literal("t"), literal("t</think>B"),
                    literal("stop"), literal(True), literal(3), literal(2), literal(1), literal(now),
                ),
            )
        )  # fmt: skip
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with sessions() as session:
        stored = get_run(session, "sparse")
    records = list(iter_records(sessions, stored, ExportFilter(), page_rows=10))
    assert len(records) == 4
    reads = [s for s in statements if "results" in s]
    assert len(reads) <= 2 * len(finished) + 1, reads  # a probe and a page per finished job, a last probe


def test_openai_export_takes_the_sample_filters(sqlite_url: str, tmp_path: Path) -> None:
    sessions, run = _openai_run(sqlite_url, tmp_path)
    out = tmp_path / "first.jsonl"
    states = tuple(TERMINAL)
    report = export_run(
        sessions, run=run, fmt="openai", out=out, selection=ExportFilter(states=states, one_per_job="first")
    )
    lines = _read_lines(out)
    assert report.rows == len(lines) == 3 and report.errors == 2
    assert all(len(line["response"]["body"]["choices"]) == 1 for line in lines)  # n = 2, one kept
    none = export_run(
        sessions, run=run, fmt="openai", out=tmp_path / "none.jsonl", selection=ExportFilter(finish=("length",))
    )
    assert none.rows == 0 and _read_lines(tmp_path / "none.jsonl") == []


@pytest.mark.parametrize(("kind", "openai"), [("stop", "stop"), ("length", "length"), ("context", "length"),
                                              ("repetition", "length"), (None, "stop")])  # fmt: skip
def test_openai_finish_reason_maps_each_finish_kind_and_keeps_ours_beside_it(
    sqlite_url: str, tmp_path: Path, kind: str | None, openai: str
) -> None:
    from openai.types.chat import ChatCompletion

    sessions = ledger(sqlite_url)
    jobs = build_graded_run(sessions)
    with sessions() as session, session.begin():
        session.execute(update(Result).where(Result.job_id == jobs["C"]).values(finish_reason=kind))
        run = get_run(session, "graded")
    out = tmp_path / "o.jsonl"
    export_run(sessions, run=run, fmt="openai", out=out, selection=ExportFilter(states=(JobState.SUCCEEDED,)))
    [line] = [line for line in _read_lines(out) if line["custom_id"] == f"job-{jobs['C']}"]
    choices = line["response"]["body"]["choices"]
    assert [(c["finish_reason"], c["vlmbatch_finish_reason"]) for c in choices] == [(openai, kind)] * 2
    ChatCompletion.model_validate(line["response"]["body"])  # still the SDK's shape
