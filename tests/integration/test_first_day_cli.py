"""The first day and the overnight run, on the control plane (the fake engine; the real vLLM CPU engine's
side is tests/engine/test_first_day.py): progress without a terminal, Ctrl-C, dry runs, one-line mistakes,
resubmit's default, the model's identity and what `status` says."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from tests.integration.test_pipeline import FlakyStore
from tests.processes import VLMBATCH, vlmbatch, vlmbatch_json
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.model_identity import identify
from vlmbatch.schema.contracts.models import DEFAULT_MAX_TOKENS
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.claims import QueueClaimer
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.liveness import beat
from vlmbatch.schema.ledger.status import run_progress
from vlmbatch.schema.ledger.tables import Job, Run, Worker

PROGRESS = re.compile(r"^\S+: \d+/\d+ done \(\d+\.\d%\), [\d.]+ jobs/s, .*ETA [-:\d]+, (no errors|errors: .+)$")


def _folder(path: Path, count: int) -> Path:
    path.mkdir(parents=True)
    for i in range(count):
        (path / f"{i:02d}.jpg").write_bytes(good_jpeg(32, 32, seed=i))
    return path


def _model_folder(path: Path, *, hidden: int = 128) -> Path:
    """A folder as a model's: config.json and a weight file (the fake engine reads neither)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["X"], "hidden_size": hidden}))
    (path / "model.safetensors").write_bytes(b"\0" * 1024)
    return path


def _fake(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home"), "VLMBATCH_MODEL": "fake-model", **extra}


def test_run_without_a_terminal_prints_periodic_progress_lines(tmp_path: Path) -> None:
    imgs = _folder(tmp_path / "imgs", 12)
    env = _fake(tmp_path, VLMBATCH_FAKE_LATENCY_S="0.4", VLMBATCH_MAX_NUM_SEQS="2")
    done = vlmbatch(["run", str(imgs), "-q", "What?", "--progress-every", "0.5"], env)
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if PROGRESS.match(line)]
    assert len(progress) >= 2, done.stderr
    assert "12/12 done (100.0%)" in progress[-1] and "\r" not in done.stderr
    assert "What?" in done.stdout  # the question in the results table

    # The JSON log format: the same numbers as fields.
    again = vlmbatch(["run", str(imgs), "-q", "Why?", "--progress-every", "0.5"], env | {"VLMBATCH_LOG_FORMAT": "json"})
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in again.stderr.splitlines() if line.startswith("{")]
    fields = [r["progress"] for r in records if "progress" in r]
    assert len(fields) >= 2 and fields[-1]["done"] == fields[-1]["total"] == 12
    assert {"jobs_per_second", "tokens_per_second", "eta_seconds", "errors"} <= set(fields[-1])


