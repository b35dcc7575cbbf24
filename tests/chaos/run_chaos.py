"""The chaos suite, as a command:

    python tests/chaos/run_chaos.py --jobs 2000 --workers 3            # fake engine
    python tests/chaos/run_chaos.py --engine vllm --jobs 120 --workers 2   # the tiny model on vLLM CPU

Prints a table of the faults injected, the pass line and, on the fake engine, the tokens lost to kill -9
(issue 26); exits 1 unless every job ended exactly once in its expected state, no killed trace lost more
than one checkpoint interval and every continued trace is the uninterrupted one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.chaos.scenario import ChaosConfig, run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--engine", choices=["fake", "vllm"], default="fake")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--stops", type=int, default=1)
    parser.add_argument("--redis-wipes", type=int, default=1)
    parser.add_argument("--postgres-restarts", type=int, default=1)
    parser.add_argument("--client-kills", type=int, default=1)
    parser.add_argument("--window", type=float, default=None, help="seconds over which faults are spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-tokens",
        type=int,
        default=None,
        help="fixed output length (ignore_eos); default 300 (vllm), 200 (fake: 1 s a trace)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, manifest)")
    args = parser.parse_args()
    vllm = args.engine == "vllm"
    config = ChaosConfig(
        jobs=args.jobs,
        workers=args.workers,
        engine=args.engine,
        kills=args.kills,
        stops=args.stops,
        redis_wipes=args.redis_wipes,
        postgres_restarts=args.postgres_restarts,
        client_kills=args.client_kills,
        seed=args.seed,
        lease_seconds=30.0 if vllm else 8.0,
        fault_window_s=args.window or (240.0 if vllm else 40.0),
        finish_within_s=900.0 if vllm else 180.0,
        output_tokens=args.output_tokens or (300 if vllm else 200),
        keep=args.keep,
    )
    report = run_chaos(config)
    print(report.render())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
