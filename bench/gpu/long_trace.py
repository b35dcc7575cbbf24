"""Long reasoning traces at the KV-cache limit (issue 27): raw vLLM and the vlmbatch pipeline, each row in a
child process of its own (its engine's memory is freed when it exits), measured over a fixed window after a
warm-up from vLLM's own counters. One command, which ends by itself within --budget-s.

Workload: --n jobs, images alternating 448x448 (1 tile) and 1344x896 (6 tiles + thumbnail), each job's
output length drawn from a lognormal (median 2,000, p95 8,000, clipped at 16,000: reasoning traces have a
long right tail, and 16k is the default max_tokens). Every job asks for max_tokens = the cap; the logits
processor bench/gpu/forced_length.py, loaded into every engine, ends each at its drawn length, keyed by the
job tag in its prompt, so neither raw vLLM nor the worker knows the lengths in advance.

Rows (--rows, comma-separated):
  raw-default       `LLM.chat` with every request at once, vLLM's defaults (at --precision)
  raw-tuned         the same with the README's advice: watermark 0.05, gpu_memory_utilization 0.95,
                    max_num_seqs = KV pool / expected context (worker/engines/profiles.py)
  pipeline-default  the embedded pipeline (SQLite ledger, in-process worker), vlmbatch's defaults (at --precision)
  pipeline-profile  the pipeline with `--profile throughput`
Per row: output tokens/s in the window (vllm:generation_tokens), preemptions (vllm:num_preemptions) in the
window and in all, mean running and waiting requests and KV use (gauges sampled every 0.5 s), mean
inter-token latency, and the fraction of the KV-bound roofline:
  resident context C = mean prompt tokens + E[L^2] / (2 E[L])   (a sequence's average KV over its life,
                                                                 weighted by its duration; L = drawn lengths)
  B* = min(KV pool tokens / C, max_num_seqs);  roofline tok/s = B* / mean inter-token latency
  fraction = window tok/s / roofline tok/s
On an 80 GB H100 R1V3 does not fit in bf16: use --precision fp8 (raw rows and pipeline-default in FP8).

    python bench/gpu/long_trace.py --shape r1v3 --precision fp8 --n 384 --out $OUT           # H100, 9 min
    # Longer windows: two rows a call (same warm machine, same BENCH_WORK: vLLM's compile cache is reused)
    python bench/gpu/long_trace.py --shape r1v3 --rows raw-default,pipeline-default --out $OUT
    python bench/gpu/long_trace.py --shape r1v3 --rows raw-tuned,pipeline-profile --out $OUT
Each row gets an equal share of what is left of --budget-s; warm-up and window shrink to fit it (a 38B
engine starts in 30-80 s), and a row with under a minute left is skipped. With a logits processor loaded,
vLLM 0.26 runs the V1 model runner (its V2 runner takes no custom logits processors), in every row alike.
    python bench/gpu/long_trace.py --shape tiny --precision bf16 --n 24 --median 40 --p95 120 --cap 200 \
        --warmup-s 5 --window-s 15 --budget-s 400 --out /tmp/lt                               # CPU dry run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1].parent
sys.path.insert(0, str(ROOT))

from bench.gpu.real_workloads import distribution, lognormal_lengths  # noqa: E402
from bench.gpu.run_gpu_bench import log, prepare_model  # noqa: E402
from bench.workload import run_and_exit, write_images  # noqa: E402

ROWS = ("raw-default", "raw-tuned", "pipeline-default", "pipeline-profile")
PROCESSOR = "bench.gpu.forced_length:ForcedLength"
TAG = re.compile(r"\[job (\d+)\]")
QUESTION = "Describe this image in detail."
SIZES = [(448, 448), (1344, 896)]
# InternVL tiles of SIZES (256 tokens each, thumbnail included) and the chat template's text, for C.
PROMPT_TOKENS_ESTIMATE = ((1 + 7) * 256) / 2 + 40
TUNED_WATERMARK = 0.05
# A row needs at least this long (engine start, warm-up and a window) or it is skipped.
MIN_ROW_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["r1v3", "tiny"], default="r1v3")
    parser.add_argument("--precision", choices=["fp8", "bf16"], default="fp8")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--n", type=int, default=384)
    parser.add_argument("--median", type=float, default=2000)
    parser.add_argument("--p95", type=float, default=8000)
    parser.add_argument("--cap", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--window-s", type=float, default=90.0)
    parser.add_argument("--budget-s", type=float, default=530.0, help="The whole command ends within this.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--row-deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return run_child(args) if args.child else orchestrate(args)


# -- the parent: workload, one child per row, the table -------------------------------------------------------


def orchestrate(args: argparse.Namespace) -> int:
    deadline = time.time() + args.budget_s
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        print(f"unknown rows {unknown}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    work, _ = prepare_model(args.shape)
    lengths = lognormal_lengths(args.n, median=args.median, p95=args.p95, cap=args.cap, seed=args.seed)
    images = write_images(work / "images", SIZES, args.n)
    (work / "lengths.json").write_text(json.dumps({f"{i:06d}": n for i, n in enumerate(lengths)}))
    with (work / "manifest.jsonl").open("w") as manifest:
        for i, image in enumerate(images):
            manifest.write(json.dumps({"image": f"images/{image.name}", "question": tagged(i)}) + "\n")
    log(f"{args.n} jobs, lengths {distribution(lengths)}")
    results: dict[str, Any] = {}
    for index, row in enumerate(rows):
        allowance = (deadline - time.time() - 10) / (len(rows) - index)
        if allowance < MIN_ROW_S:
            results[row] = {"skipped": f"{allowance:.0f} s left for it"}
            continue
        results[row] = run_row(args, row, work, time.time() + allowance)
        write_results(args, lengths, results)
    write_results(args, lengths, results)
    return 0 if all("output_tps" in r for r in results.values()) else 1


def tagged(index: int) -> str:
    return f"{QUESTION} [job {index:06d}]"


def run_row(args: argparse.Namespace, row: str, work: Path, row_deadline: float) -> dict[str, Any]:
    env = dict(os.environ, BENCH_LENGTHS=str(work / "lengths.json"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", row]
    command += ["--row-deadline", f"{row_deadline:.1f}"]
    log(f"{row}: starting ({row_deadline - time.time():.0f} s)")
    with (args.out / f"{row}.log").open("wb") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            child.wait(timeout=max(1.0, row_deadline - time.time() + 20))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        # The child's engine processes too, whether it timed out or ended: an engine core or worker that
        # outlives its row (seen on the CPU build) would hold the next row's memory.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    path = args.out / f"{row}.json"
    result = json.loads(path.read_text()) if path.exists() else {"error": f"no result (exit {child.returncode})"}
    log(f"{row}: {json.dumps({k: v for k, v in result.items() if not isinstance(v, list)})}")
    return dict(result)


def write_results(args: argparse.Namespace, lengths: list[int], results: dict[str, Any]) -> None:
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shape": args.shape,
        "precision": args.precision,
        "n": args.n,
        "lengths": distribution(lengths),
        "resident_context_formula": "mean prompt + E[L^2] / (2 E[L])",
        "roofline_formula": "min(KV pool / resident context, max_num_seqs) / mean inter-token latency",
        "rows": results,
    }
    base = results.get("raw-default", {}).get("output_tps")
    columns = ["row", "tok/s", "x raw", "preempt (win/all)", "running", "waiting", "KV use", "ITL ms", "roofline"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row, r in results.items():
        if "output_tps" not in r:
            lines.append(f"| {row} | {r.get('skipped') or r.get('error')} |" + " |" * (len(columns) - 2))
            continue
        ratio = f"{r['output_tps'] / base:.3f}" if base else "-"
        cells = [
            row,
            f"{r['output_tps']:.1f}",
            ratio,
            f"{r['preemptions_window']}/{r['preemptions_total']}",
            f"{r['running_mean']:.1f}",
            f"{r['waiting_mean']:.1f}",
            f"{r['kv_usage_mean']:.2f}",
            f"{1000 * r['itl_mean_s']:.1f}" if r.get("itl_mean_s") else "-",
            f"{r['roofline_fraction']:.2f}" if r.get("roofline_fraction") else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    summary["table"] = table
    (args.out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    (args.out / "results.md").write_text(table + "\n")
    print(table, flush=True)


# -- a child: one engine, the workload, the window ----------------------------------------------------------


def run_child(args: argparse.Namespace) -> int:
    work = Path(os.environ.get("BENCH_WORK", "/tmp/vlmbatch-gpu-bench"))
    model = work / f"model-{args.shape}"
    if not (model / "config.json").exists():  # the parent built it; a child run by hand builds its own
        work, model = prepare_model(args.shape)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_MODULES_CACHE", str(work / "hf_modules"))
    from vlmbatch.worker.engines.vllm_compat import install

    install()
    lengths = [int(v) for v in json.loads((work / "lengths.json").read_text()).values()]
    images = sorted((work / "images").glob("*.jpg"))
    expected_context = resident_context(PROMPT_TOKENS_ESTIMATE, lengths)
    started = time.monotonic()
    if args.child.startswith("raw"):
        engine, workload, finished = start_raw(args, model, images, expected_context)
    else:
        engine, workload, finished = start_pipeline(args, model, work, expected_context)
    result: dict[str, Any] = {"engine_start_s": time.monotonic() - started, **engine}
    thread = threading.Thread(target=workload, daemon=True)
    thread.start()
    result.update(measure(args, lengths, thread, result))
    result["forced_lengths"] = length_check(finished(), lengths)
    (args.out / f"{args.child}.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


def precision_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"quantization": "fp8", "kv_cache_dtype": "fp8"} if args.precision == "fp8" else {}


def cpu_args(args: argparse.Namespace) -> dict[str, Any]:
    """vLLM's CPU build has no FP8 kernels: the tiny dry run keeps bf16 explicitly, over the profile's."""
    return {"quantization": None, "kv_cache_dtype": "auto"} if args.shape == "tiny" else {}


def shape_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.shape == "r1v3":
        return {"load_format": "dummy"}
    return {"enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20}


def start_raw(args: argparse.Namespace, model: Path, images: list[Path], expected_context: int) -> tuple[Any, ...]:
    from PIL import Image
    from vllm import LLM, SamplingParams

    kwargs: dict[str, Any] = {
        "model": str(model),
        "trust_remote_code": True,
        "max_model_len": args.max_model_len,
        "limit_mm_per_prompt": {"image": 1},
        "seed": 0,
        "logits_processors": [PROCESSOR],
        **shape_args(args),
        **precision_args(args),
    }
    if args.child == "raw-tuned":
        kwargs.update(watermark=TUNED_WATERMARK, max_num_seqs=tuned_max_num_seqs(args, model, expected_context))
        if args.shape == "r1v3":
            kwargs["gpu_memory_utilization"] = 0.95
    llm = LLM(**kwargs, disable_log_stats=False)
    params = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=args.cap)
    conversations = []
    for index, path in enumerate(images):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        content = [{"type": "image_pil", "image_pil": image}, {"type": "text", "text": tagged(index)}]
        conversations.append([{"role": "user", "content": content}])

    finished: list[tuple[int, int]] = []

    def workload() -> None:
        outputs = llm.chat(conversations, params, use_tqdm=False, mm_processor_kwargs={"max_dynamic_patch": 12})
        finished.extend((index, len(o.outputs[0].token_ids)) for index, o in enumerate(outputs))  # in order

    facts = engine_facts(llm.llm_engine.vllm_config, {k: v for k, v in kwargs.items() if k != "model"})
    return facts, workload, lambda: finished


def tuned_max_num_seqs(args: argparse.Namespace, model: Path, expected_context: int) -> int:
    """max_num_seqs as the README advises: the KV pool over the expected context (worker/engines/profiles.py)."""
    from vlmbatch.worker.engines.profiles import gpu_memory_bytes, model_sizes, plan_kv

    sizes = model_sizes(str(model))
    plan = sizes and plan_kv(
        sizes,
        gpu_bytes=gpu_memory_bytes(),
        kv_cache_bytes=shape_args(args).get("kv_cache_memory_bytes"),
        utilization=0.95,
        gpus=1,
        quantization=precision_args(args).get("quantization"),
        kv_cache_dtype=precision_args(args).get("kv_cache_dtype", "auto"),
        expected_context_tokens=expected_context,
    )
    return plan.max_num_seqs if plan else 256


def start_pipeline(args: argparse.Namespace, model: Path, work: Path, expected_context: int) -> tuple[Any, ...]:
    from vlmbatch.media.stores import ObjectStores
    from vlmbatch.producer.reports.export import export_run
    from vlmbatch.producer.reports.records import ExportFilter
    from vlmbatch.producer.sources.open import open_source
    from vlmbatch.producer.submit import submit
    from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
    from vlmbatch.schema.contracts.settings import Settings
    from vlmbatch.schema.contracts.states import JobState
    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.schema.ledger.runs import get_run
    from vlmbatch.worker.engines.profiles import apply_profile, gpu_memory_bytes
    from vlmbatch.worker.engines.thread import EngineThread
    from vlmbatch.worker.engines.vllm_engine import VllmEngine
    from vlmbatch.worker.pipeline.pipeline import Pipeline
    from vlmbatch.worker.transport.publisher import NullPublisher

    ledger = work / f"{args.child}.db"
    for stale in work.glob(f"{args.child}.db*"):
        stale.unlink()
    extra = shape_args(args)
    settings = Settings(
        database_url=f"sqlite:///{ledger}",
        engine="vllm",
        model=str(model),
        queue="bench",
        trust_remote_code=True,
        max_model_len=args.max_model_len,
        max_images_per_prompt=1,
        load_format=extra.get("load_format"),
        enforce_eager=extra.get("enforce_eager", False),
        kv_cache_bytes=extra.get("kv_cache_memory_bytes"),
        reasoning_parser="deepseek_r1",
        engine_args={"logits_processors": [PROCESSOR], **precision_args(args), **cpu_args(args)},
        **(
            {"profile": "throughput", "expected_context_tokens": expected_context}
            if args.child.endswith("profile")
            else {}
        ),
    )
    settings, chosen = apply_profile(settings, gpu_bytes=gpu_memory_bytes())
    _, sessions = open_ledger(settings.resolved_database_url())
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
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=open_source(str(work / "manifest.jsonl"), stores=ObjectStores()),
        settings=RunSettings(
            model=str(model), sampling=SamplingSettings(max_tokens=args.cap, temperature=0.6, top_p=0.95)
        ),
        queue="bench",
        run_name=args.child,
    )

    def workload() -> None:
        pipeline.feed_run(report.run).result()

    def finished() -> list[tuple[int, int]]:
        # Read back through the export users run (jsonl), not the ledger's tables.
        out = work / f"{args.child}-results.jsonl"
        with sessions() as session:
            run = get_run(session, report.run)
        states = (JobState.SUCCEEDED, JobState.TRUNCATED)
        export_run(sessions, run=run, fmt="jsonl", out=out, selection=ExportFilter(states=states))
        records = [json.loads(line) for line in out.read_text().splitlines()]
        return [(int(TAG.findall(r["question"])[-1]), int(r["completion_tokens"])) for r in records]

    facts = engine_facts(vllm_engine._llm.vllm_config, dict(vllm_engine.effective_engine_args))
    facts["profile"] = chosen
    return facts, workload, finished


def length_check(finished: list[tuple[int, int]], lengths: list[int]) -> dict[str, Any]:
    """How closely the finished jobs' output lengths match their drawn ones (the logits processor's work)."""
    off = [abs(tokens - lengths[index]) for index, tokens in finished]
    return {"finished": len(off), "exact": sum(1 for d in off if d == 0), "max_off": max(off, default=None)}


def engine_facts(vllm_config: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    cache, scheduler = vllm_config.cache_config, vllm_config.scheduler_config
    blocks = getattr(cache, "num_gpu_blocks", None)
    return {
        "engine_args": {k: v for k, v in arguments.items() if isinstance(v, (str, int, float, bool, list, dict))},
        "max_num_seqs": scheduler.max_num_seqs,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "kv_pool_tokens": blocks * cache.block_size if blocks else None,
    }


def resident_context(prompt_tokens: float, lengths: list[int]) -> int:
    """A sequence's KV, averaged over its life and weighted by its duration: prompt + E[L^2] / (2 E[L])."""
    mean = sum(lengths) / len(lengths)
    return round(prompt_tokens + sum(n * n for n in lengths) / len(lengths) / (2 * mean))


