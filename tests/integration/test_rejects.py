"""One bad row never blocks a dataset: by default a row that cannot become a job is recorded as a reject
(its line and reason in the submit report, the ledger, `status` and `export --format rejects`) and the
rest is submitted; `--strict` keeps all-or-nothing; past `--max-rejects` nothing is written. A SOURCE
that yields no job is one line on stderr and exit 2. Both databases for the submit itself; the CLI as a
user types it (fake engine, embedded defaults)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.processes import vlmbatch
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.base import RejectPolicy
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import RunSettings, SubmitReport
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.rejects import iter_rejects
from vlmbatch.schema.ledger.status import run_status
from vlmbatch.schema.ledger.tables import Job, Run
from vlmbatch.worker.transport.publisher import NullPublisher


def _env(tmp_path: Path) -> dict[str, str]:
    return {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home")}


def _manifest(folder: Path, good: int, bad_lines: dict[int, str]) -> Path:
    """`good` rows naming real images; the 1-based lines of `bad_lines` hold the given raw text instead."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for i in range(good + len(bad_lines)):
        number = len(lines) + 1
        if number in bad_lines:
            lines.append(bad_lines[number])
            continue
        (folder / f"{i}.jpg").write_bytes(good_jpeg(20 + i % 7, 20, seed=i))
        lines.append(json.dumps({"image": f"{i}.jpg", "question": f"What is in picture {i}?"}))
    path = folder / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


BAD = {
    3: json.dumps({"image": "../../etc/passwd.jpg", "question": "q"}),
    5: "{not json",
    9: json.dumps({"image": 7, "question": "q"}),
}


def _submit(database_url: str, manifest: Path, policy: RejectPolicy) -> SubmitReport:
    _, sessions = open_ledger(database_url)
    return submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=open_source(str(manifest), stores=ObjectStores()),
        settings=RunSettings(model="m"),
        queue="q",
        run_name="r",
        policy=policy,
    )


def _ledger(database_url: str) -> tuple[int, int]:
    """(runs, jobs) in the ledger."""
    _, sessions = open_ledger(database_url)
    with sessions() as session:
        return len(session.scalars(select(Run)).all()), len(session.scalars(select(Job)).all())


def test_bad_rows_are_recorded_and_the_rest_is_submitted(database_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data", good=20, bad_lines=BAD)
    report = _submit(database_url, manifest, RejectPolicy())
    assert (report.submitted, report.rejected) == (20, 3)
    assert [r.where for r in report.first_rejects] == ["line 3", "line 5", "line 9"]
    assert "leads outside the source's folder" in report.first_rejects[0].reason
    _, sessions = open_ledger(database_url)
    with sessions() as session:
        assert run_status(session, report.run).rejected == 3
    assert [r.where for r in iter_rejects(sessions, report.run)] == ["line 3", "line 5", "line 9"]
    again = _submit(database_url, manifest, RejectPolicy())  # the same source again: nothing new anywhere
    assert (again.submitted, again.skipped, again.rejected) == (0, 20, 3)
    with sessions() as session:
        assert run_status(session, report.run).rejected == 3


def test_strict_refuses_the_whole_submit_naming_every_bad_row(database_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data", good=20, bad_lines=BAD)
    with pytest.raises(SourceError, match="3 malformed row") as refused:
        _submit(database_url, manifest, RejectPolicy(strict=True))
    assert "line 5: invalid JSON" in refused.value.message
    assert _ledger(database_url) == (0, 0)


def test_more_rejects_than_allowed_writes_nothing(database_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data", good=20, bad_lines=BAD)
    with pytest.raises(SourceError, match=r"3 of 23 rows cannot become jobs, more than --max-rejects \(2\)"):
        _submit(database_url, manifest, RejectPolicy(max_rejects=2))
    assert _ledger(database_url) == (0, 0)


def test_the_default_limit_is_a_hundred_rows_or_one_percent(database_url: str, tmp_path: Path) -> None:
    # A misnamed column makes every row bad: 150 rows, no job, more than 100 rejects.
    rows = [json.dumps({"picture": f"{i}.jpg", "question": "q", "image": {"wrong": i}}) for i in range(150)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    with pytest.raises(SourceError, match=r"150 of 150 rows cannot become jobs, more than --max-rejects \(100\)"):
        _submit(database_url, manifest, RejectPolicy())
    assert _ledger(database_url) == (0, 0)
    assert RejectPolicy().limit(10**6) == 10**4


def test_a_run_command_reports_rejects_and_status_and_export_list_them(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data", good=6, bad_lines=BAD)
    done = vlmbatch(["run", str(manifest), "--json"], _env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 row(s) rejected, not submitted" in done.stderr
    assert "line 5: invalid JSON" in done.stderr
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert (status["total"], status["counts"]["succeeded"], status["rejected"]) == (6, 6, 3)
    shown = vlmbatch(["status", str(status["run"])], _env(tmp_path))
    assert "3 rows rejected at submit" in shown.stdout
    out = tmp_path / "rejects.jsonl"
    exported = vlmbatch(["export", str(status["run"]), "--format", "rejects", "--out", str(out)], _env(tmp_path))
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["custom_id"]) for r in records] == [(3, None), (5, None), (9, None)]
    assert "`image` must be a string or a list of strings" in records[2]["reason"]


def test_strict_on_the_command_line_is_exit_2_with_nothing_written(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data", good=8, bad_lines=BAD)
    done = vlmbatch(["submit", str(manifest), "--strict"], _env(tmp_path))
    assert done.returncode == 2
    assert "3 malformed row(s); nothing was submitted" in done.stderr
    listed = vlmbatch(["status", "--json"], _env(tmp_path))
    assert "succeeded" not in listed.stdout


def test_an_empty_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = vlmbatch(["submit", str(tmp_path / "empty"), "-q", "What?"], _env(tmp_path))
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert "empty: no images, manifests" in done.stderr


def test_a_folder_of_other_files_names_what_it_found(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.md"):
        (folder / name).write_text("x")
    done = vlmbatch(["submit", str(folder), "-q", "What?"], _env(tmp_path))
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert "found 3 files: 2 .txt, 1 .md" in done.stderr


def test_an_openai_batch_line_outside_the_allowed_folders_is_a_reject_with_its_custom_id(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(good_jpeg(20, 20, seed=1))
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(good_jpeg(20, 20, seed=2))

    def line(custom_id: str, content: object) -> str:
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    def with_image(url: str) -> list[dict[str, object]]:
        return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is shown?"}]

    batch = folder / "batch.jsonl"
    lines = [line("a", with_image("a.jpg")), line("text", "What is 2 + 2?"), line("x", with_image(outside.as_uri()))]
    batch.write_text("\n".join(lines) + "\n")
    done = vlmbatch(["run", str(batch), "--json"], _env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert (status["total"], status["counts"]["succeeded"], status["rejected"]) == (2, 2, 1)
    out = tmp_path / "out.jsonl"
    exported = vlmbatch(["export", str(status["run"]), "--format", "openai", "--out", str(out)], _env(tmp_path))
    assert exported.returncode == 0, exported.stderr
    answered = sorted(json.loads(x)["custom_id"] for x in out.read_text().splitlines())
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert answered == ["a", "text"]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("x", "invalid_request")]
    assert "outside the allowed local folders" in errors[0]["error"]["message"]
