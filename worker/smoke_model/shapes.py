"""Sizes of the smoke model: the tiny one the CPU tests run, and R1V3-38B's own (for dummy-weight GPU runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a `SkyworkR1VChatModel`: an InternViT vision tower, an MLP projector and a Qwen2 LLM."""

    vision_hidden_size: int
    vision_layers: int
    vision_heads: int
    vision_intermediate_size: int
    vision_norm: Literal["rms_norm", "layer_norm"]
    image_size: int
    patch_size: int
    llm_hidden_size: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    dtype: Literal["bfloat16", "float16", "float32"]

    def __post_init__(self) -> None:
        for name, size, heads in (
            ("vision", self.vision_hidden_size, self.vision_heads),
            ("llm", self.llm_hidden_size, self.llm_heads),
        ):
            if size % heads:
                raise ValueError(f"{name} hidden size {size} is not divisible by {heads} heads")
        if self.llm_heads % self.llm_kv_heads:
            raise ValueError(f"{self.llm_heads} heads do not split into {self.llm_kv_heads} KV groups")
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {self.image_size} is not a multiple of patch {self.patch_size}")

    @property
    def llm_head_dim(self) -> int:
        return self.llm_hidden_size // self.llm_heads


# A shape the vLLM CPU build loads in seconds: its attention backend needs head_dim >= 32 (vision 64/2, LLM
# 128/4). bfloat16 like the real model: vLLM downcasts float32 checkpoints to bfloat16 on CPU anyway.
TINY = ModelShape(
    vision_hidden_size=64,
    vision_layers=2,
    vision_heads=2,
    vision_intermediate_size=128,
    vision_norm="rms_norm",
    image_size=448,
    patch_size=14,
    llm_hidden_size=128,
    llm_layers=2,
    llm_heads=4,
    llm_kv_heads=2,
    llm_intermediate_size=256,
    vocab_size=1024,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    dtype="bfloat16",
)

# Skywork-R1V3-38B's shape (GPU.md): InternViT-6B (448 px, patch 14) + Qwen2.5-32B. Only the sizes matter:
# vLLM's load_format="dummy" fills the weights.
R1V3_38B = ModelShape(
    vision_hidden_size=3200,
    vision_layers=45,
    vision_heads=25,
    vision_intermediate_size=12800,
    vision_norm="rms_norm",
    image_size=448,
    patch_size=14,
    llm_hidden_size=5120,
    llm_layers=64,
    llm_heads=40,
    llm_kv_heads=8,
    llm_intermediate_size=27648,
    vocab_size=151674,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-5,
    dtype="bfloat16",
)
