"""vLLM engine arguments: the ones vlmbatch owns (named settings such as `tensor_parallel_size`), plus any
other field of vLLM's `EngineArgs` a user passes (`--engine-arg KEY=VALUE`, `VLMBATCH_ENGINE_ARGS`).

Pass-through rather than a setting per option: vLLM has ~250 engine arguments (FP8 weights and KV cache,
speculative decoding, chunked-prefill budgets, ...) and adds more each release; users know them by their
vLLM names. Keys are checked against the installed vLLM's `EngineArgs` fields before the engine starts,
and `vlmbatch run` checks them before it submits anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from vlmbatch.schema.contracts.errors import ConfigurationError
from vlmbatch.schema.contracts.settings import Settings

log = logging.getLogger(__name__)

# Engine arguments that vlmbatch sets from its own settings, and the flag that sets each: these keep their
# names, and win over a conflicting --engine-arg (with a warning).
OWNED: dict[str, str] = {
    "model": "--model",
    "tensor_parallel_size": "--tensor-parallel-size",
    "max_num_seqs": "--max-num-seqs",
    "max_model_len": "--max-model-len",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "trust_remote_code": "--trust-remote-code",
    "enforce_eager": "--enforce-eager",
    "seed": "VLMBATCH_SEED",
    "limit_mm_per_prompt": "--max-images-per-prompt",
    "mm_processor_kwargs": "--max-tiles",
    "interleave_mm_strings": "(always on: images go where the prompt places them)",
    "kv_cache_memory_bytes": "VLMBATCH_KV_CACHE_BYTES",
    "load_format": "VLMBATCH_LOAD_FORMAT",
    "reasoning_parser": "VLMBATCH_REASONING_PARSER",
}


def parse_engine_arg(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` → (key, value): VALUE is JSON when it parses (`8192`, `true`, `{"method": "ngram"}`), else
    the plain string (`fp8`). Dashes in KEY become underscores, as on vLLM's command line. Raises
    ConfigurationError for text without `=` or with an empty key."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigurationError(f"--engine-arg {text!r}: expected KEY=VALUE, e.g. kv_cache_dtype=fp8")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def user_engine_args(settings: Settings, cli_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """`VLMBATCH_ENGINE_ARGS`, then each `--engine-arg` on top (the command line wins)."""
    merged = {key.replace("-", "_"): value for key, value in settings.engine_args.items()}
    merged.update(parse_engine_arg(text) for text in cli_args)
    return merged


def owned_engine_args(settings: Settings) -> dict[str, Any]:
    s = settings
    args: dict[str, Any] = dict(
        model=s.model,
        tensor_parallel_size=s.tensor_parallel_size,
        max_num_seqs=s.max_num_seqs,
        max_model_len=s.max_model_len,
        gpu_memory_utilization=s.gpu_memory_utilization,
        trust_remote_code=s.trust_remote_code,
        enforce_eager=s.enforce_eager,
        seed=s.seed,
        limit_mm_per_prompt={"image": s.max_images_per_prompt},
        # Images stay where the user turn puts them (`<image N>` placeholders), not all in front.
        interleave_mm_strings=True,
        mm_processor_kwargs={"max_dynamic_patch": s.max_tiles},
        kv_cache_memory_bytes=s.kv_cache_bytes,
    )
    if s.load_format:
        args["load_format"] = s.load_format
    return args


def engine_args(settings: Settings, owned: dict[str, Any]) -> dict[str, Any]:
    """`owned` (what vlmbatch sets) with the user's engine arguments added; a user argument that names an
    owned one is dropped with a warning that names the flag to use instead."""
    merged = dict(owned)
    for key, value in settings.engine_args.items():
        if key in OWNED:
            if value != owned.get(key):
                log.warning("engine argument %s=%r ignored: vlmbatch sets %s (use %s)", key, value, key, OWNED[key])
            continue
        merged[key] = value
    return merged


def check_engine_settings(settings: Settings) -> None:
    """What can be known before the engine starts, in one line each: unknown engine arguments, a model
    path that does not exist, and a model folder that ships its own code without `--trust-remote-code`.
    Raises ConfigurationError. Only the `vllm` engine takes engine arguments; it imports vLLM (a few
    seconds)."""
    if settings.engine != "vllm":
        if settings.engine_args:
            raise ConfigurationError(
                f"engine arguments are for the in-process vllm engine, not {settings.engine!r} "
                "(start the vLLM server with them instead)"
            )
        return
    _check_model_path(settings)
    _check_remote_code(settings)
    if not settings.engine_args:
        return
    known = _engine_arg_names()
    unknown = sorted(set(settings.engine_args) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown vLLM engine argument {', '.join(unknown)} (vLLM's EngineArgs has no such field; "
            "names are as on `vllm serve --help`, with underscores)"
        )


def _engine_arg_names() -> set[str]:
    # On a CPU build vLLM warns at import that Triton has no CPU backend: harmless, and a refusal here must
    # stay one line.
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
    try:
        from vlmbatch.worker.engines.vllm_compat import install

        install()
        from vllm.engine.arg_utils import AsyncEngineArgs
    except ImportError as exc:
        raise ConfigurationError(f"vLLM is not installed here ({exc}): pip install 'vlmbatch[gpu]'") from exc
    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def refusal(exc: Exception) -> str:
    """vLLM's reason for refusing its settings, on one line (its pydantic errors span many)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            messages = [str(e.get("msg", "")).removeprefix("Value error, ") for e in errors()]
        except (TypeError, AttributeError):
            messages = []
        if messages:
            return "; ".join(m for m in messages if m)[:500]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]


def _check_model_path(settings: Settings) -> None:
    # A model given as a path (not a hub id such as `org/name`) must exist: vLLM would fail only once the
    # engine starts, after the jobs are in.
    model = settings.model
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise ConfigurationError(f"the model folder {model} does not exist")


def _check_remote_code(settings: Settings) -> None:
    config = Path(settings.model) / "config.json"
    if settings.trust_remote_code or not config.is_file():
        return
    try:
        auto_map = json.loads(config.read_text(encoding="utf-8")).get("auto_map")
    except (OSError, ValueError):
        return  # vLLM reports an unreadable config itself
    if auto_map:
        raise ConfigurationError(
            f"the model folder {settings.model} ships its own code (config.json auto_map): pass "
            "--trust-remote-code (or VLMBATCH_TRUST_REMOTE_CODE=true) to run it"
        )
