"""One chaos run: a workload on private services, a supervised fleet of real worker processes, faults
injected at random moments, and a verdict computed from the ledger alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import func, select, text

from tests.chaos.fleet import VLMBATCH, Fleet
from tests.chaos.services import PrivatePostgres, PrivateRedis, free_port
from tests.chaos.tokens import InFlightAtKill, TokenFigures, at_kill, figures
from tests.chaos.workload import build_workload
from tests.ledger_invariants import running_attempts_on_terminal_jobs
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.worker.pipeline.checkpointing import TICK_SECONDS

QUEUE = "vlmbatch-chaos"


@dataclass
class ChaosConfig:
    jobs: int = 2000
    workers: int = 3
    engine: str = "fake"  # or "vllm" (the tiny model through the real vLLM CPU build)
    kills: int = 3
    stops: int = 1
    redis_wipes: int = 1
    postgres_restarts: int = 1
    client_kills: int = 1
    seed: int = 0
    lease_seconds: float = 8.0
    # Faults land at random moments within this window after the workers are up.
    fault_window_s: float = 40.0
    finish_within_s: float = 180.0
    # Fixed output length (ignore_eos): keeps a real engine busy through the fault window; good jobs then
    # end `truncated` (at max_tokens) instead of `succeeded`. None: the model decides.
    output_tokens: int | None = None
    # Checkpoints (issue 26): how often a worker writes its traces' output, and the fake engine's pace,
    # which makes a trace of `output_tokens` last long enough for a kill to land in it.
    # 0.5 s: the checkpointer's cadence (interval plus its tick, 1 s) stays well above a checkpoint
    # write's time on a loaded machine, so that the bound is the checkpointer's and not the machine's.
    checkpoint_seconds: float = 0.5
    fake_tokens_per_second: float = 200.0
    keep: bool = False


@dataclass
class FaultRecord:
    name: str
    at: float
    affected: set[int] = field(default_factory=set)
    detail: str = ""


@dataclass
class ChaosReport:
    config: ChaosConfig
    faults: list[FaultRecord]
    counts: dict[str, int]
    lost: int
    duplicates: int
    wrong_outcome: list[str]
    finished_after_last_fault_s: float
    restarts: int
    zombie_writes_refused: int
    table: list[tuple[str, int, int, str]]
    # Attempts still `running` on a job that already ended (a lock-order or fence bug).
    running_on_terminal: int = 0
    # The "tokens lost" figure (fake engine with fixed-length traces only; tests/chaos/tokens.py).
    tokens: TokenFigures | None = None

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and not self.wrong_outcome
            and self.running_on_terminal == 0
            and self.finished_after_last_fault_s <= self.config.finish_within_s
            and (self.tokens is None or self.tokens.passed)
        )

    def render(self) -> str:
        from vlmbatch.producer.cli.render import table

        lines = [table(["fault", "injected", "jobs affected", "outcome"], self.table), ""]
        total = sum(self.counts.values())
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: {total} jobs, {self.counts.get('succeeded', 0) + self.counts.get('truncated', 0)} "
            "finished as expected, "
            f"{self.counts.get('failed', 0)} failed as expected by type; lost {self.lost}, "
            f"duplicate results {self.duplicates}, wrong outcomes {len(self.wrong_outcome)}, "
            f"running attempts on ended jobs {self.running_on_terminal}; "
            f"{self.restarts} worker restarts; zombie writes refused {self.zombie_writes_refused}; "
            f"finished {self.finished_after_last_fault_s:.0f}s after the last fault"
        )
        if self.tokens is not None:
            lines.append(self.tokens.render())
            lines.extend(f"  trace differs: {w}" for w in self.tokens.mismatched_traces[:10])
            lines.extend(f"  checkpoint not a prefix: {w}" for w in self.tokens.mismatched_checkpoints[:10])
        lines.extend(f"  wrong: {w}" for w in self.wrong_outcome[:20])
        return "\n".join(lines)


def run_chaos(config: ChaosConfig, *, log: Callable[[str], None] = print) -> ChaosReport:
    rng = random.Random(config.seed)
    work = Path(tempfile.mkdtemp(prefix="vlmbatch-chaos-"))
    postgres, broker = PrivatePostgres(), PrivateRedis()
    postgres.start()
    broker.start()
    s3 = _start_s3()
    fleet: Fleet | None = None
    try:
        env = _environment(config, work, database=postgres.url, broker=broker.url, s3=s3.endpoint)
        workload = build_workload(
            work,
            jobs=config.jobs,
            bucket="chaos",
            image_size=448 if config.engine == "vllm" else 32,
            long_question_words=9000 if config.engine == "vllm" else 5000,
            good_state="truncated" if config.output_tokens else "succeeded",
        )
        s3.upload("chaos", workload.objects)
        _cli(["db", "upgrade"], env)
        submitted = json.loads(
            _cli(
                [
                    "submit",
                    str(workload.manifest),
                    "--run",
                    "chaos",
                    "--max-attempts",
                    "6",
                    "--max-tokens",
                    str(config.output_tokens or 256),
                    *(["--ignore-eos"] if config.output_tokens else []),
                    "--json",
                ],
                env,
            )
            .strip()
            .splitlines()[-1]
        )
        log(f"submitted {submitted['submitted']} jobs; starting {config.workers} workers")
        _, sessions = open_ledger(postgres.url, auto_migrate=False)
        fleet = Fleet(size=config.workers, env=env, logs=work)
        fleet.start()
        fleet.wait_started(timeout=300 if config.engine == "vllm" else 60)
        started = time.monotonic()
        tokens = _token_figures(config)
        seen = tokens.in_flight if tokens is not None else None
        faults = _inject(config, rng, fleet, sessions, postgres, broker, started, log, seen=seen)
        last_fault = max((f.at for f in faults), default=started)
        _wait_done(sessions, timeout=config.finish_within_s + config.fault_window_s + 600, log=log)
        finished_after = time.monotonic() - last_fault
        restarts = [code for slot in fleet.slots for code in slot.exits]
        exit_codes = fleet.stop()
        fleet = None
        log(f"workers exited during the run with {restarts} (restarted each time); stopped with {exit_codes}")
        return _verdict(
            config, sessions, workload.expected, faults, finished_after, restarts=len(restarts), tokens=tokens
        )
    finally:
        if fleet is not None:
            fleet.stop()
        s3.stop()
        broker.stop()
        postgres.destroy()
        if not config.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


# -- environment -----------------------------------------------------------------------------------


def _environment(config: ChaosConfig, work: Path, *, database: str, broker: str, s3: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update(
        VLMBATCH_DATABASE_URL=database,
        VLMBATCH_BROKER_URL=broker,
        VLMBATCH_QUEUE=QUEUE,
        VLMBATCH_S3_ENDPOINT_URL=s3,
        VLMBATCH_LEASE_SECONDS=str(config.lease_seconds),
        VLMBATCH_HEARTBEAT_SECONDS="1",
        VLMBATCH_RECONCILE_SECONDS="2",
        VLMBATCH_REPUBLISH_GRACE_SECONDS="5",
        VLMBATCH_UNACKED_STALE_SECONDS=str(3 * config.lease_seconds),
        VLMBATCH_SHUTDOWN_GRACE_SECONDS="5",
        VLMBATCH_ENGINE=config.engine,
        VLMBATCH_CHECKPOINT_SECONDS=str(config.checkpoint_seconds),
        AWS_ACCESS_KEY_ID="chaos",
        AWS_SECRET_ACCESS_KEY="chaos",
        AWS_DEFAULT_REGION="us-east-1",
        PYTHONUNBUFFERED="1",
    )
    if config.engine == "fake":
        env.update(
            VLMBATCH_MODEL="fake-model",
            VLMBATCH_FAKE_LATENCY_S="0.5" if config.output_tokens else "1.0",
            VLMBATCH_FAKE_TOKENS_PER_SECOND=str(config.fake_tokens_per_second),
            VLMBATCH_MAX_NUM_SEQS="16",
            # Every job a worker holds is in its engine: an attempt's start is its trace's (tokens.py).
            VLMBATCH_INFLIGHT_JOBS="16",
            VLMBATCH_MAX_MODEL_LEN="4096",
        )
    else:
        from vlmbatch.worker.smoke_model import build_model_folder

        model = build_model_folder(work / "tiny")
        env.update(
            VLMBATCH_MODEL=str(model),
            VLMBATCH_TRUST_REMOTE_CODE="true",
            VLMBATCH_ENFORCE_EAGER="true",
            VLMBATCH_MAX_MODEL_LEN="8192",
            VLMBATCH_MAX_NUM_SEQS="8",
            VLMBATCH_KV_CACHE_BYTES=str(256 * 2**20),
            VLMBATCH_ENGINE_HANG_SECONDS="120",
            HF_HUB_OFFLINE="1",
            VLLM_CACHE_ROOT=str(work / "cache" / "vllm"),
            HF_MODULES_CACHE=str(work / "cache" / "hf"),
            VLLM_LOGGING_LEVEL="WARNING",
        )
    return env


def _cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([*VLMBATCH, *args], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"vlmbatch {' '.join(args[:2])} failed: {done.stderr[-2000:]}")
    return done.stdout


class _S3:
    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def upload(self, bucket: str, objects: dict[str, bytes]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from vlmbatch.media.stores import make_s3_client

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "chaos")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "chaos")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        client = make_s3_client(self.endpoint)
        client.create_bucket(Bucket=bucket)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))

    def stop(self) -> None:
        self._server.stop()


def _start_s3() -> _S3:
    return _S3()


# -- faults ----------------------------------------------------------------------------------------


def _inject(
    config: ChaosConfig,
    rng: random.Random,
    fleet: Fleet,
    sessions: object,
    postgres: PrivatePostgres,
    broker: PrivateRedis,
    started: float,
    log: Callable[[str], None],
    *,
    seen: list[InFlightAtKill] | None = None,
) -> list[FaultRecord]:
    plan = (
        ["kill -9 worker"] * config.kills
        + ["SIGSTOP past lease"] * config.stops
        + ["Redis restarted empty"] * config.redis_wipes
        + ["PostgreSQL restarted"] * config.postgres_restarts
        + ["broker clients killed"] * config.client_kills
    )
    moments = sorted(rng.uniform(1.0, config.fault_window_s) for _ in plan)
    rng.shuffle(plan)
    records = []
    for name, moment in zip(plan, moments, strict=True):
        time.sleep(max(0.0, started + moment - time.monotonic()))
        record = FaultRecord(name=name, at=time.monotonic())
        if name == "kill -9 worker":
            index = rng.randrange(len(fleet.slots))
            worker_id = fleet.slots[index].worker_id
            record.affected = _leased_by(sessions, worker_id)
            if seen is None:
                fleet.signal(index, signal.SIGKILL)
            else:  # the kill's moment on the ledger's clock; before the leases lapse, what it kept of each trace
                with sessions() as session:  # type: ignore[operator]
                    killed_at = database_now(session)
                    fleet.signal(index, signal.SIGKILL)
                    leased = _leased_by(sessions, worker_id)
                    seen.extend(at_kill(session, worker=worker_id, job_ids=leased, killed_at=killed_at))
            record.detail = worker_id
        elif name == "SIGSTOP past lease":
            index = rng.randrange(len(fleet.slots))
            worker_id = fleet.signal(index, signal.SIGSTOP)
            record.affected = _leased_by(sessions, worker_id)
            time.sleep(config.lease_seconds * 2 + 4)  # the lease expires and the reconciler takes the jobs
            fleet.signal(index, signal.SIGCONT)
            record.detail = worker_id
        elif name == "Redis restarted empty":
            client = redis.Redis.from_url(broker.url)
            lost = client.llen(QUEUE) + client.hlen("unacked")
            client.close()
            record.affected = _queued(sessions)
            broker.restart_empty()
            record.detail = f"{lost} messages lost"
        elif name == "PostgreSQL restarted":
            record.affected = _running(sessions)
            postgres.restart()
        else:
            client = redis.Redis.from_url(broker.url)
            killed = client.execute_command("CLIENT", "KILL", "TYPE", "normal")
            client.close()
            record.detail = f"{killed} connections"
            record.affected = _running(sessions)
        log(f"t+{record.at - started:5.1f}s {name} ({record.detail}): {len(record.affected)} jobs affected")
        records.append(record)
    return records


def _ids(sessions: object, where: str, **params: object) -> set[int]:
    for _ in range(20):  # the database may be the thing restarting
        try:
            with sessions() as session:  # type: ignore[operator]
                return set(session.execute(text(f"SELECT id FROM jobs WHERE {where}"), params).scalars())
        except Exception:
            time.sleep(0.5)
    return set()


def _leased_by(sessions: object, worker_id: str) -> set[int]:
    return _ids(sessions, "state = 'running' AND lease_owner = :w", w=worker_id)


def _running(sessions: object) -> set[int]:
    return _ids(sessions, "state = 'running'")


def _queued(sessions: object) -> set[int]:
    return _ids(sessions, "state = 'queued'")


def _wait_done(sessions: object, *, timeout: float, log: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while time.monotonic() < deadline:
        try:
            with sessions() as session:  # type: ignore[operator]
                pending = session.scalar(
                    select(func.count()).select_from(Job).where(Job.state.in_(["queued", "running"]))
                )
        except Exception:
            pending = -1
        if pending == 0:
            return
        if time.monotonic() - last_print > 10:
            log(f"{pending} jobs queued or running")
            last_print = time.monotonic()
        time.sleep(0.5)
    raise TimeoutError("the chaos run did not finish")


def _token_figures(config: ChaosConfig) -> TokenFigures | None:
    """The tokens-lost figure's frame: only where the pace is known (the fake engine) and traces have a
    fixed length; the bound is the checkpointer's cadence (due after `checkpoint_seconds`, looked at every
    tick) at that pace."""
    if config.engine != "fake" or not config.output_tokens or config.checkpoint_seconds <= 0:
        return None
    cadence = config.checkpoint_seconds + min(TICK_SECONDS, config.checkpoint_seconds)
    return TokenFigures(
        pace=config.fake_tokens_per_second,
        cadence_s=cadence,
        interval_tokens=config.fake_tokens_per_second * cadence,
        max_tokens=config.output_tokens,
    )


def _restarts(work: Path) -> int:
    return max(
        0,
        len(list(work.glob("chaos-w*-g*.log"))) - len(set(p.name.split("-g")[0] for p in work.glob("chaos-w*-g*.log"))),
    )


# -- verdict ---------------------------------------------------------------------------------------


def _verdict(
    config: ChaosConfig,
    sessions: object,
    expected: dict[tuple[str, str], object],
    faults: list[FaultRecord],
    finished_after: float,
    *,
    restarts: int,
    tokens: TokenFigures | None = None,
) -> ChaosReport:
    with sessions() as session:  # type: ignore[operator]
        jobs = session.scalars(select(Job)).all()
        attempts_with_results = dict(
            session.execute(
                select(Result.job_id, func.count(func.distinct(Result.attempt_id))).group_by(Result.job_id)
            ).all()
        )
        standing = dict(
            session.execute(select(Result.job_id, func.min(Result.attempt_id)).group_by(Result.job_id)).all()
        )
        stopped_workers = [f.detail for f in faults if f.name == "SIGSTOP past lease"]
        zombie_attempts = set(
            session.scalars(
                select(Attempt.id).where(Attempt.worker.in_(stopped_workers), Attempt.outcome == "abandoned")
            )
        )
        zombie_results = session.scalar(
            select(func.count()).select_from(Result).where(Result.attempt_id.in_(zombie_attempts))
        )
        running_on_terminal = running_attempts_on_terminal_jobs(session)
        by_key = {(job.images[0], job.question): job for job in jobs}
        if tokens is not None:
            good = {by_key[k].id for k, w in expected.items() if k in by_key and w.state != "failed"}  # type: ignore[attr-defined]
            figures(session, tokens, good_jobs=good)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    lost = len(set(expected) - set(by_key)) + sum(1 for job in jobs if job.state in (JobState.QUEUED, JobState.RUNNING))
    duplicates = sum(1 for n in attempts_with_results.values() if n > 1) + (zombie_results or 0)
    duplicates += sum(1 for job in jobs if job.id in standing and standing[job.id] != job.current_attempt_id)
    wrong = []
    for key, want in expected.items():
        job = by_key.get(key)
        if job is None:
            continue
        if (job.state, job.error_type) != (want.state, want.error_type):  # type: ignore[attr-defined]
            wrong.append(f"{key[0]}: {job.state}/{job.error_type} ({job.error_message}), expected {want}")
    table = []
    for name in dict.fromkeys(f.name for f in faults):
        group = [f for f in faults if f.name == name]
        affected = set().union(*(f.affected for f in group))
        ok = sum(1 for job in jobs if job.id in affected and job.state not in (JobState.QUEUED, JobState.RUNNING))
        dup = sum(1 for j in affected if attempts_with_results.get(j, 0) > 1)
        table.append((name, len(group), len(affected), f"{ok}/{len(affected)} terminal, {dup} duplicates"))
    failing = sum(1 for w in expected.values() if w.state == "failed")  # type: ignore[attr-defined]
    outcome = "see wrong outcomes" if wrong else "each failed with its type"
    table.append(("hostile inputs, prompts over context", failing, failing, outcome))
    return ChaosReport(
        config=config,
        faults=faults,
        counts=counts,
        lost=lost,
        duplicates=duplicates,
        wrong_outcome=wrong,
        finished_after_last_fault_s=finished_after,
        restarts=restarts,
        zombie_writes_refused=len(zombie_attempts),
        table=table,
        running_on_terminal=running_on_terminal,
        tokens=tokens,
    )
