"""The commands a newcomer types, as subprocesses: embedded default and Redis + PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.bad_images import good_jpeg, write_mixed_folder
from tests.processes import service_env, vlmbatch, vlmbatch_json


def _folder(path: Path, count: int) -> Path:
    path.mkdir()
    for i in range(count):
        (path / f"{i:02d}.jpg").write_bytes(good_jpeg(40, 30, seed=i))
    return path


def _embedded_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env["VLMBATCH_ENGINE"] = "fake"
    return env


def _submit_twice_then_status(env: dict[str, str], folder: Path) -> None:
    first = vlmbatch_json(["submit", str(folder), "--question", "What is shown?", "--json"], env)
    assert isinstance(first, dict)
    assert (first["submitted"], first["skipped"]) == (20, 0)
    again = vlmbatch_json(["submit", str(folder), "--question", "What is shown?", "--json"], env)
    assert again == {
        "run": first["run"],
        "submitted": 0,
        "skipped": 20,
        "rejected": 0,
        "first_rejects": [],
        "unplaced": 0,
    }
    status = vlmbatch_json(["status", str(first["run"]), "--json"], env)
    assert isinstance(status, dict)
    assert (status["total"], status["counts"]["queued"]) == (20, 20)


def test_embedded_default_submit_is_idempotent_and_needs_no_setup(tmp_path: Path) -> None:
    _submit_twice_then_status(_embedded_env(), _folder(tmp_path / "imgs", 20))
    assert (tmp_path / ".vlmbatch" / "vlmbatch.db").exists()


def test_redis_and_postgres_are_only_settings(
    tmp_path: Path, postgres_url: str, redis_url: str, queue_name: str
) -> None:
    env = service_env(database_url=postgres_url, broker_url=redis_url, queue=queue_name)
    _submit_twice_then_status(env, _folder(tmp_path / "imgs", 20))
    assert not (tmp_path / ".vlmbatch").exists()


def test_a_run_of_good_and_bad_images_reports_each_bad_one_by_type(tmp_path: Path) -> None:
    expected = write_mixed_folder(tmp_path / "mixed", good=5)
    env = _embedded_env()
    status = vlmbatch_json(["run", str(tmp_path / "mixed"), "--question", "What is shown?", "--json"], env)
    assert isinstance(status, dict)
    bad = [e for e in expected.values() if e is not None]
    assert status["counts"]["succeeded"] == len(expected) - len(bad)
    assert status["counts"]["failed"] == len(bad)
    assert status["errors"] == {str(e): bad.count(e) for e in set(bad)}


def test_a_run_prints_a_summary_table(tmp_path: Path) -> None:
    done = vlmbatch(["run", str(_folder(tmp_path / "imgs", 3)), "--question", "Describe."], _embedded_env())
    assert done.returncode == 0, done.stderr
    assert "succeeded 3" in done.stdout
    assert done.stdout.count("answer-") == 3


@pytest.mark.parametrize("args", [["--question", "a", "--question-file", "q.txt"], []])
def test_a_submit_without_exactly_one_question_is_refused(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "q.txt").write_text("question")
    done = vlmbatch(["submit", str(_folder(tmp_path / "imgs", 1)), *args], _embedded_env())
    assert done.returncode == 2
    assert "question" in done.stderr


def test_status_shows_what_the_run_cost(tmp_path: Path) -> None:
    env = _embedded_env()
    run = vlmbatch_json(["run", str(_folder(tmp_path / "imgs", 3)), "--question", "Describe.", "--json"], env)
    assert isinstance(run, dict)
    shown = vlmbatch(["status", str(run["run"])], env).stdout
    assert "succeeded  3" in shown
    assert "cost so far: 3 attempts" in shown and "GPU-seconds" in shown
    # The embedded run ended before its first heartbeat (every 30 s): no worker is alive now.
    assert "workers alive (heartbeat current, all queues): 0" in shown


def test_a_password_in_the_database_url_never_reaches_the_output(tmp_path: Path) -> None:
    env = {**_embedded_env(), "VLMBATCH_DATABASE_URL": "postgresql+psycopg://user:hunter2secret@127.0.0.1:1/x"}
    done = vlmbatch(["status"], env)
    assert done.returncode != 0
    assert "hunter2secret" not in done.stdout + done.stderr


def test_run_with_two_questions_makes_two_jobs_per_image(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "imgs", 3)
    args = ["run", str(folder), "-q", "Is there a person?", "-q", "Is it indoors?", "--json"]
    status = vlmbatch_json(args, _embedded_env())
    assert isinstance(status, dict)
    assert (status["total"], status["counts"]["succeeded"]) == (6, 6)


def test_run_on_an_openai_batch_file_and_a_duplicate_custom_id_refuses_it_in_one_go(tmp_path: Path) -> None:
    import base64
    import json

    url = "data:image/jpeg;base64," + base64.b64encode(good_jpeg(40, 30)).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]

    def line(custom_id: str) -> str:
        body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 50}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join([line("a"), line("b")]) + "\n")
    env = _embedded_env()
    status = vlmbatch_json(["run", str(batch), "--json"], env)
    assert isinstance(status, dict)
    assert (status["total"], status["counts"]["succeeded"]) == (2, 2)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join([line("x"), line("x")]) + "\n")
    refused = vlmbatch(["submit", str(dup)], env)
    assert refused.returncode == 2
    assert "line 2: duplicate custom_id 'x'" in refused.stderr and "Traceback" not in refused.stderr


def test_an_openai_batch_file_run_then_exported_gives_each_custom_id_once_across_output_and_errors(
    tmp_path: Path,
) -> None:
    """The drop-in promise, as a user types it: `vlmbatch run batch.jsonl`, then `vlmbatch export RUN
    --format openai --out o.jsonl`; every custom_id once across o.jsonl and o.errors.jsonl, each line valid
    for the official SDK's models."""
    import base64
    import json

    from openai.types import BatchError
    from openai.types.chat import ChatCompletion

    good = "data:image/jpeg;base64," + base64.b64encode(good_jpeg(40, 30)).decode()
    broken = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8 not a jpeg").decode()

    def line(custom_id: str, url: str) -> str:
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
        body = {"model": "m", "messages": messages, "max_tokens": 40}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    ids = [f"req-{i}" for i in range(5)]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(line(i, broken if i == "req-3" else good) for i in ids) + "\n")
    env = _embedded_env()
    status = vlmbatch_json(["run", str(batch), "--json"], env)
    assert isinstance(status, dict)
    assert (status["total"], status["counts"]["succeeded"], status["counts"]["failed"]) == (5, 4, 1)
    out = tmp_path / "o.jsonl"
    done = vlmbatch(["export", str(status["run"]), "--format", "openai", "--out", str(out)], env)
    assert done.returncode == 0, done.stderr
    outputs = [json.loads(text) for text in out.read_text().splitlines()]
    errors = [json.loads(text) for text in (tmp_path / "o.errors.jsonl").read_text().splitlines()]
    for record in outputs:
        assert record["response"]["status_code"] == 200 and record["error"] is None
        ChatCompletion.model_validate(record["response"]["body"])
    for record in errors:
        assert record["response"] is None
        assert BatchError.model_validate(record["error"]).code == "input.unreadable"
    assert sorted(r["custom_id"] for r in outputs + errors) == ids
    assert [r["custom_id"] for r in errors] == ["req-3"]
