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
from vlmbatch.worker.engines.arg_names import did_you_mean, engine_arg_names

log = logging.getLogger(__name__)

# Engine arguments that a vlmbatch setting also sets: the setting, and the flag that sets it. Given as an
# engine argument, such a value becomes the setting, unless the flag (or its VLMBATCH_* variable) set it too:
# then the flag wins and the warning says so.
SETTING_FOR: dict[str, tuple[str, str]] = {
    "tensor_parallel_size": ("tensor_parallel_size", "--tensor-parallel-size"),
    "max_num_seqs": ("max_num_seqs", "--max-num-seqs"),
    "max_model_len": ("max_model_len", "--max-model-len"),
    "gpu_memory_utilization": ("gpu_memory_utilization", "--gpu-memory-utilization"),
    "trust_remote_code": ("trust_remote_code", "--trust-remote-code"),
    "enforce_eager": ("enforce_eager", "--enforce-eager"),
    "seed": ("seed", "--seed"),
    "load_format": ("load_format", "--load-format"),
    "kv_cache_memory_bytes": ("kv_cache_bytes", "--kv-cache-memory-bytes"),
    "reasoning_parser": ("reasoning_parser", "--reasoning-parser"),
    "quantization": ("quantization", "--quantization"),
    "kv_cache_dtype": ("kv_cache_dtype", "--kv-cache-dtype"),
}
# Engine arguments vlmbatch keeps for itself, and what sets each instead.
OWNED: dict[str, str] = {
    "model": "--model",
    "interleave_mm_strings": "(always on: images go where the prompt places them)",
    "limit_mm_per_prompt": "--max-images on run, --max-images-per-prompt on worker",
}
_IMAGES_FLAG = OWNED["limit_mm_per_prompt"]


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


def apply_engine_args(settings: Settings, given: dict[str, Any]) -> tuple[Settings, list[str]]:
    """`settings` with the user's engine arguments `given` in place: one that a vlmbatch setting also sets
    becomes that setting (unless the setting was given too: the flag wins), `limit_mm_per_prompt`'s image
    count and `mm_processor_kwargs`' `max_dynamic_patch` become the image and tile limits, the rest pass
    through to vLLM. Returns the settings and a warning per argument not honoured, naming the flag to use."""
    warnings: list[str] = []
    update: dict[str, Any] = {}
    passed: dict[str, Any] = {}
    explicit = settings.model_fields_set

    def take(field: str, flag: str, key: str, value: Any) -> None:
        if field in explicit and getattr(settings, field) != value:
            warnings.append(
                f"engine argument {key}={value!r} ignored: {flag} sets it ({getattr(settings, field)!r} given)"
            )
        else:
            update[field] = value

    for key, value in given.items():
        if key in SETTING_FOR:
            take(*SETTING_FOR[key], key, value)
        elif key == "limit_mm_per_prompt" and isinstance(value, dict) and set(value) <= {"image"}:
            if "image" in value:
                take("max_images_per_prompt", _IMAGES_FLAG, key, value["image"])
        elif key == "mm_processor_kwargs" and isinstance(value, dict):
            rest = {k: v for k, v in value.items() if k != "max_dynamic_patch"}
            if "max_dynamic_patch" in value:
                take("max_tiles", "--max-tiles", key, value["max_dynamic_patch"])
            if rest:
                passed[key] = rest
        elif key in OWNED:
            warnings.append(f"engine argument {key}={value!r} ignored: vlmbatch sets it (use {OWNED[key]})")
        else:
            passed[key] = value
    if update:
        # Validated as the setting itself would be (a negative size, a wrong type: one line).
        values = {name: getattr(settings, name) for name in explicit if name != "engine_args"} | update
        settings = Settings(**values, engine_args=passed)
    else:
        settings = settings.model_copy(update={"engine_args": passed})
    return settings, warnings


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
    for name in ("load_format", "quantization", "kv_cache_dtype"):
        if getattr(s, name):
            args[name] = getattr(s, name)
    return args


def engine_args(settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What vLLM's EngineArgs gets: the user's engine arguments applied (`apply_engine_args`, a warning for
    each one not honoured), what vlmbatch sets from its settings, then `extra` (what the engine adds: the
    reasoning parser it picked, the CPU build's KV size)."""
    settings, warnings = apply_engine_args(settings, settings.engine_args)
    for warning in warnings:
        log.warning("%s", warning)
    merged = owned_engine_args(settings) | (extra or {})
    for key, value in settings.engine_args.items():
        merged[key] = {**value, **merged[key]} if key == "mm_processor_kwargs" else value
    return merged


def check_engine_settings(settings: Settings) -> None:
    """What can be known before the engine starts, in one line each: unknown engine arguments, a model
    path that does not exist, and a model folder that ships its own code without `--trust-remote-code`.
    Raises ConfigurationError. Only the `vllm` engine takes engine arguments; their names are read from
    vLLM's source (no import: well under a second)."""
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
    known = engine_arg_names() or _imported_engine_arg_names()
    unknown = sorted(set(settings.engine_args) - known)
    if unknown:
        hints = [f"{name} (did you mean {hint}?)" if (hint := did_you_mean(name, known)) else name for name in unknown]
        raise ConfigurationError(
            f"unknown vLLM engine argument {', '.join(hints)}: vLLM's EngineArgs has no such field "
            "(names are as on `vllm serve --help`, with underscores)"
        )


def _imported_engine_arg_names() -> frozenset[str]:
    # Only when the source could not be read (an unusual vLLM install): importing vLLM takes seconds.
    # On a CPU build vLLM warns at import that Triton has no CPU backend: harmless, and a refusal here must
    # stay one line.
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
    try:
        from vlmbatch.worker.engines.vllm_compat import install

        install()
        from vllm.engine.arg_utils import AsyncEngineArgs
    except ImportError as exc:
        raise ConfigurationError(f"vLLM is not installed here ({exc}): pip install 'vlmbatch[gpu]'") from exc
    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


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