def snapshot() -> dict[str, float]:
    """vLLM's Prometheus metrics in this process: counters and gauges by name (labels summed), histograms
    as `<name>:sum` and `<name>:count`."""
    from vllm.v1.metrics.reader import Counter, Gauge, Histogram, get_metrics_snapshot

    values: dict[str, float] = {}
    for metric in get_metrics_snapshot():
        if isinstance(metric, (Counter, Gauge)):
            values[metric.name] = values.get(metric.name, 0.0) + float(metric.value)
        elif isinstance(metric, Histogram):
            for part in ("sum", "count"):
                key = f"{metric.name}:{part}"
                values[key] = values.get(key, 0.0) + float(getattr(metric, part))
    return values


def measure(
    args: argparse.Namespace, lengths: list[int], thread: threading.Thread, facts: dict[str, Any]
) -> dict[str, Any]:
    """Sample every 0.5 s; the window opens --warmup-s after the first generated token and lasts
    --window-s, both shortened to end before the row's deadline."""
    begun = time.monotonic()
    first: float | None = None
    samples: list[tuple[float, dict[str, float]]] = []
    window: tuple[float, float] | None = None
    while True:
        now = time.monotonic()
        values = snapshot()
        samples.append((now - begun, values))
        if first is None and values.get("vllm:generation_tokens", 0) > 0:
            first = now
        left = args.row_deadline - time.time()
        if first is not None and window is None:
            warmup = min(args.warmup_s, max(0.0, (left - 5) / 3))
            window = (first + warmup - begun, first + warmup - begun + min(args.window_s, max(1.0, left - warmup - 5)))
        if (window is not None and now - begun >= window[1]) or left < 3 or not thread.is_alive():
            break
        time.sleep(0.5)
    if window is None or first is None or len(samples) < 2:
        return {"error": "no token generated before the deadline"}
    whole_run = samples[-1][0] < window[0]
    if whole_run:  # the workload ended within the warm-up (small dry runs): measure all of it instead
        window = (first - begun, samples[-1][0])
    inside = [(t, v) for t, v in samples if window[0] <= t <= window[1]] or samples[-2:]
    (t1, start), (t2, end) = inside[0], inside[-1]
    if not thread.is_alive() and t2 < window[1]:
        log("the workload ended before the window closed: the window is shorter")

    def delta(name: str) -> float:
        return end.get(name, 0.0) - start.get(name, 0.0)

    def mean(name: str) -> float:
        return sum(v.get(name, 0.0) for _, v in inside) / len(inside)

    span = max(t2 - t1, 1e-9)
    itl_count = delta("vllm:inter_token_latency_seconds:count")
    itl = delta("vllm:inter_token_latency_seconds:sum") / itl_count if itl_count else None
    prompt_count = end.get("vllm:request_prompt_tokens:count", 0.0)
    prompt_mean = end["vllm:request_prompt_tokens:sum"] / prompt_count if prompt_count else PROMPT_TOKENS_ESTIMATE
    context = resident_context(prompt_mean, lengths)
    pool = facts.get("kv_pool_tokens")
    bound = min(pool / context, facts["max_num_seqs"]) / itl if pool and itl else None
    output_tps = delta("vllm:generation_tokens") / span
    done = end.get("vllm:request_success", 0.0)
    return {
        "window_s": [round(t1, 1), round(t2, 1)],
        "window_is_whole_run": whole_run,
        "output_tps": output_tps,
        "prompt_tps": delta("vllm:prompt_tokens") / span,
        "finished_in_window": delta("vllm:request_success"),
        "finished_total": done,
        "makespan_s": round(t2, 1) if done >= len(lengths) else None,
        "preemptions_window": int(delta("vllm:num_preemptions")),
        "preemptions_total": int(end.get("vllm:num_preemptions", 0.0)),
        "running_mean": mean("vllm:num_requests_running"),
        "waiting_mean": mean("vllm:num_requests_waiting"),
        "kv_usage_mean": mean("vllm:kv_cache_usage_perc"),
        "itl_mean_s": itl,
        "prompt_tokens_mean": prompt_mean,
        "resident_context_tokens": context,
        "roofline_tps": bound,
        "roofline_fraction": output_tps / bound if bound else None,
        "timeline": [
            (round(t, 1), v.get("vllm:num_requests_running", 0.0), v.get("vllm:kv_cache_usage_perc", 0.0))
            for t, v in samples[::4]
        ],
    }


if __name__ == "__main__":
    run_and_exit(main)
