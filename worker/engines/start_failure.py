"""An engine that did not start, explained in one line: the cause, the fix, and where vLLM's full log is.

vLLM's own report of a failed start is a traceback from a child process, a "See root cause above" and a
cause 70 lines higher. The causes a user meets on a first day are few and recognisable from that log:
not enough memory for the weights or the KV cache, no GPU driver, a model folder that ships code, an
architecture this vLLM does not know. Anything else keeps vLLM's own first line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

GiB = 2**30
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# A GPU keeps this share of its memory for activations, CUDA graphs and the KV cache when weights load.
_WEIGHTS_SHARE = 0.7

_KV_TOO_SMALL = re.compile(
    r"max seq len \((?P<len>\d+)\), \((?P<need>[\d.]+) GiB KV cache is needed, which is larger than the "
    r"available KV cache memory \((?P<have>[-\d.]+) GiB\)(?:\. Based on the available memory, the estimated "
    r"maximum model length is (?P<fits>\d+))?"
)
_NO_KV_ROOM = re.compile(r"No available memory for the cache blocks|CUDA out of memory|OutOfMemoryError")
_NO_DRIVER = re.compile(
    r"Found no NVIDIA driver|No CUDA GPUs are available|CUDA driver version is insufficient|"
    r"libcuda\.so[^\n]*cannot open|Failed to infer device type|NVML Shared Library Not Found",
    re.IGNORECASE,
)
_REMOTE_CODE = re.compile(r"trust_remote_code=True|contains custom code|execute the configuration file")
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception): .+$", re.MULTILINE)
_GENERIC = ("Engine core initialization failed", "EngineDeadError", "EngineCore failed to start")
_LOADED = re.compile(r"Model loading took (?P<gib>[\d.]+) ?GiB")
_UNKNOWN_ARCH = re.compile(r"Model architectures? \[?'?(?P<arch>[\w', ]+?)'?\]? (?:are|is) not supported")


@dataclass(frozen=True)
class Machine:
    """What the message may quote about where the engine ran: the weights' and each GPU's size."""

    weights_bytes: int | None
    gpu_bytes: int | None
    gpus: int
    cpu_build: bool


def weights_bytes(model: str) -> int | None:
    """The size of a local model folder's weight files (None for a hub id, or a folder without any)."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    return total or _weights_from_index(folder)


def _weights_from_index(folder: Path) -> int | None:
    index = folder / "model.safetensors.index.json"
    try:
        size = json.loads(index.read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
    except (OSError, ValueError, AttributeError):
        return None
    return int(size) if isinstance(size, int | float) else None


def explain(
    text: str, *, model: str, max_model_len: int | None, tp: int, machine: Machine, fallback: str, log_file: Path | None
) -> str:
    """One line for an engine start that failed with `text` (the exception chain and vLLM's log): the cause
    and its fix when recognised, else `fallback`; then where vLLM's full log is."""
    where = f" (vLLM's log: {log_file})" if log_file else ""
    cause = _cause_and_fix(text, model, max_model_len, tp, machine) or _root_cause(text)
    return f"the vLLM engine did not start: {cause}{where}" if cause else f"{fallback}{where}"


def _root_cause(text: str) -> str | None:
    """The first exception a child process's traceback ends in (vLLM's own "see root cause above" points at
    it), when it is not the engine core's generic one."""
    for match in _EXCEPTION_LINE.finditer(text):
        if not any(generic in match.group(0) for generic in _GENERIC):
            return match.group(0).strip()[:300]
    return None


def _cause_and_fix(text: str, model: str, max_model_len: int | None, tp: int, machine: Machine) -> str | None:
    if m := _KV_TOO_SMALL.search(text):
        fits = f" (about {int(m['fits']):,} fit)" if m["fits"] else ""
        room = (
            "a larger --kv-cache-memory-bytes"
            if machine.cpu_build
            else "a larger --gpu-memory-utilization, or --engine-arg quantization=fp8 --engine-arg kv_cache_dtype=fp8"
        )
        return (
            f"the KV cache ({m['have']} GiB) cannot hold one sequence of max_model_len {int(m['len']):,} tokens "
            f"({m['need']} GiB): pass a smaller --max-model-len{fits}, or {room}"
        )
    if _NO_KV_ROOM.search(text):
        if machine.weights_bytes is None and (loaded := _LOADED.search(text)):  # dummy weights: vLLM's count
            machine = replace(machine, weights_bytes=int(float(loaded["gib"]) * GiB * tp))
        return _memory(machine, max_model_len, tp)
    if _NO_DRIVER.search(text):
        return (
            "no usable GPU: the NVIDIA driver or CUDA is missing or not visible here (check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES), or install vLLM's CPU build to run on the CPU"
        )
    if _REMOTE_CODE.search(text):
        return f"the model folder {model} ships its own code: pass --trust-remote-code to run it"
    if m := _UNKNOWN_ARCH.search(text):
        arch = m["arch"].replace("'", "").strip()
        return (
            f"this vLLM does not know the model architecture {arch} (config.json `architectures`): use a "
            "vLLM release that supports it, or a model of a supported architecture"
        )
    return None


def _memory(machine: Machine, max_model_len: int | None, tp: int) -> str:
    if machine.cpu_build:
        return (
            "not enough memory for the weights and the KV cache: pass a smaller --kv-cache-memory-bytes or "
            "--max-model-len, or free memory"
        )
    sizes = []
    if machine.weights_bytes:
        sizes.append(f"the weights are {machine.weights_bytes / GiB:.1f} GiB")
    if machine.gpu_bytes:
        sizes.append(f"each GPU has {machine.gpu_bytes / GiB:.1f} GiB")
    options = []
    need = _ranks_needed(machine, tp)
    if need:
        options.append(f"--tensor-parallel-size {need}")
    options.append("--engine-arg quantization=fp8 (weights in half the memory)")
    options.append(f"a smaller --max-model-len{f' than {max_model_len:,}' if max_model_len else ''}")
    said = f" ({', '.join(sizes)})" if sizes else ""
    return f"not enough GPU memory for the weights and a KV cache{said}: use {', or '.join(options)}"


def _ranks_needed(machine: Machine, tp: int) -> int | None:
    """The smallest power of two ranks over which the weights leave room for a KV cache on each GPU."""
    if not machine.weights_bytes or not machine.gpu_bytes:
        return 2 * tp if machine.gpus > tp else None
    ranks = 2 ** math.ceil(math.log2(max(machine.weights_bytes / (_WEIGHTS_SHARE * machine.gpu_bytes), 1.0)))
    return max(int(ranks), 2 * tp)
