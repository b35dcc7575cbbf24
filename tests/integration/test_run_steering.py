"""Steering runs from the command line and the Batch API: `submit --priority/--weight`, `vlmbatch priority`,
`pause` and `resume` (status and the run page say paused, since when and why), one-line refusals of a
mistake, and a batch's priority from its metadata, its validating hold kept."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.integration.ledger_helpers import ledger
from tests.integration.test_batch_api_lifecycle import RecordingPublisher, _sdk, _serving, _until, _upload
from tests.processes import vlmbatch, vlmbatch_json
from vlmbatch.producer.browser.pages import run_path
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.tables import Run

KEY = "sk-lifecycle-key-0123456789abcdef"


def _folder(tmp_path: Path, images: int) -> Path:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for i in range(images):
        (folder / f"{i}.jpg").write_bytes(good_jpeg(16, 16, seed=i))
    return folder


def test_pause_resume_and_priority_from_the_command_line(postgres_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {"VLMBATCH_DATABASE_URL": postgres_url, "VLMBATCH_BROKER_URL": redis_url, "VLMBATCH_QUEUE": "steer"}
    submitted = vlmbatch_json(
        ["submit", str(_folder(tmp_path, 5)), "-q", "What?", "--priority", "3", "--weight", "2", "--json"], env
    )
    assert isinstance(submitted, dict)
    run = str(submitted["run"])
    status = vlmbatch_json(["status", run, "--json"], env)
    assert isinstance(status, dict)
    assert (status["priority"], status["weight"], status["paused"]) == (3, 2, False)

    paused = vlmbatch(["pause", run], env)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == f"run {run}: paused; 0 running jobs finish, no new one is claimed"
    again = vlmbatch(["pause", run], env)
    assert again.stdout.startswith(f"run {run}: already paused since ")
    shown = vlmbatch(["status", run], env)
    assert "paused since " in shown.stdout and "paused by `vlmbatch pause`" in shown.stdout
    status = vlmbatch_json(["status", run, "--json"], env)
    assert isinstance(status, dict) and status["paused"] and status["paused_since"]

    resumed = vlmbatch_json(["resume", run, "--json"], env)
    assert resumed == {"run": int(run), "was_paused": True, "queued": 5}
    assert vlmbatch_json(["priority", run, "-2", "--json"], env) == {"run": int(run), "priority": -2, "weight": 2}
    status = vlmbatch_json(["status", run, "--json"], env)
    assert isinstance(status, dict) and (status["priority"], status["paused"]) == (-2, False)


@pytest.mark.parametrize(
    "args",
    [["pause", "no-such-run"], ["resume", "424242"], ["priority", "no-such-run", "1"], ["priority", "x", "99999"]],
)
def test_a_mistake_is_one_line_and_exit_2(sqlite_url: str, args: list[str]) -> None:
    done = vlmbatch(args, {"VLMBATCH_DATABASE_URL": sqlite_url})
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")


def test_the_run_page_says_a_run_is_paused_since_when_and_why(sqlite_url: str, tmp_path: Path) -> None:
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    submitted = vlmbatch_json(["submit", str(_folder(tmp_path, 2)), "-q", "What?", "--json"], env)
    assert isinstance(submitted, dict)
    assert vlmbatch(["pause", str(submitted["run"])], env).returncode == 0
    settings = Settings(database_url=sqlite_url, api_keys=KEY)  # type: ignore[arg-type]
    with _serving(settings, RecordingPublisher()) as client:
        page = client.get(run_path(int(submitted["run"])))
    assert page.status_code == 200
    assert "Paused since (UTC)" in page.text and "paused by `vlmbatch pause`" in page.text


def test_a_batchs_metadata_sets_its_priority_and_it_is_held_while_validating(tmp_path: Path) -> None:
    publisher = RecordingPublisher()
    settings = Settings(home=tmp_path, api_keys=KEY)  # type: ignore[arg-type]
    with _serving(settings, publisher) as http:
        sdk = _sdk(http)
        upload = _upload(sdk, tmp_path / "in.jsonl", 3)
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.batches.create(
                input_file_id=upload,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"vlmbatch_priority": "urgent"},
            )
        assert refused.value.param == "metadata"
        batch = sdk.batches.create(
            input_file_id=upload,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"vlmbatch_priority": "7", "vlmbatch_weight": "2", "team": "eval"},
        )
        _until(sdk, batch.id, {"in_progress"})
    sessions = ledger(settings.resolved_database_url())
    with sessions() as session:
        run = session.scalar(select(Run).where(Run.name == batch.id))
    assert run is not None and (run.priority, run.weight, run.held, run.paused_at) == (7, 2, False, None)
    assert publisher.published == [3]
