"""Engine profiles: named sets of engine-setting defaults (`--profile`, `VLMBATCH_PROFILE`).

`default` changes nothing: the model card's bf16, vLLM's own KV cache, 0.9 of GPU memory, 256 sequences.
`throughput` is for long reasoning traces, where the KV cache and not compute bounds the decode rate
(tokens/s ~= sequences that fit the pool / step time): FP8 weights and FP8 KV cache (about half the weight
memory and twice the tokens per KV byte, measured 208k -> 718k tokens of pool on an H200 for R1V3), a KV
watermark of 0.05, 0.95 of GPU memory, and `max_num_seqs` sized so that the pool holds that many sequences
at the expected context.

A profile only supplies defaults: a flag or setting given explicitly (`--max-num-seqs`,
`VLMBATCH_GPU_MEMORY_UTILIZATION`) and an explicit `--engine-arg` win over it. `apply_profile` returns the
effective settings and what it chose (logged by the worker at start).

The vision tower: vLLM's `quantization=fp8` quantizes every linear layer, the vision tower's too (vLLM
passes its quantization config to InternViT); vLLM 0.26 keeps a tower in bf16 only through its online
quantization (`quantization=fp8_per_tensor` with `quantization_config={"ignore": [...]}`), not run here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlmbatch.schema.contracts.settings import Settings

log = logging.getLogger(__name__)

# `watermark`: vLLM (0.26 and later) keeps this share of KV blocks free when it admits requests, so that
# running ones can grow without preemption; 0.05 took raw vLLM from 2,056.6 to 2,278.0 tok/s on an H100
# (FP8, 96 x 2,048 tokens; issue 27).
THROUGHPUT_ENGINE_ARGS: dict[str, Any] = {"quantization": "fp8", "kv_cache_dtype": "fp8", "watermark": 0.05}
# Near the top: a batch worker has nothing else on its GPU; vLLM's profiling keeps activations' room.
THROUGHPUT_MEMORY_UTILIZATION = 0.95
# Room vLLM needs besides weights and KV cache (activations, CUDA graphs, the allocator's slack), per GPU.
# 2.7 GiB was left over on the H100 at 0.9 with FP8 (GPU.md: weights ~38 GiB, KV pool 247k tokens).
RESERVE_BYTES = 4 * 2**30
# Bounds on the sized max_num_seqs: below 16 a GPU idles; above 512 vLLM's step costs more than it batches.
MIN_SEQS, MAX_SEQS = 16, 512
_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "auto": 2, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass(frozen=True)
class ModelSizes:
    """What sizing needs of a model: its LLM's and vision tower's parameter counts and KV shape."""

    llm_params: int
    embedding_params: int
    vision_params: int
    llm_layers: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class KvPlan:
    """How `max_num_seqs` was sized: pool = GPUs x (memory x utilization - reserve) - weights."""

    gpu_bytes: int
    weight_bytes: int
    kv_bytes_per_token: int
    pool_tokens: int
    expected_context_tokens: int
    max_num_seqs: int


def apply_profile(settings: Settings, *, gpu_bytes: int | None = None) -> tuple[Settings, dict[str, Any]]:
    """`settings` with its profile's defaults filled in wherever nothing was set explicitly, and a record of
    the effective choices. `gpu_bytes` is one GPU's memory (None: no GPU; then only an explicit
    `kv_cache_bytes` can size the batch). A model whose config cannot be read keeps its `max_num_seqs`."""
    if settings.profile == "default":
        return settings, {"profile": "default"}
    explicit = settings.model_fields_set
    update: dict[str, Any] = {}
    engine_args = dict(settings.engine_args)
    for key, value in THROUGHPUT_ENGINE_ARGS.items():
        if key in Settings.model_fields:  # a vlmbatch setting of that name (--quantization, --kv-cache-dtype)
            if key not in explicit and getattr(settings, key) is None and key not in engine_args:
                update[key] = value
        else:
            engine_args.setdefault(key, value)
    update["engine_args"] = engine_args
    utilization = settings.gpu_memory_utilization
    if "gpu_memory_utilization" not in explicit:
        utilization = update["gpu_memory_utilization"] = THROUGHPUT_MEMORY_UTILIZATION
    record: dict[str, Any] = {"profile": settings.profile}
    sizes = model_sizes(settings.model)
    if "max_num_seqs" not in explicit and sizes is not None:
        plan = plan_kv(
            sizes,
            gpu_bytes=gpu_bytes,
            kv_cache_bytes=settings.kv_cache_bytes,
            utilization=utilization,
            gpus=settings.tensor_parallel_size,
            quantization=update.get("quantization", settings.quantization),
            kv_cache_dtype=str(update.get("kv_cache_dtype", settings.kv_cache_dtype) or "auto"),
            expected_context_tokens=settings.expected_context_tokens,
        )
        if plan is not None:
            update["max_num_seqs"] = plan.max_num_seqs
            record["kv_plan"] = asdict(plan)
    effective = settings.model_copy(update=update)
    record.update(
        max_num_seqs=effective.max_num_seqs,
        gpu_memory_utilization=effective.gpu_memory_utilization,
        quantization=effective.quantization,
        kv_cache_dtype=effective.kv_cache_dtype,
        engine_args=effective.engine_args,
    )
    return effective, record


def plan_kv(
    sizes: ModelSizes,
    *,
    gpu_bytes: int | None,
    kv_cache_bytes: int | None,
    utilization: float,
    gpus: int,
    quantization: str | None,
    kv_cache_dtype: str,
    expected_context_tokens: int,
) -> KvPlan | None:
    """The KV pool's size in tokens (an explicit `kv_cache_bytes`, else what the GPUs leave after weights
    and a reserve) and the sequences it holds at `expected_context_tokens` each. None when neither is known.
    Weights: FP8 quantization stores linear layers in one byte per parameter; embeddings stay bf16."""
    kv_per_token = 2 * sizes.llm_layers * sizes.kv_heads * sizes.head_dim * _DTYPE_BYTES.get(kv_cache_dtype, 2)
    linear_bytes = 1 if quantization and quantization.startswith("fp8") else 2
    weights = (sizes.llm_params + sizes.vision_params) * linear_bytes + sizes.embedding_params * 2
    if kv_cache_bytes is not None:
        pool_bytes = kv_cache_bytes
    elif gpu_bytes is not None:
        pool_bytes = int(gpus * (gpu_bytes * utilization - RESERVE_BYTES)) - weights
    else:
        return None
    pool_tokens = max(0, pool_bytes // kv_per_token)
    seqs = max(MIN_SEQS, min(MAX_SEQS, pool_tokens // max(1, expected_context_tokens)))
    return KvPlan(
        gpu_bytes=gpu_bytes or 0,
        weight_bytes=weights,
        kv_bytes_per_token=kv_per_token,
        pool_tokens=pool_tokens,
        expected_context_tokens=expected_context_tokens,
        max_num_seqs=seqs,
    )


def model_sizes(model: str) -> ModelSizes | None:
    """Sizes from a local model folder's `config.json` (a VLM's `llm_config`/`text_config` and
    `vision_config`, or a plain LLM's top level); None for a Hub id or an unreadable config."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        llm = config.get("llm_config") or config.get("text_config") or config
        hidden, layers = int(llm["hidden_size"]), int(llm["num_hidden_layers"])
        heads = int(llm["num_attention_heads"])
        kv_heads = int(llm.get("num_key_value_heads", heads))
        head_dim = int(llm.get("head_dim") or hidden // heads)
        inter, vocab = int(llm["intermediate_size"]), int(llm["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    llm_params = layers * (attention + 3 * hidden * inter)
    vision = config.get("vision_config") or {}
    try:
        vh, vl, vi = int(vision["hidden_size"]), int(vision["num_hidden_layers"]), int(vision["intermediate_size"])
        vision_params = vl * (4 * vh * vh + 2 * vh * vi) + 4 * vh * hidden + hidden * hidden  # tower + projector
    except (KeyError, ValueError, TypeError):
        vision_params = 0
    return ModelSizes(
        llm_params=llm_params,
        embedding_params=2 * vocab * hidden,
        vision_params=vision_params,
        llm_layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
    )


def gpu_memory_bytes() -> int | None:
    """One visible GPU's memory, or None without one. Asks vLLM's platform (NVML on CUDA), which does not
    initialise CUDA in this process (vLLM's engine processes would then have to be spawned)."""
    try:
        from vlmbatch.worker.engines.vllm_compat import install

        install()
        from vllm.platforms import current_platform

        if not current_platform.is_cuda():
            return None
        return int(current_platform.get_device_total_memory(0))
    except Exception:  # no vLLM, a broken driver: vLLM says so itself when the engine starts
        return None
