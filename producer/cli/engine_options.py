"""The engine's flags, the same on `worker` and `run` (vLLM's own names; anything else via --engine-arg),
and the settings they give once the environment's are known."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

import click

from vlmbatch.producer.cli.options import option_group
from vlmbatch.schema.contracts.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    engine: str | None
    tensor_parallel_size: int | None
    max_num_seqs: int | None
    max_model_len: int | None
    gpu_memory_utilization: float | None
    trust_remote_code: bool | None
    enforce_eager: bool | None
    seed: int | None
    load_format: str | None
    kv_cache_bytes: int | None
    reasoning_parser: str | None
    quantization: str | None
    kv_cache_dtype: str | None
    profile: str | None
    engine_arg: tuple[str, ...]

    def settings(self) -> dict[str, Any]:
        """The settings these flags give (for `load_context`; unset ones are None); --engine-arg is
        applied by `with_engine_args` once the environment's VLMBATCH_ENGINE_ARGS is known."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "engine_arg"}


engine_options = option_group(
    "engine",
    EngineOptions,
    [
        click.option("--engine", type=click.Choice(["vllm", "fake", "openai"]), help="[env VLMBATCH_ENGINE]"),
        click.option("--tensor-parallel-size", "-tp", type=click.IntRange(1), help="GPUs for the engine."),
        click.option("--max-num-seqs", type=click.IntRange(1), help="Sequences the engine runs at once."),
        click.option("--max-model-len", type=click.IntRange(16), help="Context length."),
        click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1), help="Share of GPU memory for vLLM."),
        click.option("--trust-remote-code/--no-trust-remote-code", default=None, help="Run the model folder's code."),
        click.option("--enforce-eager/--no-enforce-eager", default=None, help="Skip CUDA graphs / torch.compile."),
        click.option("--seed", type=int, help="The engine's random seed [env VLMBATCH_SEED; default 0]."),
        click.option("--load-format", help="vLLM's load_format; dummy: random weights [env VLMBATCH_LOAD_FORMAT]."),
        click.option(
            "--kv-cache-memory-bytes",
            "kv_cache_bytes",
            type=click.IntRange(1),
            help="KV cache size per rank, bytes [env VLMBATCH_KV_CACHE_BYTES; default: vLLM's on GPUs, on "
            "vLLM's CPU build a quarter of the free memory, at most 4 GiB, split between ranks].",
        ),
        click.option(
            "--reasoning-parser",
            help="vLLM reasoning parser; auto: deepseek_r1 when the tokenizer has </think>; none: off "
            "[env VLMBATCH_REASONING_PARSER].",
        ),
        click.option("--quantization", help="Weight quantization, e.g. fp8 [env VLMBATCH_QUANTIZATION]."),
        click.option("--kv-cache-dtype", help="KV cache dtype, e.g. fp8 [env VLMBATCH_KV_CACHE_DTYPE]."),
        click.option(
            "--profile",
            type=click.Choice(["default", "throughput"]),
            help="Engine defaults: `throughput` = FP8 weights and KV cache, 0.95 of GPU memory, max_num_seqs "
            "sized from the KV pool; explicit flags and --engine-arg win [env VLMBATCH_PROFILE].",
        ),
        click.option(
            "--engine-arg",
            "engine_arg",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any vLLM engine argument (JSON value), e.g. kv_cache_dtype=fp8; repeatable "
            "[env VLMBATCH_ENGINE_ARGS, a JSON object].",
        ),
    ],
)


def with_engine_args(settings: Settings, cli_args: tuple[str, ...]) -> Settings:
    """`settings` with the --engine-arg pairs on top of VLMBATCH_ENGINE_ARGS, checked against vLLM (one line
    naming an unknown key; a model folder with its own code and no --trust-remote-code)."""
    from vlmbatch.worker.engines.engine_args import apply_engine_args, check_engine_settings, user_engine_args
    from vlmbatch.worker.engines.profiles import apply_profile, gpu_memory_bytes

    settings, warnings = apply_engine_args(settings, user_engine_args(settings, cli_args))
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if settings.profile != "default" and settings.engine == "vllm":
        # After the engine arguments: what they set explicitly wins over the profile's defaults.
        settings, chosen = apply_profile(settings, gpu_bytes=gpu_memory_bytes())
        log.info("engine profile %s: %s", settings.profile, json.dumps(chosen, sort_keys=True))
    check_engine_settings(settings)
    return settings