def test_ctrl_c_on_run_says_what_was_handed_back_and_how_to_resume(tmp_path: Path) -> None:
    imgs = _folder(tmp_path / "imgs", 6)
    env = _fake(tmp_path, VLMBATCH_FAKE_LATENCY_S="30", VLMBATCH_MAX_NUM_SEQS="2")
    full = {k: v for k, v in __import__("os").environ.items() if not k.startswith("VLMBATCH_")} | env
    process = subprocess.Popen(
        [*VLMBATCH, "run", str(imgs), "-q", "What?"],
        env=full,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    _, sessions = open_ledger(f"sqlite:///{tmp_path / 'home' / 'vlmbatch.db'}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with sessions() as session:
                if session.scalar(select(func.count()).where(Job.state == JobState.RUNNING.value)):
                    break
        except Exception:  # the ledger is not created yet
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert re.search(r"interrupted: \d+ jobs in flight were handed back, 6 jobs of run 1 are queued", last), last
    assert f"`vlmbatch run {imgs} -q 'What?'` resumes the run" in last
    with sessions() as session:
        assert session.scalar(select(func.count()).where(Job.state == JobState.QUEUED.value)) == 6


def test_dry_run_validates_counts_previews_and_writes_nothing(tmp_path: Path) -> None:
    imgs = _folder(tmp_path / "imgs", 3)
    env = _fake(tmp_path)
    done = vlmbatch(["submit", str(imgs), "-q", "Is <image> a cat?", "--dry-run", "--preview", "2"], env)
    assert done.returncode == 0, done.stderr
    assert "dry run: 3 jobs, 3 images; nothing written" in done.stdout
    assert done.stdout.count("--- prompt") == 2
    assert re.search(r"user: Is \[image 1: \S+00\.jpg\] a cat\?", done.stdout), done.stdout
    assert "prompt tokens: ~" in done.stdout
    summary = vlmbatch_json(["run", str(imgs), "-q", "Why?", "--dry-run", "--json", "--rate", "2"], env)
    assert isinstance(summary, dict) and summary["jobs"] == 3 and len(summary["previews"]) == 3
    assert not (tmp_path / "home").exists()


def test_first_day_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _fake(tmp_path)
    for args in (
        ["submit", str(empty), "-q", "What?"],
        ["submit", str(_folder(tmp_path / "i", 1)), "-q", "x", "--choices", ""],
    ):
        done = vlmbatch(args, env)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no images, manifests" in vlmbatch(["submit", str(empty), "-q", "What?"], env).stderr
    assert not (tmp_path / "home").exists()
    version = vlmbatch(["--version"], env)
    assert version.returncode == 0 and re.fullmatch(r"vlmbatch \S+\n", version.stdout)
    unknown = vlmbatch(["run", str(tmp_path / "i"), "-q", "x", "--engine", "vllm", "--engine-arg", "sed=3"], env)
    assert unknown.returncode == 2 and "(did you mean seed?)" in unknown.stderr


def test_n_is_vllms_name_for_samples(tmp_path: Path) -> None:
    imgs = _folder(tmp_path / "imgs", 1)
    done = vlmbatch(["submit", str(imgs), "-q", "What?", "--n", "3", "--dry-run", "--json"], _fake(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["max_output_tokens"] == 3 * DEFAULT_MAX_TOKENS


def test_a_bare_resubmit_takes_the_retryable_failures_and_says_what_it_left_out(
    sqlite_url: str, tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "imgs", 3)
    (folder / "flaky-empty.jpg").write_bytes(b"")  # fails for good: input.unreadable
    with running_pipeline(settings_for(sqlite_url), store=FlakyStore(failures=1, only="/0")) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder, max_transient_retries=0)
        pipeline.feed_run(run_id).result(timeout=30)
    env = {"VLMBATCH_DATABASE_URL": sqlite_url, "VLMBATCH_ENGINE": "fake"}
    report = vlmbatch_json(["resubmit", str(run_id), "--json"], env)
    assert isinstance(report, dict)
    assert report["resubmitted"] == 3
    assert report["groups"] == [{"status": "failed", "error_type": "storage.transient", "jobs": 3}]
    assert [(g["error_type"], g["jobs"]) for g in report["left_out"]] == [(ErrorType.INPUT_UNREADABLE.value, 1)]
    text = vlmbatch(["resubmit", str(run_id), "--dry-run"], env).stdout
    assert "left out: 1 failed jobs (input.unreadable): permanent" in text
    with sessions() as session, session.begin():  # failed again, to be re-queued by a bare resubmit
        session.execute(
            update(Job)
            .where(Job.state == JobState.QUEUED.value)
            .values(state=JobState.FAILED.value, error_type=ErrorType.TIMEOUT.value)
        )
    again = vlmbatch(["resubmit", str(run_id)], env).stdout
    assert "embedded ledger: the re-queued jobs run when `vlmbatch run` works run" in again


def test_a_worker_serves_its_model_folder_under_another_path(sqlite_url: str, tmp_path: Path) -> None:
    model = _model_folder(tmp_path / "fm")
    copy = Path(shutil.copytree(model, tmp_path / "elsewhere" / "fm-copy"))
    other = _model_folder(tmp_path / "finetune", hidden=256)
    _, sessions = open_ledger(sqlite_url)
    run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 2), model=str(model))
    with sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.model == str(model.resolve())
        assert run.model_fingerprint == identify(str(copy)).fingerprint is not None

    def claimed(folder: Path) -> int:
        identity = identify(str(folder))
        claimer = QueueClaimer(queue="q", model=identity.model, fingerprint=identity.fingerprint)
        with sessions() as session, session.begin():
            return len(claimer.claim(session, limit=10, worker="w", lease_seconds=60))

    assert claimed(other) == 0  # a fine-tune of the same name is another model
    assert claimed(copy) == 2


def test_status_warns_when_no_live_worker_serves_the_runs_model(sqlite_url: str, tmp_path: Path) -> None:
    _, sessions = open_ledger(sqlite_url)
    run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 2), model="org/model-a")
    with sessions() as session, session.begin():
        beat(session, worker="w1", lease_seconds=60, now=database_now(session), model="org/model-b")
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    done = vlmbatch(["status", str(run_id)], env)
    assert "warning: 2 jobs queued for model org/model-a; live workers serve org/model-b" in done.stdout
    listing = vlmbatch(["status"], env).stdout
    assert "org/model-a" in listing and "What is shown?" in listing and "created (UTC)" in listing


