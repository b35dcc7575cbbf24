"""The worker's side of checkpoints, on SQLite and PostgreSQL, with the fake engine (which streams its
progress and continues a trace it would give): a worker stopped mid-trace checkpoints it before handing
the job back, and the next worker generates only the rest. The real engine's token identity is
tests/engine/test_vllm_continuation.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from tests.processes import vlmbatch, vlmbatch_json
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.checkpoints import TokenReuse, checkpoints_of, token_reuse
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.worker.engines.fake import FakeBehaviour

TRACE = 400
SLOW = FakeBehaviour(trace_tokens=TRACE, tokens_per_second=100.0)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "img.jpg").write_bytes(good_jpeg(64, 48, seed=3))
    return folder


def _only_job(sessions: sessionmaker[Session], run_id: int) -> tuple[int, str]:
    with sessions() as session:
        (job,) = session.scalars(select(Job).where(Job.run_id == run_id)).all()
        return job.id, job.state


def _kept_tokens(sessions: sessionmaker[Session], job_id: int) -> int:
    with sessions() as session:
        kept = checkpoints_of(session, job_ids=[job_id]).get(job_id)
    return kept.tokens if kept is not None else 0


def test_a_worker_stopped_mid_trace_hands_back_a_checkpoint_and_the_next_generates_only_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, checkpoint_tokens=40, checkpoint_seconds=30)
    with running_pipeline(settings, behaviour=SLOW) as (pipeline, sessions):
        whole = submit_folder(sessions, _folder(tmp_path, "whole"), max_tokens=1000)
        pipeline.feed_run(whole).result(timeout=60)
        stopped = submit_folder(sessions, _folder(tmp_path, "stopped"), max_tokens=1000)
        job_id, _ = _only_job(sessions, stopped)
        pipeline.feed_run(stopped)
        deadline = time.monotonic() + 30
        while _kept_tokens(sessions, job_id) < 40:  # written by the interval's checkpointer while it runs
            assert time.monotonic() < deadline, "no checkpoint was written while the trace ran"
            time.sleep(0.02)
        pipeline.stop(grace_s=0)
    handed_back = _kept_tokens(sessions, job_id)
    assert _only_job(sessions, stopped)[1] == JobState.QUEUED.value
    assert 40 <= handed_back < TRACE + 2
    with running_pipeline(settings, behaviour=SLOW) as (pipeline, sessions):
        pipeline.feed_run(stopped).result(timeout=60)
    with sessions() as session:
        texts = dict(session.execute(select(Job.run_id, Result.raw_text).join(Result, Result.job_id == Job.id)).all())
        first, second = session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))
        resumed = (second.resumed_from_attempt_id, second.reused_tokens, second.completion_tokens)
        assert checkpoints_of(session, job_ids=[job_id]) == {}  # it succeeded: its checkpoint went with it
        reuse = token_reuse(session, run_id=stopped)
    assert texts[stopped] == texts[whole]
    assert first.outcome == "abandoned"
    assert resumed == (first.id, handed_back, TRACE + 2 - handed_back)
    assert reuse == TokenReuse(resumed_attempts=1, reused_tokens=handed_back, jobs_with_tokens=0)


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update(VLMBATCH_ENGINE="fake", VLMBATCH_FAKE_TRACE_TOKENS="30", VLMBATCH_HOME=str(tmp_path / "home"))
    return env


def _exported(env: dict[str, str], run: str, out: Path) -> dict[str, tuple[str, int]]:
    done = vlmbatch(["export", run, "--format", "jsonl", "--out", str(out)], env)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["images"][0].rsplit("/", 1)[-1]: (r["raw_text"], r["completion_tokens"]) for r in records}


def test_resubmit_continues_a_truncated_run_from_its_tokens_through_the_commands_a_user_types(
    tmp_path: Path,
) -> None:
    env = _cli_env(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.jpg").write_bytes(good_jpeg(64, 48, seed=i))
    short = ["run", str(folder), "-q", "Why?", "--max-tokens", "10", "--run", "short", "--json"]
    status = vlmbatch_json(short, env)
    assert isinstance(status, dict) and status["counts"]["truncated"] == 2
    # Each kept its 10 tokens: continuing needs more than that, said in one line.
    refused = vlmbatch(["resubmit", "short", "--status", "truncated", "--max-tokens", "10"], env)
    assert refused.returncode == 2 and "up to 10 tokens" in refused.stderr and "Traceback" not in refused.stderr
    again = vlmbatch_json(["resubmit", "short", "--status", "truncated", "--max-tokens", "64", "--json"], env)
    assert isinstance(again, dict) and again["resubmitted"] == 2
    status = vlmbatch_json(short, env)  # the embedded ledger: `run` works the re-queued jobs
    assert isinstance(status, dict) and status["counts"]["succeeded"] == 2
    stats = vlmbatch_json(["stats", "short", "--json"], env)
    assert isinstance(stats, dict)
    assert stats["checkpoints"] == {"resumed_attempts": 2, "reused_tokens": 20, "jobs_with_tokens": 0}
    # The new attempts generated only the rest: 2 x 30 + 2 trace-and-answer tokens, less the 20 reused.
    assert stats["cost"]["all_attempts"]["completion_tokens"] == 2 * 10 + 2 * 32 - 20
    vlmbatch_json(["run", str(folder), "-q", "Why?", "--max-tokens", "64", "--run", "whole", "--json"], env)
    assert _exported(env, "short", tmp_path / "short.jsonl") == _exported(env, "whole", tmp_path / "whole.jsonl")
