"""Raw vLLM vs the vlmbatch pipeline, side by side in one process run, on the GPU (R1V3-38B's shape with
dummy weights) or, for a dry run, on the CPU (the tiny model).

  1. raw: `LLM.chat` with every request at once (what a hand-written script does); engine shut down.
  2. pipeline: the embedded default (SQLite ledger, in-process worker, the engine on its own loop),
     the same images, question, sampling, ignore_eos and max_tokens; engine shut down.
  Each engine also runs a short-answer annotation workload (constrained choices, max_tokens 16).
  Running-batch size is sampled every 0.5 s in both (vLLM's metrics for raw, the engine's stat logger
  for the pipeline). Prints a table and writes results.json + timelines to --out.

    python bench/gpu/run_gpu_bench.py --shape r1v3 --n 256 --max-tokens 1024 --out $OUT   # on the H200
    python bench/gpu/run_gpu_bench.py --shape tiny --n 16 --max-tokens 32 --out /tmp/x     # CPU dry run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.workload import Measured, ledger_span, raw_vllm_chat, run_and_exit, table, write_images  # noqa: E402

CHOICES = ("indoor", "outdoor", "diagram", "other")
QUESTION = "Describe this image in detail."
T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


def engine_kwargs(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    common: dict[str, Any] = {
        "model": str(model),
        "trust_remote_code": True,
        "max_num_seqs": args.max_num_seqs,
        "max_model_len": args.max_model_len,
        "limit_mm_per_prompt": {"image": 1},
        "seed": 0,
        "reasoning_parser": "deepseek_r1",
    }
    if args.shape == "r1v3":
        common.update(load_format="dummy", gpu_memory_utilization=0.9)
        if getattr(args, "eager", False):
            common["enforce_eager"] = True
    else:
        common.update(enforce_eager=True, kv_cache_memory_bytes=1024 * 2**20)
    return common


class Sampler:
    """Samples a number every `period` seconds in a thread: the engine's running-batch size."""

    def __init__(self, read: Any, period: float = 0.5) -> None:
        self._read = read
        self._period = period
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            with contextlib.suppress(Exception):  # a metric not there yet
                self.points.append((round(time.monotonic() - self._started, 2), float(self._read())))

    def busy_mean(self) -> float:
        values = [v for _, v in self.points if v > 0]
        return sum(values) / len(values) if values else 0.0


def raw_running(llm: Any) -> float:
    for metric in llm.get_metrics():
        if metric.name == "vllm:num_requests_running":
            return float(getattr(metric, "value", 0.0))
    return 0.0


def run_raw(args: argparse.Namespace, model: Path, images: list[Path], annotate: list[Path]) -> dict[str, Any]:
    from vllm import LLM

    log("raw: starting LLM")
    started = time.monotonic()
    llm = LLM(**engine_kwargs(args, model), disable_log_stats=False)
    start_s = time.monotonic() - started
    log(f"raw: engine ready in {start_s:.0f}s")
    result: dict[str, Any] = {"engine_start_s": start_s}
    try:
        if images:
            with Sampler(lambda: raw_running(llm)) as batch:
                result["long"] = raw_vllm_chat(llm, images, max_tokens=args.max_tokens, max_tiles=12)
            result.update(batch=batch.points, batch_mean=batch.busy_mean())
            log(f"raw: {result['long'].output_tokens} tokens in {result['long'].wall_s:.1f}s")
        if annotate:
            result["short"] = raw_vllm_chat(llm, annotate, max_tokens=16, max_tiles=12, choices=CHOICES)
            log(f"raw annotation: {result['short'].requests} requests in {result['short'].wall_s:.1f}s")
    finally:
        llm.llm_engine.engine_core.shutdown()  # frees the GPU for the pipeline's engine
        gc.collect()
    return result


def pipeline_settings(args: argparse.Namespace, model: Path, database_url: str) -> Any:
    """The settings of the pipeline's engine, matching the raw engine's (`engine_kwargs`)."""
    from vlmbatch.schema.contracts.settings import Settings

    kwargs = engine_kwargs(args, model)
    return Settings(
        database_url=database_url,
        engine="vllm",
        model=str(model),
        trust_remote_code=True,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        max_images_per_prompt=1,
        load_format=kwargs.get("load_format"),
        gpu_memory_utilization=kwargs.get("gpu_memory_utilization", 0.9),
        enforce_eager=kwargs.get("enforce_eager", False),
        kv_cache_bytes=kwargs.get("kv_cache_memory_bytes"),
        reasoning_parser="deepseek_r1",
    )


