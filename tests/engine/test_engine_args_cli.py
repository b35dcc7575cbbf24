"""`vlmbatch run` takes the engine's flags and any vLLM engine argument: passed through to the real vLLM CPU
build, and refused in one line (exit 2, nothing submitted) when vLLM has no such argument or the model
folder needs its own code without --trust-remote-code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fixtures.bad_images import good_jpeg
from tests.processes import vlmbatch


def _embedded(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update({"VLMBATCH_HOME": str(tmp_path / "home"), "VLMBATCH_KV_CACHE_BYTES": str(256 * 2**20), **extra})
    return env


def _images(path: Path, count: int) -> Path:
    path.mkdir()
    for i in range(count):
        (path / f"{i}.jpg").write_bytes(good_jpeg(64, 48, seed=i))
    return path


def test_unknown_engine_arg_is_one_line_and_submits_nothing(tiny_model: Path, tmp_path: Path) -> None:
    imgs = _images(tmp_path / "imgs", 2)
    args = ["run", str(imgs), "-q", "What?", "--model", str(tiny_model), "--trust-remote-code"]
    done = vlmbatch([*args, "--engine-arg", "kv_cache_dtipe=fp8"], _embedded(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown vLLM engine argument kv_cache_dtipe (did you mean kv_cache_dtype?): vLLM's EngineArgs has "
        "no such field (names are as on `vllm serve --help`, with underscores)"
    ]
    assert not (tmp_path / "home").exists()  # no ledger, no run


def test_a_model_folder_with_code_and_no_trust_flag_says_which_flag(tiny_model: Path, tmp_path: Path) -> None:
    imgs = _images(tmp_path / "imgs", 1)
    done = vlmbatch(["run", str(imgs), "-q", "What?", "--model", str(tiny_model)], _embedded(tmp_path))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "--trust-remote-code" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.vllm
@pytest.mark.timeout(900)  # an engine start through the command line: minutes on a loaded 2-core machine
def test_fp8_kv_cache_reaches_the_real_engine(tiny_model: Path, tmp_path: Path) -> None:
    imgs = _images(tmp_path / "imgs", 3)
    done = vlmbatch(
        [
            "run", str(imgs), "-q", "What is shown?", "--model", str(tiny_model), "--trust-remote-code",
            "--enforce-eager", "--max-tokens", "24", "--max-num-seqs", "8",
            "--engine-arg", "kv_cache_dtype=fp8", "--engine-arg", "max_num_batched_tokens=4096", "--json",
        ],
        _embedded(tmp_path),
        timeout=600,
    )  # fmt: skip
    log = tmp_path / "home" / "logs" / "run-1.log"  # vLLM's own log goes here, not to the terminal
    vllm_log = log.read_text(errors="replace") if log.is_file() else ""
    if "FP8 KV cache on CPU requires" in done.stderr + vllm_log:
        # This CPU (no AVX-512 or AMX) cannot hold an FP8 KV cache: vLLM's engine core refuses it, and the
        # command says so in one line of its own, the last, naming the cause and the log, and exits 2.
        assert done.returncode == 2, done.stderr[-3000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: the vLLM engine did not start:") and "FP8 KV cache" in last, last
        assert "kv_cache_dtype=fp8" in vllm_log  # the setting did reach the engine
        return
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["total"] == 3
    assert status["counts"]["queued"] == status["counts"]["running"] == 0
    assert status["counts"]["succeeded"] + status["counts"]["truncated"] == 3
    # vLLM's own engine log names the settings it was built with.
    assert "kv_cache_dtype=fp8" in vllm_log
