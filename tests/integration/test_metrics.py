"""Prometheus metrics scraped from a real `vlmbatch run` while it works: counters move as jobs finish."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.fixtures.bad_images import good_jpeg
from tests.processes import VLMBATCH, free_port


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(vlmbatch_[a-z_]+(?:_total|_count)?)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match:
            key = match.group(1) + (match.group(2) or "")
            values[key] = values.get(key, 0.0) + float(match.group(3))
    return values


def test_metrics_rise_during_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:02d}.jpg").write_bytes(good_jpeg(32, 32, seed=i))
    (folder / "broken.jpg").write_bytes(b"nope")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update(
        VLMBATCH_ENGINE="fake",
        VLMBATCH_MODEL="fake-model",
        VLMBATCH_METRICS_PORT=str(port),
        VLMBATCH_FAKE_LATENCY_S="0.5",
        VLMBATCH_MAX_NUM_SEQS="4",
        VLMBATCH_INFLIGHT_JOBS="4",
    )
    process = subprocess.Popen(
        [*VLMBATCH, "run", str(folder), "--question", "What?", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    samples = []
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # not listening yet
                samples.append(_scrape(port))
            time.sleep(0.5)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err.decode()[-2000:]
    jobs = [s.get('vlmbatch_jobs_total{error_type="",outcome="succeeded"}', 0.0) for s in samples]
    tokens = [s.get("vlmbatch_generated_tokens_total", 0.0) for s in samples]
    assert len(samples) >= 3
    assert jobs == sorted(jobs) and jobs[-1] > jobs[0]  # rising while the run works
    assert tokens == sorted(tokens) and tokens[-1] > tokens[0]
    assert max(s.get("vlmbatch_jobs_in_flight", 0.0) for s in samples) >= 2
    assert any(s.get("vlmbatch_decode_seconds_count", 0.0) > 0 for s in samples)
    status = json.loads(out.decode().strip().splitlines()[-1])
    assert (status["counts"]["succeeded"], status["counts"]["failed"]) == (40, 1)
    assert jobs[-1] <= 40
