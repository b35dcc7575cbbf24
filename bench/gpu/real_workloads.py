"""GPU benchmarks of users' workloads, each comparison in one process run (one device call):

  longtail  per-job max_tokens (ignore_eos) drawn from a lognormal fitted to R1V3-like traces, seed fixed:
            raw `LLM.chat` with every request at once, the naive Celery-style baseline (chunks of 64
            through `LLM.chat`, one after another, on the same engine), and the vlmbatch pipeline
            (embedded, SQLite ledger). Running-batch timelines of all three.
  fp8       raw `LLM.chat` in bf16 beside `vlmbatch run ... --engine-arg quantization=fp8 --engine-arg
            kv_cache_dtype=fp8` (the real command line, a child process), same requests; KV-cache sizes.
  multiq    several questions per image (annotation): raw `LLM.chat` with the requests image-grouped beside
            `vlmbatch run IMAGES -q ... x8` (the real command line), same requests.
  server    the model card's path: `vllm serve` (its flags) with `vlmbatch run --engine openai` against it,
            beside `vlmbatch run` with the engine in process; same requests, one after the other.

R1V3-38B's shape with dummy weights on the H200 (`--shape r1v3`), or the tiny model on the CPU for a dry
run (`--shape tiny`). Writes results-<mode>.json, the timelines and a table to --out.

    python bench/gpu/real_workloads.py longtail --shape r1v3 --n 1024 --out $OUT
    python bench/gpu/real_workloads.py fp8 --shape r1v3 --n 256 --max-tokens 512 --out $OUT
    python bench/gpu/real_workloads.py server --shape r1v3 --n 256 --max-tokens 512 --out $OUT
    python bench/gpu/real_workloads.py longtail --shape tiny --n 24 --median 8 --p95 24 --cap 40 --out /tmp/x
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu.run_gpu_bench import (  # noqa: E402
    Sampler,
    engine_kwargs,
    log,
    pipeline_settings,
    prepare_model,
    raw_running,
)
from bench.workload import Measured, ledger_span, raw_vllm_chat, run_and_exit, table, write_images  # noqa: E402

QUESTION = "Describe this image in detail."
NAIVE_CHUNK = 64


def lognormal_lengths(n: int, *, median: float, p95: float, cap: int, seed: int) -> list[int]:
    """`n` output lengths from the lognormal with this median and 95th percentile, clipped to [1, cap]."""
    sigma = math.log(p95 / median) / 1.6449  # the standard normal's 95th percentile
    rng = random.Random(seed)
    return [max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def distribution(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "n": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": ordered[-1],
        "total": sum(ordered),
    }


def _conversations(images: list[Path]) -> list[Any]:
    from PIL import Image

    conversations = []
    for path in images:  # decoding is part of what a script does
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        content = [{"type": "image_pil", "image_pil": image}, {"type": "text", "text": QUESTION}]
        conversations.append([{"role": "user", "content": content}])
    return conversations


def _params(lengths: list[int]) -> list[Any]:
    from vllm import SamplingParams

    return [
        SamplingParams(temperature=0.6, top_p=0.95, repetition_penalty=1.05, max_tokens=n, ignore_eos=True)
        for n in lengths
    ]


def raw_chat(llm: Any, images: list[Path], lengths: list[int], *, chunk: int | None, label: str) -> Measured:
    """Every request at once (chunk None), or chunk by chunk, each waiting for the one before."""
    started = time.perf_counter()
    conversations, params = _conversations(images), _params(lengths)
    step = chunk or len(conversations)
    outputs: list[Any] = []
    for i in range(0, len(conversations), step):
        outputs += llm.chat(
            conversations[i : i + step],
            params[i : i + step],
            use_tqdm=False,
            mm_processor_kwargs={"max_dynamic_patch": 12},
        )
    return Measured(
        label=label,
        requests=len(outputs),
        wall_s=time.perf_counter() - started,
        output_tokens=sum(len(c.token_ids) for o in outputs for c in o.outputs),
        prompt_tokens=sum(len(o.prompt_token_ids or ()) for o in outputs),
    )


def kv_cache_tokens(llm: Any) -> int | None:
    try:
        cache = llm.llm_engine.vllm_config.cache_config
        return int(cache.num_gpu_blocks * cache.block_size)
    except (AttributeError, TypeError):
        return None


def run_longtail(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    from vllm import LLM

    lengths = lognormal_lengths(args.n, median=args.median, p95=args.p95, cap=args.cap, seed=args.seed)
    spread = distribution(lengths)
    log(f"lengths: {spread}")
    images = write_images(work / "longtail", [(448, 448)], args.n)
    result: dict[str, Any] = {"distribution": spread, "seed": args.seed}
    llm = LLM(**engine_kwargs(args, model), disable_log_stats=False)
    try:
        with Sampler(lambda: raw_running(llm)) as batch:
            result["raw"] = raw_chat(llm, images, lengths, chunk=None, label="raw vLLM, all requests at once")
        result["batch_raw"] = batch.points
        log(f"raw: {result['raw'].output_tps:.1f} tok/s")
        with Sampler(lambda: raw_running(llm)) as batch:
            result["naive"] = raw_chat(
                llm, images, lengths, chunk=NAIVE_CHUNK, label=f"naive, chunks of {NAIVE_CHUNK} one by one"
            )
        result["batch_naive"] = batch.points
        log(f"naive: {result['naive'].output_tps:.1f} tok/s")
    finally:
        llm.llm_engine.engine_core.shutdown()
        gc.collect()
    result.update(_pipeline_longtail(args, model, work, images, lengths))
    return result


def _pipeline_longtail(
    args: argparse.Namespace, model: Path, work: Path, images: list[Path], lengths: list[int]
) -> dict[str, Any]:
    from sqlalchemy import select, update

    from vlmbatch.media.stores import ObjectStores
    from vlmbatch.producer.sources.open import open_source
    from vlmbatch.producer.sources.prompts import Prompting
    from vlmbatch.producer.submit import submit
    from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.schema.ledger.tables import Job
    from vlmbatch.worker.engines.thread import EngineThread
    from vlmbatch.worker.engines.vllm_engine import VllmEngine
    from vlmbatch.worker.pipeline.pipeline import Pipeline
    from vlmbatch.worker.transport.publisher import NullPublisher

    for stale in work.glob("longtail.db*"):
        stale.unlink()
    database_url = f"sqlite:///{work / 'longtail.db'}"
    settings = pipeline_settings(args, model, database_url)
    _, sessions = open_ledger(database_url)
    source = open_source(str(images[0].parent), prompting=Prompting.of(QUESTION), stores=ObjectStores())
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=source,
        settings=RunSettings(
            model=str(model), sampling=SamplingSettings(max_tokens=args.cap, ignore_eos=True), max_images_per_prompt=1
        ),
        queue="bench",
        run_name="longtail",
        name_basis=QUESTION,
    )
    # Each job's own length, as a per-job override (what `resubmit --max-tokens` stores): by image name.
    by_name = {path.name: n for path, n in zip(images, lengths, strict=True)}
    with sessions() as session, session.begin():
        for job_id, uris in session.execute(select(Job.id, Job.images).where(Job.run_id == report.run)).all():
            n = by_name[Path(uris[0]).name]
            session.execute(update(Job).where(Job.id == job_id).values(overrides={"max_tokens": n}))
    vllm_engine = VllmEngine(settings)
    pipeline = Pipeline(
        settings=settings,
        engine=EngineThread(vllm_engine),
        sessions=sessions,
        store=ObjectStores(s3_endpoint_url=None),
        publisher=NullPublisher(),
        worker_id="bench",
    )
    pipeline.start()
    try:
        with Sampler(lambda: vllm_engine.telemetry.running) as batch:
            pipeline.feed_run(report.run).result()
    finally:
        pipeline.stop()
    measured = ledger_span(database_url, report.run, "vlmbatch pipeline (embedded)")
    log(f"pipeline: {measured.output_tps:.1f} tok/s")
    return {"pipeline": measured, "batch_pipeline": batch.points}


def run_fp8(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    from vllm import LLM

    images = write_images(work / "fp8", [(448, 448), (1344, 896)], args.n)
    result: dict[str, Any] = {}
    llm = LLM(**engine_kwargs(args, model), disable_log_stats=False)
    try:
        result["kv_tokens_raw"] = kv_cache_tokens(llm)
        result["raw"] = raw_vllm_chat(llm, images, max_tokens=args.max_tokens, max_tiles=12)
        log(f"raw bf16: {result['raw'].output_tps:.1f} tok/s, KV {result['kv_tokens_raw']} tokens")
    finally:
        llm.llm_engine.engine_core.shutdown()
        gc.collect()
    result.update(_cli_run_fp8(args, model, work, images[0].parent))
    return result


def _cli_run_fp8(args: argparse.Namespace, model: Path, work: Path, folder: Path) -> dict[str, Any]:
    """The pipeline through the real command line, FP8 asked for with --engine-arg."""
    env: dict[str, str] = {}
    if args.shape == "r1v3":
        env["VLMBATCH_LOAD_FORMAT"] = "dummy"
        extra = ["--engine-arg", "quantization=fp8", "--engine-arg", "kv_cache_dtype=fp8"]
    else:  # the CPU build has no FP8 weights; its KV cache takes fp8
        env["VLMBATCH_KV_CACHE_BYTES"] = str(1024 * 2**20)
        extra = ["--enforce-eager", "--engine-arg", "kv_cache_dtype=fp8"]
    measured, output = _vlmbatch_run(args, work, folder, "fp8", str(model), ["--trust-remote-code", *extra], env)
    sizes = re.findall(r"KV cache size: ([\d,]+) tokens", output)
    log(f"pipeline fp8: {measured.output_tps:.1f} tok/s, KV {sizes}")
    return {"pipeline": measured, "kv_tokens_pipeline": int(sizes[-1].replace(",", "")) if sizes else None}


def _vlmbatch_run(
    args: argparse.Namespace, work: Path, folder: Path, name: str, model: str, extra: list[str], env: dict[str, str]
) -> tuple[Measured, str]:  # the first question is QUESTION, or ATTRIBUTES[0] for multiq
    """`vlmbatch run` as a user types it (a child process, its own embedded ledger): its span and output."""
    import shutil

    home = work / f"{name}-home"
    shutil.rmtree(home, ignore_errors=True)
    full_env = dict(os.environ, VLMBATCH_HOME=str(home), VLMBATCH_REASONING_PARSER="deepseek_r1", **env)
    command = [
        sys.executable, "-m", "vlmbatch.producer.cli", "run", str(folder),
        "-q", ATTRIBUTES[0] if name == "multiq" else QUESTION, "--model", model,
        "--max-tokens", str(args.max_tokens), "--ignore-eos", "--max-images", "1",
        "--max-num-seqs", str(args.max_num_seqs), "--max-model-len", str(args.max_model_len), "--json", *extra,
    ]  # fmt: skip
    log(f"{name}: " + " ".join(command[2:]))
    done = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=args.child_timeout)
    output = done.stdout + done.stderr
    (args.out / f"{name}-cli-log.txt").write_text(output[-400_000:])
    if done.returncode != 0:
        raise RuntimeError(f"vlmbatch run exited {done.returncode}: {done.stderr[-2000:]}")
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run"]
    label = f"vlmbatch run ({name})"
    return ledger_span(f"sqlite:///{(home / 'vlmbatch.db').resolve()}", run_id, label), output


ATTRIBUTES = (
    "What is the main color?",
    "Is it indoors?",
    "Is there a person?",
    "Is there text?",
    "Is it a photo or a drawing?",
    "How many objects are there?",
    "Is it daytime?",
    "What shape is in the middle?",
)


def run_multiq(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    """Eight questions about each image: raw vLLM given the requests grouped by image (each image's eight
    next to each other, so its prefix is cached once), then `vlmbatch run -q ... x8` on the same images."""
    from vllm import LLM, SamplingParams

    images = write_images(work / "multiq", [(448, 448), (1344, 896)], args.n)
    conversations = []
    started = time.perf_counter()
    for convo in _conversations(images):
        image_part = convo[0]["content"][0]
        for question in ATTRIBUTES:
            content = [image_part, {"type": "text", "text": question}]
            conversations.append([{"role": "user", "content": content}])
    params = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=args.max_tokens, ignore_eos=True)
    result: dict[str, Any] = {}
    llm = LLM(**engine_kwargs(args, model), disable_log_stats=False)
    try:
        started = time.perf_counter()
        outputs = llm.chat(conversations, params, use_tqdm=False, mm_processor_kwargs={"max_dynamic_patch": 12})
        result["raw"] = Measured(
            label="raw vLLM LLM.chat, image-grouped",
            requests=len(outputs),
            wall_s=time.perf_counter() - started,
            output_tokens=sum(len(c.token_ids) for o in outputs for c in o.outputs),
            prompt_tokens=sum(len(o.prompt_token_ids or ()) for o in outputs),
        )
        log(f"raw: {result['raw'].requests_per_s:.2f} req/s")
    finally:
        llm.llm_engine.engine_core.shutdown()
        gc.collect()
    extra = ["--trust-remote-code"] + [x for q in ATTRIBUTES[1:] for x in ("-q", q)]
    env: dict[str, str] = {}
    if args.shape == "r1v3":
        env["VLMBATCH_LOAD_FORMAT"] = "dummy"
    else:
        env["VLMBATCH_KV_CACHE_BYTES"] = str(1024 * 2**20)
    if engine_kwargs(args, model).get("enforce_eager"):
        extra.append("--enforce-eager")
    result["pipeline"], _ = _vlmbatch_run(args, work, images[0].parent, "multiq", str(model), extra, env)
    log(f"pipeline: {result['pipeline'].requests_per_s:.2f} req/s")
    return result


def run_server(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    """`vllm serve` as R1V3's model card starts it, and `vlmbatch run --engine openai` against it; then the
    same requests with the engine in process. The in-process run is the baseline of the ratio."""
    import socket
    import urllib.request

    import vllm

    folder = write_images(work / "server", [(448, 448), (1344, 896)], args.n)[0].parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    served = "skywork-r1v3"
    server = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--trust-remote-code",
        "--limit-mm-per-prompt", '{"image": 20}', "--reasoning-parser", "deepseek_r1", "--served-model-name", served,
        "--port", str(port), "--host", "127.0.0.1", "--max-num-seqs", str(args.max_num_seqs),
        "--max-model-len", str(args.max_model_len),
    ]  # fmt: skip
    if tuple(int(x) for x in vllm.__version__.split(".")[:2]) >= (0, 32):
        server.append("--trust-request-mm-kwargs")  # per-request tile bounds need it from 0.32 on
    engine_env: dict[str, str] = {}
    if args.shape == "r1v3":
        server += ["--load-format", "dummy", "--gpu-memory-utilization", "0.9"]
        engine_env["VLMBATCH_LOAD_FORMAT"] = "dummy"
    else:
        server += ["--enforce-eager", "--kv-cache-memory-bytes", str(1024 * 2**20)]
        engine_env["VLMBATCH_KV_CACHE_BYTES"] = str(1024 * 2**20)
    log("server: " + " ".join(server[2:]))
    result: dict[str, Any] = {}
    log_file = (args.out / "server-vllm-log.txt").open("w")
    process = subprocess.Popen(server, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + args.child_timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("the vLLM server exited; see server-vllm-log.txt") from None
                time.sleep(2)
        log("server: ready")
        openai_env = {"VLMBATCH_ENGINE": "openai", "VLMBATCH_OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
        result["served"], _ = _vlmbatch_run(args, work, folder, "openai-engine", served, [], openai_env)
        log(f"openai engine: {result['served'].output_tps:.1f} tok/s")
    finally:
        process.terminate()
        process.wait(timeout=60)
        log_file.close()
    extra = ["--trust-remote-code"] + (["--enforce-eager"] if args.shape == "tiny" else [])
    result["raw"], _ = _vlmbatch_run(args, work, folder, "in-process", str(model), extra, engine_env)
    log(f"in process: {result['raw'].output_tps:.1f} tok/s")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["longtail", "fp8", "server", "multiq"])
    parser.add_argument("--eager", action="store_true", help="enforce_eager: no CUDA graphs or compile")
    parser.add_argument("--shape", choices=["r1v3", "tiny"], default="r1v3")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--median", type=float, default=64)
    parser.add_argument("--p95", type=float, default=400)
    parser.add_argument("--cap", type=int, default=800)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--child-timeout", type=float, default=420)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work, model = prepare_model(args.shape)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result: dict[str, Any] = {}
    try:
        modes = {"longtail": run_longtail, "fp8": run_fp8, "server": run_server, "multiq": run_multiq}
        result = modes[args.mode](args, model, work)
    finally:
        write_results(args, started, result)
    return 0


def write_results(args: argparse.Namespace, started: str, result: dict[str, Any]) -> None:
    rows = {k: v for k, v in result.items() if isinstance(v, Measured)}
    summary: dict[str, Any] = {"date": started, "mode": args.mode, "shape": args.shape, "args": vars(args)}
    for key, value in result.items():
        if key.startswith("batch_"):
            (args.out / f"{args.mode}-{key}.json").write_text(json.dumps(value))
        elif not isinstance(value, Measured):
            summary[key] = value
    summary["rows"] = {k: dict(m.__dict__, output_tps=m.output_tps) for k, m in rows.items()}
    if "raw" in rows:
        summary["ratios"] = {k: m.output_tps / rows["raw"].output_tps for k, m in rows.items()}
        if "naive" in rows and "pipeline" in rows:
            summary["ratios"]["pipeline_vs_naive"] = rows["pipeline"].output_tps / rows["naive"].output_tps
        print(table(list(rows.values()), rows["raw"]), flush=True)
    (args.out / f"results-{args.mode}.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str), flush=True)


if __name__ == "__main__":
    run_and_exit(main)
