"""A newcomer's first day on vLLM's CPU build, through the real command line: the README's own-folder
command works with no setting, its output is vlmbatch's own lines (vLLM's log in a file), a run whose
stderr is not a terminal prints periodic progress lines, and an engine that cannot start says why in one
line that ends the output."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.bad_images import good_jpeg
from tests.processes import VLMBATCH

# Each test starts a real engine through the command line: minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
PROGRESS = re.compile(r"^\S+: \d+/\d+ done \(\d+\.\d%\), [\d.]+ jobs/s, .*ETA [-:\d]+, (no errors|errors: .+)$")
# vLLM's own log lines: "(EngineCore pid=12) INFO 12-07 18:12:42 [file.py:12] ..." or ours in its log file.
VLLM_INFO = re.compile(r"INFO \d\d-\d\d |INFO (EngineCore|VllmWorker|MainProcess)")


def _newcomer_env(tmp_path: Path) -> dict[str, str]:
    """The developer's environment with no VLMBATCH_* setting at all; caches kept under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update(
        {
            "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
            "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def _folder(tmp_path: Path, count: int) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(count):
        (images / f"{i:02d}.jpg").write_bytes(good_jpeg(96, 64, seed=i))


def _vlmbatch(args: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = _newcomer_env(tmp_path) | extra
    return subprocess.run([*VLMBATCH, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_the_readmes_own_folder_command_works_with_no_setting(tmp_path: Path) -> None:
    made = _vlmbatch(["smoke-model", "./model"], tmp_path)
    assert made.returncode == 0, made.stderr
    assert "--trust-remote-code" in made.stderr  # it says how to run it
    _folder(tmp_path, 3)
    done = _vlmbatch(
        ["run", "./images", "-q", "What is in the image?", "--model", "./model", "--trust-remote-code"], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "succeeded" in done.stdout and "What is in the image?" not in done.stderr
    # vlmbatch's own lines; vLLM's go to the run's log file.
    assert "loading model" in done.stderr and "ready in" in done.stderr and "KV cache" in done.stderr
    assert not VLLM_INFO.search(done.stderr), done.stderr[-3000:]
    log = tmp_path / ".vlmbatch" / "logs" / "run-1.log"
    assert str(log) in done.stderr
    assert "vllm" in log.read_text()


def test_a_run_without_a_terminal_prints_periodic_progress_lines_and_no_vllm_info(tmp_path: Path) -> None:
    model = _vlmbatch(["smoke-model", "./model"], tmp_path)
    assert model.returncode == 0, model.stderr
    _folder(tmp_path, 12)
    done = _vlmbatch(
        [
            "run", "./images", "-q", "Describe the image.", "--model", "./model", "--trust-remote-code",
            "--enforce-eager", "--max-tokens", "200", "--ignore-eos", "--progress-every", "1",
        ],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    progress = [line for line in lines if PROGRESS.match(line)]
    assert len(progress) >= 2, done.stderr[-3000:]
    assert progress[-1].split(": ", 1)[1].startswith("12/12 done (100.0%)")
    assert not any(VLLM_INFO.search(line) for line in lines), done.stderr[-3000:]
    assert "\r" not in done.stderr  # no bar drawn into a log


def test_a_kv_cache_too_small_for_one_sequence_is_one_line_with_the_fix(tmp_path: Path) -> None:
    _vlmbatch(["smoke-model", "./model"], tmp_path)
    _folder(tmp_path, 1)
    done = _vlmbatch(
        [
            "run", "./images", "-q", "What?", "--model", "./model", "--trust-remote-code", "--enforce-eager",
            "--max-model-len", "32768", "--kv-cache-memory-bytes", str(2**20),
        ],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the vLLM engine did not start: the KV cache"), last
    assert "--max-model-len" in last and "--kv-cache-memory-bytes" in last and "vLLM's log: " in last
    assert "Traceback" not in done.stderr
    log = Path(last.rsplit("vLLM's log: ", 1)[1].rstrip(")"))
    assert "KV cache is needed" in log.read_text()


def test_an_architecture_vllm_does_not_know_is_one_line(tmp_path: Path) -> None:
    _vlmbatch(["smoke-model", "./model"], tmp_path)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["architectures"] = ["FancyNewVLM"]
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    _folder(tmp_path, 1)
    done = _vlmbatch(["run", "./images", "-q", "What?", "--model", "./model", "--trust-remote-code"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "does not know the model architecture FancyNewVLM" in last, last
    assert len(last) < 400 and "Traceback" not in done.stderr