def run_pipeline(
    args: argparse.Namespace, model: Path, images_dir: Path, annotate_dir: Path, work: Path
) -> dict[str, Any]:
    from vlmbatch.media.stores import ObjectStores
    from vlmbatch.producer.sources.open import open_source
    from vlmbatch.producer.sources.prompts import Prompting
    from vlmbatch.producer.submit import submit
    from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.worker.engines.thread import EngineThread
    from vlmbatch.worker.engines.vllm_engine import VllmEngine
    from vlmbatch.worker.pipeline.pipeline import Pipeline
    from vlmbatch.worker.transport.publisher import NullPublisher

    for stale in work.glob("ledger.db*"):  # a fresh ledger per bench run
        stale.unlink()
    database_url = f"sqlite:///{work / 'ledger.db'}"
    settings = pipeline_settings(args, model, database_url)
    _, sessions = open_ledger(database_url)
    vllm_engine = VllmEngine(settings)
    engine = EngineThread(vllm_engine)
    pipeline = Pipeline(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=ObjectStores(s3_endpoint_url=None),
        publisher=NullPublisher(),
        worker_id="bench",
    )
    log("pipeline: starting engine")
    started = time.monotonic()
    pipeline.start()
    start_s = time.monotonic() - started
    log(f"pipeline: engine ready in {start_s:.0f}s")

    def submit_run(folder: Path, name: str, sampling: SamplingSettings, **extra: Any) -> int:
        source = open_source(str(folder), prompting=Prompting.of(QUESTION), stores=ObjectStores())
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=source,
            settings=RunSettings(model=str(model), sampling=sampling, max_images_per_prompt=1, **extra),
            queue="bench",
            run_name=name,
            name_basis=QUESTION,
        )
        return report.run

    result: dict[str, Any] = {"engine_start_s": start_s}
    try:
        if args.n:
            run = submit_run(images_dir, "long", SamplingSettings(max_tokens=args.max_tokens, ignore_eos=True))
            with Sampler(lambda: vllm_engine.telemetry.running) as batch:
                pipeline.feed_run(run).result()
            result["long"] = ledger_span(database_url, run, "pipeline (embedded: vlmbatch run)")
            result.update(batch=batch.points, batch_mean=batch.busy_mean())
            log(f"pipeline: {result['long'].output_tokens} tokens in {result['long'].wall_s:.1f}s")
        if args.annotate_n:
            run = submit_run(annotate_dir, "annotate", SamplingSettings(max_tokens=16), choices=CHOICES)
            pipeline.feed_run(run).result()
            result["short"] = ledger_span(database_url, run, "pipeline, annotation")
            log(f"pipeline annotation: {result['short'].requests} requests in {result['short'].wall_s:.1f}s")
    finally:
        pipeline.stop()
    return result


def prepare_model(shape_name: str) -> tuple[Path, Path]:
    """The benchmark's work folder (BENCH_WORK) and a model folder of `shape_name` in it ("r1v3": R1V3-38B's
    shape without weights, for load_format="dummy"; "tiny": the smoke model with weights), offline."""
    work = Path(os.environ.get("BENCH_WORK", "/tmp/vlmbatch-gpu-bench"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_MODULES_CACHE", str(work / "hf_modules"))
    from vlmbatch.worker.engines.vllm_compat import install

    install()
    from vlmbatch.worker.smoke_model import R1V3_38B, TINY, build_model_folder

    shape = R1V3_38B if shape_name == "r1v3" else TINY
    return work, build_model_folder(work / f"model-{shape_name}", shape, weights=shape_name == "tiny")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["r1v3", "tiny"], default="r1v3")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--annotate-n", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=["raw", "pipeline"], default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work, model = prepare_model(args.shape)
    # One 448 px tile (256 image tokens) and one 1344x896 image (6 tiles + thumbnail), alternating.
    sizes = [(448, 448), (1344, 896)]
    images = write_images(work / "images", sizes, args.n) if args.n else []
    annotate = write_images(work / "annotate", sizes, args.annotate_n) if args.annotate_n else []
    log(f"model folder and {len(images)} + {len(annotate)} images ready")
    results: dict[str, Any] = {}
    try:
        if args.only != "pipeline":
            results["raw"] = run_raw(args, model, images, annotate)
            write_results(args, results)  # kept even if the call runs out of time later
        if args.only != "raw":
            results["pipeline"] = run_pipeline(args, model, work / "images", work / "annotate", work)
    except Exception:
        traceback.print_exc()
    write_results(args, results)
    return 0 if len(results) == (1 if args.only else 2) else 1


def write_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    rows: dict[str, Any] = {}
    for name, result in results.items():
        for key in ("long", "short"):
            if key in result:
                m: Measured = result[key]
                rows[f"{name}.{key}"] = dict(m.__dict__, output_tps=m.output_tps, requests_per_s=m.requests_per_s)
        if "batch" in result:
            (args.out / f"batch-{name}.json").write_text(json.dumps(result["batch"]))
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shape": args.shape,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "annotate_n": args.annotate_n,
        "rows": rows,
        "engine_start_s": {k: v["engine_start_s"] for k, v in results.items()},
        "running_batch_mean": {k: v.get("batch_mean") for k, v in results.items()},
    }
    raw, pipe = results.get("raw", {}), results.get("pipeline", {})
    if "long" in raw and "long" in pipe:
        summary["ratio_output_tps"] = pipe["long"].output_tps / raw["long"].output_tps
        print(table([raw["long"], pipe["long"]], raw["long"]))
    if "short" in raw and "short" in pipe:
        summary["ratio_annotation_rps"] = pipe["short"].requests_per_s / raw["short"].requests_per_s
        print(table([raw["short"], pipe["short"]], raw["short"]))
    (args.out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str), flush=True)


if __name__ == "__main__":
    run_and_exit(main)