def test_a_worker_is_alive_from_its_start_and_names_its_model(sqlite_url: str) -> None:
    settings = settings_for(sqlite_url, heartbeat_seconds=30, lease_seconds=120)
    with running_pipeline(settings) as (_, sessions), sessions() as session:
        (row,) = session.execute(select(Worker.name, Worker.model)).all()
    assert row == ("test-worker", "fake-model")


def test_status_gives_no_eta_while_nothing_moves_and_a_duration_once_done(sqlite_url: str, tmp_path: Path) -> None:
    _, sessions = open_ledger(sqlite_url)
    run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 3))
    with sessions() as session, session.begin():
        long_ago = database_now(session) - timedelta(minutes=2)
        first = session.scalar(select(func.min(Job.id)).where(Job.run_id == run_id))
        session.execute(update(Job).where(Job.id == first).values(finished_at=long_ago))
    with sessions() as session:
        stalled = run_progress(session, run_id)
    assert stalled.jobs_per_second > 0 and stalled.eta_seconds is None
    with running_pipeline(settings_for(sqlite_url)) as (pipeline, _):
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        finished = run_progress(session, run_id)
    assert finished.duration_seconds is not None and finished.mean_jobs_per_second is not None
    text = vlmbatch(["status", str(run_id)], {"VLMBATCH_DATABASE_URL": sqlite_url}).stdout
    assert "finished: 3 jobs in" in text and "jobs/s on average" in text


def test_a_worker_logs_progress_lines_and_keeps_celerys_log_in_its_log_file(
    postgres_url: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    from tests.processes import service_env, start_worker, stop_worker, wait_until_done

    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        VLMBATCH_WORKER_ID="progress-w0",
        VLMBATCH_FAKE_LATENCY_S="0.3",
        VLMBATCH_MAX_NUM_SEQS="2",
    )
    run = vlmbatch_json(["submit", str(_folder(tmp_path / "imgs", 10)), "-q", "What?", "--json"], env)
    assert isinstance(run, dict)
    terminal, log_file = tmp_path / "terminal.log", tmp_path / "worker-file.log"
    worker = start_worker(env, terminal, "--progress-every", "0.5", "--log-file", str(log_file))
    try:
        _, sessions = open_ledger(postgres_url)
        wait_until_done(sessions, run["run"], timeout=120)
        time.sleep(1.5)  # one more progress line after the last job
    finally:
        stop_worker(worker)
    shown = terminal.read_text(errors="replace")
    lines = [line for line in shown.splitlines() if "worker progress-w0: " in line]
    assert len(lines) >= 2, shown[-3000:]
    assert re.search(r"worker progress-w0: 10 done, [\d.]+ jobs/s, [\d,]+ output tok/s, no errors", lines[-1])
    kept = log_file.read_text(errors="replace")
    assert re.search(r"INFO celery\.", kept)  # Celery's records go to the file, not the terminal
    assert not re.search(r"INFO celery\.", shown), shown[-3000:]
