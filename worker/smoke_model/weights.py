"""Random weights for the smoke model, in the HF checkpoint's layout, with a few set by hand so that it
ends its outputs as R1V3 does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmbatch.worker.smoke_model.shapes import ModelShape


def _weight_shapes(shape: ModelShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of the HF checkpoint layout, by name; vLLM's loader rejects unknown or missing names."""
    vh, vi, lh, li = (
        shape.vision_hidden_size,
        shape.vision_intermediate_size,
        shape.llm_hidden_size,
        shape.llm_intermediate_size,
    )
    patches = (shape.image_size // shape.patch_size) ** 2
    yield "vision_model.embeddings.class_embedding", (1, 1, vh)
    yield "vision_model.embeddings.patch_embedding.weight", (vh, 3, shape.patch_size, shape.patch_size)
    yield "vision_model.embeddings.patch_embedding.bias", (vh,)
    yield "vision_model.embeddings.position_embedding", (1, patches + 1, vh)
    for n in range(shape.vision_layers):
        layer = f"vision_model.encoder.layers.{n}"
        yield f"{layer}.attn.qkv.weight", (3 * vh, vh)
        yield f"{layer}.attn.q_norm.weight", (vh,)
        yield f"{layer}.attn.k_norm.weight", (vh,)
        yield f"{layer}.attn.proj.weight", (vh, vh)
        yield f"{layer}.attn.proj.bias", (vh,)
        yield f"{layer}.mlp.fc1.weight", (vi, vh)
        yield f"{layer}.mlp.fc1.bias", (vi,)
        yield f"{layer}.mlp.fc2.weight", (vh, vi)
        yield f"{layer}.mlp.fc2.bias", (vh,)
        for norm in ("norm1", "norm2"):
            yield f"{layer}.{norm}.weight", (vh,)
            if shape.vision_norm == "layer_norm":
                yield f"{layer}.{norm}.bias", (vh,)
        yield f"{layer}.ls1", (vh,)
        yield f"{layer}.ls2", (vh,)
    # Pixel shuffle (downsample 0.5) stacks 4 vision tokens into one before the projector.
    yield "mlp1.0.weight", (4 * vh,)
    yield "mlp1.0.bias", (4 * vh,)
    yield "mlp1.1.weight", (lh, 4 * vh)
    yield "mlp1.1.bias", (lh,)
    yield "mlp1.3.weight", (lh, lh)
    yield "mlp1.3.bias", (lh,)
    q_dim, kv_dim = shape.llm_heads * shape.llm_head_dim, shape.llm_kv_heads * shape.llm_head_dim
    yield "language_model.model.embed_tokens.weight", (shape.vocab_size, lh)
    for n in range(shape.llm_layers):
        layer = f"language_model.model.layers.{n}"
        for proj, rows in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            yield f"{layer}.self_attn.{proj}.weight", (rows, lh)
            yield f"{layer}.self_attn.{proj}.bias", (rows,)
        yield f"{layer}.self_attn.o_proj.weight", (lh, q_dim)
        yield f"{layer}.mlp.gate_proj.weight", (li, lh)
        yield f"{layer}.mlp.up_proj.weight", (li, lh)
        yield f"{layer}.mlp.down_proj.weight", (lh, li)
        yield f"{layer}.input_layernorm.weight", (lh,)
        yield f"{layer}.post_attention_layernorm.weight", (lh,)
    yield "language_model.model.norm.weight", (lh,)
    yield "language_model.lm_head.weight", (shape.vocab_size, lh)


def write_weights(
    path: Path, shape: ModelShape, *, seed: int, think_end_id: int, eos_id: int, other_eos_ids: tuple[int, ...]
) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, size in _weight_shapes(shape):
        # Norms start as identity and layer scales at InternViT's initializer_factor, as a fresh model does.
        is_norm = "norm" in name or name.startswith("mlp1.0.")
        if name.endswith((".ls1", ".ls2")):
            tensor = torch.full(size, 0.1)
        elif is_norm:
            tensor = torch.ones(size) if name.endswith(".weight") else torch.zeros(size)
        else:
            tensor = torch.randn(size, generator=generator) * 0.02
        tensors[name] = tensor
    _steer_endings(tensors, shape, think_end_id=think_end_id, eos_id=eos_id, other_eos_ids=other_eos_ids)
    dtype = getattr(torch, shape.dtype)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# Residual-stream dimensions the hand-set weights use (the others stay random).
_CONSTANT_DIM, _FLAG_IN_DIM, _FLAG_OUT_DIM = 0, 1, 2
# At temperature 0.6: about 1 step in 10 closes the trace; after it, about 1 in 6 ends the answer.
_THINK_END_LOGIT_WEIGHT = 0.25
_EOS_AFTER_TRACE_WEIGHT = 0.27
_FLAG_EMBEDDING = 10.0
_FLAG_GAIN = 2000.0


def _steer_endings(
    tensors: dict[str, Any], shape: ModelShape, *, think_end_id: int, eos_id: int, other_eos_ids: tuple[int, ...]
) -> None:
    """Hand-set a few weights so that the random model ends its outputs the way R1V3 does: a short trace
    closed by `</think>`, a short answer, then `<|im_end|>`. Without this, random weights almost never
    emit either token and every job would end `truncated`; the text itself stays noise.

    How: every token embedding carries a constant in one residual dimension, which makes `</think>` likely
    at every step. `</think>`'s own embedding also carries a flag; in layer 0 one attention head with zero
    queries (uniform attention over the past) reads only that flag, so once `</think>` was generated a
    second residual dimension lights up, which suppresses `</think>` and makes `<|im_end|>` likely.
    Nothing else writes into those dimensions."""
    lm = "language_model.model"
    head_dim = shape.llm_head_dim
    embed = tensors[f"{lm}.embed_tokens.weight"]
    embed[:, _CONSTANT_DIM] = 1.0
    embed[:, _FLAG_IN_DIM] = 0.0
    embed[think_end_id, _FLAG_IN_DIM] = _FLAG_EMBEDDING
    # Image features replace token embeddings: keep the flag dimension exactly zero there as well.
    tensors["mlp1.3.weight"][_FLAG_IN_DIM, :] = 0.0
    tensors["mlp1.3.bias"][_FLAG_IN_DIM] = 0.0
    heads_per_kv = shape.llm_heads // shape.llm_kv_heads
    for n in range(shape.llm_layers):
        layer = f"{lm}.layers.{n}"
        for name in (f"{layer}.self_attn.o_proj.weight", f"{layer}.mlp.down_proj.weight"):
            tensors[name][[_CONSTANT_DIM, _FLAG_OUT_DIM], :] = 0.0
    layer0 = f"{lm}.layers.0.self_attn"
    tensors[f"{layer0}.q_proj.weight"][:head_dim, :] = 0.0  # head 0: zero queries, uniform attention
    tensors[f"{layer0}.q_proj.bias"][:head_dim] = 0.0
    tensors[f"{layer0}.v_proj.weight"][:head_dim, :] = 0.0  # KV head 0 carries only the flag
    tensors[f"{layer0}.v_proj.bias"][:head_dim] = 0.0
    tensors[f"{layer0}.v_proj.weight"][0, _FLAG_IN_DIM] = 1.0
    for head in range(heads_per_kv):  # the query heads sharing KV head 0 write the flag nowhere else
        tensors[f"{layer0}.o_proj.weight"][:, head * head_dim] = 0.0
    tensors[f"{layer0}.o_proj.weight"][_FLAG_OUT_DIM, 0] = _FLAG_GAIN
    lm_head = tensors["language_model.lm_head.weight"]
    lm_head[:, [_CONSTANT_DIM, _FLAG_OUT_DIM]] = 0.0
    lm_head[think_end_id, _CONSTANT_DIM] = _THINK_END_LOGIT_WEIGHT
    lm_head[think_end_id, _FLAG_OUT_DIM] = -1.0
    lm_head[eos_id, _FLAG_OUT_DIM] = _EOS_AFTER_TRACE_WEIGHT
    lm_head[eos_id, _CONSTANT_DIM] = -_EOS_AFTER_TRACE_WEIGHT  # and rarely before the trace ended
    for other in other_eos_ids:  # generation_config's other end-of-sequence ids never end it early
        lm_head[other, _CONSTANT_DIM] = -_EOS_AFTER_TRACE_WEIGHT
