"""The `openai` engine: the worker pipeline against a real `vllm serve` of the tiny Skywork-R1V3-architecture
model on loopback, with the outcomes the in-process engine gives (tests/engine/test_vllm_pipeline.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.engine.conftest import MAX_MODEL_LEN, engine_settings
from tests.fixtures.bad_images import decompression_bomb_png, empty, good_jpeg, not_an_image, truncated_jpeg
from tests.integration.pipeline_helpers import jobs_by_name, running_pipeline, submit_folder
from tests.processes import free_port
from vlmbatch.schema.contracts.errors import ConfigurationError, EngineDead, ErrorType
from vlmbatch.schema.contracts.models import SamplingSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.resubmit import cancel_run
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.worker.engines.base import GenerationRequest
from vlmbatch.worker.engines.openai import OpenAIEngine
from vlmbatch.worker.engines.openai.telemetry import parse_metrics
from vlmbatch.worker.engines.vllm_compat import HOOK_DIR

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 300


@dataclass(frozen=True)
class Server:
    base_url: str  # the API root, …/v1
    root: str
    log: Path
    start_s: float


@pytest.fixture(scope="module")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`vllm serve` as R1V3's card starts it, plus the flags the openai engine needs, on a free port."""
    tmp = tmp_path_factory.mktemp("vllm-serve")
    port = free_port()
    env = {
        **os.environ,
        # vLLM's CPU build needs the compatibility hook in the server and its engine process.
        "PYTHONPATH": os.pathsep.join([str(HOOK_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
        "HF_MODULES_CACHE": str(tmp / "hf-modules"),
        # One engine process instead of two, its OpenMP threads unbound: ~30 s to start on 2 cores, not ~60.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model), "--host", "127.0.0.1", "--port", str(port),
        "--trust-remote-code", "--enforce-eager", "--seed", "0",
        "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(512 * 2**20),
        "--limit-mm-per-prompt", '{"image": 4}',
        "--trust-request-mm-kwargs", "--interleave-mm-strings", "--reasoning-parser", "deepseek_r1",
        "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    log = tmp / "server.log"
    started = time.monotonic()
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(server, root, log)
        start_s = time.monotonic() - started
        print(f"\nvllm serve of the tiny model answered /health after {start_s:.1f}s", file=sys.stderr)
        yield Server(base_url=f"{root}/v1", root=root, log=log, start_s=start_s)
    finally:
        _stop(server)


def _wait_until_healthy(server: subprocess.Popen[bytes], root: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"vllm serve did not answer /health in {SERVER_START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group (its engine process too), SIGKILL whatever lingers."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def _settings(server: Server, model: Path, database_url: str, **overrides: object) -> Settings:
    return engine_settings(
        model, engine="openai", openai_base_url=server.base_url, database_url=database_url, **overrides
    )


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _server_running(server: Server) -> int:
    metrics = parse_metrics(httpx.get(f"{server.root}/metrics", timeout=5).text)
    return int(sum(metrics.get("vllm:num_requests_running", [])))


def test_jobs_through_the_server_keep_traces_tokens_and_timings_and_bad_inputs_fail_by_type(
    vllm_server: Server, tiny_model: Path, sqlite_url: str, tmp_path: Path
) -> None:
    sizes = [(448, 448), (200, 150), (1600, 1200), (640, 480)]  # 1 tile … 12 tiles + thumbnail
    files = {f"good-{w}x{h}.jpg": good_jpeg(w, h, seed=i) for i, (w, h) in enumerate(sizes)}
    bad = {
        "bad-empty.jpg": (empty(), ErrorType.INPUT_UNREADABLE),
        "bad-truncated.jpg": (truncated_jpeg(), ErrorType.INPUT_UNREADABLE),
        "bad-text.jpg": (not_an_image(), ErrorType.INPUT_UNREADABLE),
        "bad-bomb.png": (decompression_bomb_png(), ErrorType.INPUT_TOO_LARGE),
    }
    files.update({name: data for name, (data, _) in bad.items()})
    settings = _settings(vllm_server, tiny_model, sqlite_url)
    with running_pipeline(settings, engine=OpenAIEngine(settings)) as (pipeline, sessions):
        run_id = submit_folder(
            sessions, _write(tmp_path / "imgs", files), model=str(tiny_model), max_tokens=512, samples=2
        )
        pipeline.feed_run(run_id).result(timeout=120)
    jobs = jobs_by_name(sessions, run_id)
    for name, (_, error_type) in bad.items():
        assert (jobs[name].state, jobs[name].error_type) == (JobState.FAILED, error_type), name
    with sessions() as session:
        attempts = {a.job_id: a for a in session.scalars(select(Attempt))}
        results = session.scalars(select(Result).order_by(Result.job_id, Result.sample_index)).all()
    prompt_tokens: dict[str, int] = {}
    for name in (n for n in files if n.startswith("good")):
        job = jobs[name]
        assert job.state == JobState.SUCCEEDED, (name, job.error_message)
        attempt, samples = attempts[job.id], [r for r in results if r.job_id == job.id]
        assert [r.sample_index for r in samples] == [0, 1]  # n=2: both samples stored
        assert attempt.completion_tokens == sum(r.completion_tokens for r in samples)
        assert None not in (attempt.fetch_s, attempt.decode_s, attempt.generation_s, attempt.first_token_s)
        for result in samples:
            # The server's reasoning parser returned the trace apart; it is joined back and split as in-process.
            assert result.finish_reason == "stop" and result.trace_closed and result.reasoning is not None
            assert result.raw_text.split("</think>", 1)[1].strip() == result.answer
            assert result.reasoning_tokens and result.reasoning_tokens + (result.answer_tokens or 0) == (
                result.completion_tokens
            )
        assert attempt.prompt_tokens
        prompt_tokens[name] = attempt.prompt_tokens
    # One 448 px tile is 256 image tokens; the 1600x1200 image is 12 tiles plus a thumbnail.
    assert prompt_tokens["good-448x448.jpg"] < 300 < 13 * 256 < prompt_tokens["good-1600x1200.jpg"]


def test_prompts_over_the_context_fail_as_prompt_too_long_and_neighbours_succeed(
    vllm_server: Server, tiny_model: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """Too long as text (refused while rendering) and once images expand (refused after the tiling)."""
    folder = _write(tmp_path / "m", {"big.jpg": good_jpeg(1600, 1200), "small.jpg": good_jpeg(448, 448, 9)})
    manifest = folder / "jobs.jsonl"
    words = " ".join(["word"] * (MAX_MODEL_LEN + 100))
    manifest.write_text(
        '{"image": ["big.jpg", "big.jpg", "big.jpg"], "question": "Compare."}\n'
        f'{{"image": "small.jpg", "question": "{words}"}}\n'
        '{"image": "small.jpg", "question": "Describe."}\n'
    )
    settings = _settings(vllm_server, tiny_model, sqlite_url)
    with running_pipeline(settings, engine=OpenAIEngine(settings)) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, model=str(tiny_model), max_tokens=256, choices=("yes", "no"))
        pipeline.feed_run(run_id).result(timeout=120)
    with sessions() as session:
        outcome = {(len(j.images), j.question[:9]): (j.state, j.error_type) for j in session.scalars(select(Job))}
        answers = session.execute(select(Result.answer, Result.trace_closed)).all()
    assert outcome == {
        (3, "Compare."): (JobState.FAILED, ErrorType.PROMPT_TOO_LONG),
        (1, "word word"): (JobState.FAILED, ErrorType.PROMPT_TOO_LONG),
        (1, "Describe."): (JobState.SUCCEEDED, None),
    }
    # The constraint holds after the trace (the server's reasoning parser), as in-process.
    assert answers and all(answer in ("yes", "no") for answer, closed in answers if closed)


def test_samples_cut_by_max_tokens_keep_their_open_trace_and_the_job_is_truncated(
    vllm_server: Server, tiny_model: Path, sqlite_url: str, tmp_path: Path
) -> None:
    settings = _settings(vllm_server, tiny_model, sqlite_url)
    folder = _write(tmp_path / "imgs", {"a.jpg": good_jpeg(448, 448, 3)})
    with running_pipeline(settings, engine=OpenAIEngine(settings)) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder, model=str(tiny_model), max_tokens=3, ignore_eos=True, samples=6)
        pipeline.feed_run(run_id).result(timeout=60)
    assert _states(sessions, run_id) == {JobState.TRUNCATED}
    with sessions() as session:
        results = session.scalars(select(Result)).all()
    assert len(results) == 6
    for r in results:
        assert (r.finish_reason, r.completion_tokens) == ("length", 3)
        # The server returned an open trace as `reasoning` alone: no `</think>` is invented for it.
        assert r.trace_closed == ("</think>" in r.raw_text)
        if not r.trace_closed:
            assert (r.reasoning, r.answer, r.reasoning_tokens) == (r.raw_text.strip(), "", 3)
    assert not all(r.trace_closed for r in results)  # 3 tokens rarely close a trace of the tiny model


def test_a_long_request_runs_beside_short_ones_and_cancelling_it_aborts_it_on_the_server(
    vllm_server: Server, tiny_model: Path, sqlite_url: str, tmp_path: Path
) -> None:
    settings = _settings(vllm_server, tiny_model, sqlite_url)
    engine = OpenAIEngine(settings, metrics_interval_s=0.1)
    long_folder = _write(tmp_path / "long", {"long.jpg": good_jpeg(448, 448)})
    short_folder = _write(tmp_path / "short", {f"s{i}.jpg": good_jpeg(448, 448, seed=i) for i in range(4)})
    with running_pipeline(settings, engine=engine) as (pipeline, sessions):
        # As long as the context allows: it only ends when cancelled.
        long_run = submit_folder(
            sessions, long_folder, model=str(tiny_model), max_tokens=MAX_MODEL_LEN, ignore_eos=True
        )
        short_run = submit_folder(sessions, short_folder, model=str(tiny_model), max_tokens=256, ignore_eos=True)
        long_done = pipeline.feed_run(long_run)
        _wait_for(lambda: engine.telemetry.running >= 1, "the long request to run on the server")
        short_done = pipeline.feed_run(short_run)
        # Each short job (256 tokens: truncated, by design) is written as it ends, while the long one runs (a
        # run's feed returns only once the worker holds nothing, so it is the ledger that tells).
        _wait_for(lambda: _states(sessions, short_run) == {JobState.TRUNCATED}, "the short jobs", timeout=60)
        assert _states(sessions, long_run) == {JobState.RUNNING} and engine.telemetry.running >= 1
        assert engine.telemetry.max_running > 1  # the server ran requests of this worker side by side
        with sessions() as session, session.begin():
            cancel_run(session, run_id=long_run)
        # The next heartbeat sees the lost lease and aborts the request: the server stops generating it.
        _wait_for(lambda: _server_running(vllm_server) == 0, "the server to drop the aborted request")
        long_done.result(timeout=30)
        short_done.result(timeout=30)
    with sessions() as session:
        tokens = session.scalars(select(Result.completion_tokens).join(Job).where(Job.run_id == short_run)).all()
    assert _states(sessions, long_run) == {JobState.CANCELLED}
    assert tokens == [256] * 4


def test_start_refuses_a_server_that_serves_another_model_or_none(vllm_server: Server, tiny_model: Path) -> None:
    wrong_model = Settings(engine="openai", model="Skywork/Skywork-R1V3-38B", openai_base_url=vllm_server.base_url)
    with pytest.raises(ConfigurationError, match="--served-model-name"):
        asyncio.run(_start_and_stop(OpenAIEngine(wrong_model)))
    nobody = Settings(
        engine="openai", openai_base_url=f"http://127.0.0.1:{free_port()}/v1", openai_start_timeout_seconds=1
    )
    with pytest.raises(EngineDead, match="did not answer within 1s"):
        asyncio.run(_start_and_stop(OpenAIEngine(nobody)))


async def _start_and_stop(engine: OpenAIEngine) -> None:
    try:
        await engine.start()
    finally:
        await engine.shutdown()


def test_a_server_that_stays_unavailable_is_retried_then_declared_dead() -> None:
    """503s (a server restarting or overloaded) are retried for `openai_retry_seconds`, then the engine is
    dead: the worker hands its jobs back and exits for restart. A stand-in server: vLLM cannot be made to
    answer 503 on demand."""
    with _UnavailableServer() as (url, chat_calls):
        settings = Settings(
            engine="openai", model="m", openai_base_url=f"{url}/v1", openai_retry_seconds=2.0, max_tiles=6
        )
        request = GenerationRequest(
            request_id="job-1-attempt-1", images=[], question="?", sampling=SamplingSettings(), max_tiles=6
        )

        async def scenario() -> None:
            engine = OpenAIEngine(settings)
            await engine.start()
            try:
                with pytest.raises(EngineDead, match="unavailable: HTTP 503"):
                    await engine.generate(request)
            finally:
                await engine.shutdown()

        asyncio.run(scenario())
    assert len(chat_calls) >= 3  # retried with backoff, each time under a fresh request id
    assert len(set(chat_calls)) == len(chat_calls)


class _StandIn(BaseHTTPRequestHandler):
    """Answers the start-up probes like vLLM; every chat completion gets a 503."""

    chat_calls: list[str]

    def do_GET(self) -> None:
        self._json(200, b'{"data": [{"id": "m", "max_model_len": 8192}]}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/chat/completions":
            self.chat_calls.append(body.split(b'"request_id":', 1)[1].split(b",", 1)[0].decode())
            self._json(503, b'{"error": {"message": "Service Unavailable", "code": 503}}')
        elif self.path == "/detokenize":
            self._json(200, b'{"prompt": "<|im_start|>assistant\\n<think>\\n"}')
        else:
            self._json(200, b'{"tokens": [7]}')

    def _json(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class _UnavailableServer:
    def __init__(self) -> None:
        self.calls: list[str] = []
        handler = type("Handler", (_StandIn,), {"chat_calls": self.calls})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> tuple[str, list[str]]:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}", self.calls

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _states(sessions: sessionmaker[Session], run_id: int) -> set[JobState]:
    with sessions() as session:
        return {JobState(state) for state in session.scalars(select(Job.state).where(Job.run_id == run_id))}


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout:.0f}s for {what}")
