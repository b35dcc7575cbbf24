"""Every exported `custom_id` names one job (issue 29, L7): a manifest's (or WebDataset `.json`'s)
`custom_id` column is free text that nothing keeps unique, and a row may call itself what another job's
derived id is (`job-<id>`). The first job in the export keeps an id; a later one is renamed `job-<id>`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.reports.export import ExportFilter, export_run
from vlmbatch.schema.contracts.models import RowReject
from vlmbatch.schema.contracts.states import TERMINAL_STATES, JobState
from vlmbatch.schema.ledger.rejects import record_rejects
from vlmbatch.schema.ledger.tables import Job, Run, utcnow


def _run_with_repeated_custom_ids(url: str, tmp_path: Path) -> tuple[sessionmaker[Session], Run, dict[str, int]]:
    """Jobs `first` and `second` share the manifest's custom_id `dup`; `plain` has none (so `job-<id>`);
    `squatter`, a failed job added after them, calls itself `job-<plain's id>`; a line rejected at submit
    (a later submit's) says `dup` too."""
    rows: list[dict[str, Any]] = [
        {"image": "a.jpg", "custom_id": "dup", "name": "first"},
        {"image": "b.jpg", "custom_id": "dup", "name": "second"},
        {"image": "c.jpg", "name": "plain"},
    ]
    for seed, name in enumerate("abc"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg(32, 32, seed=seed))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in rows))
    with running_pipeline(settings_for(url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, question="What is shown?", samples=2)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        ids = {(job.meta or {})["name"]: job.id for job in session.scalars(select(Job).where(Job.run_id == run_id))}
    with sessions() as session, session.begin():
        squatter = Job(
            run_id=run_id,
            input_key="squatter",
            images=[(tmp_path / "a.jpg").as_uri()],
            question="What is shown?",
            meta={"custom_id": f"job-{ids['plain']}", "name": "squatter"},
            state=JobState.FAILED.value,
            error_type="input.unreadable",
            finished_at=utcnow(),
        )
        session.add(squatter)
        session.flush()
        ids["squatter"] = squatter.id
        record_rejects(session, run_id=run_id, rejects=[RowReject(where="line 3", reason="bad", custom_id="dup")])
    with sessions() as session:
        return sessions, session.get_one(Run, run_id), ids


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_openai_export_names_each_job_once_when_a_manifest_repeats_a_custom_id(
    sqlite_url: str, tmp_path: Path
) -> None:
    from openai.types import BatchError
    from openai.types.chat import ChatCompletion

    sessions, run, ids = _run_with_repeated_custom_ids(sqlite_url, tmp_path)
    out = tmp_path / "out" / "o.jsonl"
    report = export_run(sessions, run=run, fmt="openai", out=out, selection=ExportFilter(states=tuple(TERMINAL_STATES)))
    outputs, errors = _lines(out), _lines(report.errors_path or out)
    for line in outputs:
        ChatCompletion.model_validate(line["response"]["body"])
    for line in errors:
        BatchError.model_validate(line["error"])
    named = {line["custom_id"]: line["id"] for line in outputs + errors}
    assert len(named) == len(outputs) + len(errors) == 5  # no id twice across the two files
    assert named == {
        "dup": f"batch_req_{run.id}_{ids['first']}",  # the first job keeps the row's own id
        f"job-{ids['second']}": f"batch_req_{run.id}_{ids['second']}",  # the repeat is renamed
        f"job-{ids['plain']}": f"batch_req_{run.id}_{ids['plain']}",
        # a row's id that is another job's derived one
        f"job-{ids['squatter']}": f"batch_req_{run.id}_{ids['squatter']}",
        "rejected-line_3": f"batch_req_{run.id}_rejected_line_3",  # a rejected line's, taken by a job
    }


def test_the_training_export_gives_one_custom_id_per_job_and_the_same_to_each_of_its_samples(
    sqlite_url: str, tmp_path: Path
) -> None:
    sessions, run, ids = _run_with_repeated_custom_ids(sqlite_url, tmp_path)
    report = export_run(sessions, run=run, fmt="sft", out=tmp_path / "sft", store=ObjectStores(s3_endpoint_url=None))
    records = [json.loads(line) for shard in report.shards for line in shard.read_text(encoding="utf-8").splitlines()]
    by_job: dict[int, set[str]] = {}
    for record in records:
        by_job.setdefault(record["job_id"], set()).add(record["custom_id"])
    renamed, plain = f"job-{ids['second']}", f"job-{ids['plain']}"
    assert by_job == {ids["first"]: {"dup"}, ids["second"]: {renamed}, ids["plain"]: {plain}}
    assert len(records) == 6  # two samples a job, both under the job's one id
