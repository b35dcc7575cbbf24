"""Engine death on the GPU (vLLM's CUDA build): the engine-core process is killed while the pipeline
generates; the pipeline must hand every unfinished job back (no job left `running`), and a second
pipeline with a fresh engine must finish the run with exactly one result per job.

    python bench/gpu/engine_death.py --shape r1v3 --n 64 --out $OUT      # on the H200
    python bench/gpu/engine_death.py --shape tiny --n 8 --out /tmp/x     # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.workload import run_and_exit  # noqa: E402

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["r1v3", "tiny"], default="r1v3")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("BENCH_WORK", "/tmp/vlmbatch-gpu-bench"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vlmbatch.worker.engines.vllm_compat import install

    install()
    import psutil
    from sqlalchemy import func, select

    from bench.workload import write_images
    from vlmbatch.media.stores import ObjectStores
    from vlmbatch.producer.sources.open import open_source
    from vlmbatch.producer.sources.prompts import Prompting
    from vlmbatch.producer.submit import submit
    from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
    from vlmbatch.schema.contracts.settings import Settings
    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.schema.ledger.tables import Attempt, Job, Result
    from vlmbatch.worker.engines.thread import EngineThread
    from vlmbatch.worker.engines.vllm_engine import VllmEngine
    from vlmbatch.worker.pipeline.pipeline import Pipeline
    from vlmbatch.worker.smoke_model import R1V3_38B, TINY, build_model_folder
    from vlmbatch.worker.transport.publisher import NullPublisher

    model = build_model_folder(
        work / f"model-{args.shape}", R1V3_38B if args.shape == "r1v3" else TINY, weights=args.shape == "tiny"
    )
    write_images(work / "death-images", [(448, 448), (1344, 896)], args.n)
    for stale in work.glob("death.db*"):
        stale.unlink()
    database_url = f"sqlite:///{work / 'death.db'}"
    gpu = args.shape == "r1v3"
    settings = Settings(
        database_url=database_url,
        engine="vllm",
        model=str(model),
        trust_remote_code=True,
        max_model_len=32768 if gpu else 8192,
        max_num_seqs=256 if gpu else 16,
        max_images_per_prompt=1,
        load_format="dummy" if gpu else None,
        enforce_eager=not gpu,
        kv_cache_bytes=None if gpu else 512 * 2**20,
        heartbeat_seconds=2.0,
    )
    _, sessions = open_ledger(database_url)
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=open_source(str(work / "death-images"), prompting=Prompting.of("Describe."), stores=ObjectStores()),
        settings=RunSettings(
            model=str(model),
            max_images_per_prompt=1,
            sampling=SamplingSettings(max_tokens=args.max_tokens, ignore_eos=True),
        ),
        queue="bench",
        run_name="death",
    )
    run_id = report.run

    def pipeline() -> tuple[Pipeline, VllmEngine]:
        engine = VllmEngine(settings)
        made = Pipeline(
            settings=settings,
            engine=EngineThread(engine),
            sessions=sessions,
            store=ObjectStores(s3_endpoint_url=None),
            publisher=NullPublisher(),
            worker_id="bench",
        )
        made.start()
        return made, engine

    def states() -> dict[str, int]:
        with sessions() as session:
            return dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())

    result: dict[str, Any] = {"n": args.n, "max_tokens": args.max_tokens, "shape": args.shape}
    first, engine = pipeline()
    log("first engine ready; feeding")
    fed = first.feed_run(run_id)
    deadline = time.monotonic() + 300
    while engine.telemetry.generated_tokens < 20 * args.n and time.monotonic() < deadline:
        time.sleep(0.2)
    cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    log(f"generating ({engine.telemetry.running} running); killing engine core {[p.pid for p in cores]}")
    result["states_before_kill"] = states()
    for core in cores:
        os.kill(core.pid, signal.SIGKILL)
    died = first.fatal_event.wait(120)
    result["fatal"] = repr(first.fatal)
    try:
        fed.result(timeout=60)
    except Exception as exc:  # the feed ends with the engine's death
        result["feed_error"] = repr(exc)[:300]
    first.stop()
    result["states_after_death"] = states()
    log(f"engine death seen: {died}; states now {result['states_after_death']}")
    second, _ = pipeline()
    log("second engine ready; finishing the run")
    second.feed_run(run_id).result(timeout=900)
    second.stop()
    with sessions() as session:
        result["states_final"] = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        result["attempts"] = dict(
            session.execute(select(Attempt.outcome, func.count()).group_by(Attempt.outcome)).all()
        )
        per_job = (
            session.execute(select(func.count(func.distinct(Result.attempt_id))).group_by(Result.job_id))
            .scalars()
            .all()
        )
    result["results_per_job"] = sorted(set(per_job))
    result["passed"] = (
        died
        and "running" not in result["states_after_death"]
        and result["states_final"] == {"truncated": args.n}
        and result["results_per_job"] == [1]
    )
    (args.out / "engine-death.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    run_and_exit(main)
