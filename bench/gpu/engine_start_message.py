"""What a user sees when R1V3-38B in bf16 does not fit one 80 GB GPU: `vlmbatch run` exactly as typed, on a
model folder of R1V3-38B's shape (random weights: `--load-format dummy`), and the last line of its
standard error, which must name the cause and the fix in one line (worker/engines/start_failure.py).

On the device (vLLM 0.26 staged into /root/site, see /work/shared/GPU.md), one H100 80 GB:

    BENCH_SCRIPT=bench/gpu/engine_start_message.py BENCH_TIMEOUT=470 bash bench/gpu/device.sh

Writes $OUT/engine_start_message.json (return code, seconds, stderr line count, the last stderr line, the
GPU) and $OUT/stderr.txt, $OUT/vllm-log-tail.txt. Exits by itself within ~7.5 minutes (the child is given
420 s). On a CPU machine `--shape tiny --kv-cache-memory-bytes 1048576 --max-model-len 32768` shows the
CPU side of the same message in a minute or two.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.workload import run_and_exit  # noqa: E402

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


def _gpu() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=["r1v3", "tiny"], default="r1v3")
    parser.add_argument("--child-timeout", type=float, default=420.0)
    parser.add_argument("extra", nargs="*", help="More flags for `vlmbatch run` (e.g. --max-model-len 32768).")
    args, unknown = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("BENCH_WORK", "/tmp/vlmbatch-gpu-bench")) / "engine-start"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    from bench.workload import write_images
    from vlmbatch.worker.smoke_model import R1V3_38B, TINY, build_model_folder

    r1v3 = args.shape == "r1v3"
    model = build_model_folder(work / "R1V3-38B-shape", R1V3_38B if r1v3 else TINY, weights=not r1v3)
    images = write_images(work / "images", [(448, 448), (1344, 896)], 4)[0].parent
    command = [
        sys.executable, "-m", "vlmbatch.producer.cli", "run", str(images), "-q", "Describe the image.",
        "--model", str(model), "--trust-remote-code",
        *(["--load-format", "dummy"] if r1v3 else []), *args.extra, *unknown,
    ]  # fmt: skip
    # The user's environment: no VLMBATCH_* setting, the run's files in a home of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    log("vlmbatch " + " ".join(command[3:]))
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=args.child_timeout)
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = None
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    seconds = time.monotonic() - started
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    (args.out / "stderr.txt").write_text(stderr)
    log_file = re.search(r"vLLM's log: (\S+?)\)?$", last)
    if log_file and Path(log_file.group(1)).is_file():
        (args.out / "vllm-log-tail.txt").write_text(Path(log_file.group(1)).read_text(errors="replace")[-200_000:])
    result = {
        "command": "vlmbatch " + " ".join(command[3:]),
        "returncode": returncode,
        "seconds": round(seconds, 1),
        "stderr_lines": len(lines),
        "last_stderr_line": last,
        "gpu": _gpu(),
    }
    (args.out / "engine_start_message.json").write_text(json.dumps(result, indent=1))
    log(f"exit {returncode} after {seconds:.0f} s, {len(lines)} stderr lines; last: {last}")
    return 0 if returncode == 2 and last.startswith("error: the vLLM engine did not start: ") else 1


if __name__ == "__main__":
    run_and_exit(main)
