"""SkyworkR1VChatModel configuration (InternViT vision tower + Qwen2 LLM).

Copied into every smoke-model folder, where transformers imports it through `config.json`'s `auto_map`
(`trust_remote_code=True`); vLLM maps `llm_config` to `text_config` itself. Kept as a real module so that
ruff and mypy check it.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config


class SkyworkVisionConfig(PretrainedConfig):  # type: ignore[no-untyped-call]  # transformers leaves it untyped
    model_type = "intern_vit_6b"

    def __init__(
        self,
        hidden_size: int = 3200,
        image_size: int = 448,
        patch_size: int = 14,
        num_channels: int = 3,
        num_attention_heads: int = 25,
        num_hidden_layers: int = 45,
        intermediate_size: int = 12800,
        qkv_bias: bool = False,
        qk_normalization: bool = True,
        norm_type: str = "rms_norm",
        layer_norm_eps: float = 1e-6,
        hidden_act: str = "gelu",
        initializer_factor: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size
        self.qkv_bias = qkv_bias
        self.qk_normalization = qk_normalization
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.initializer_factor = initializer_factor


class SkyworkChatConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    model_type = "skywork_chat"
    sub_configs = {"vision_config": SkyworkVisionConfig, "llm_config": Qwen2Config}

    def __init__(
        self,
        vision_config: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        select_layer: int = -1,
        force_image_size: int | None = None,
        downsample_ratio: float = 0.5,
        ps_version: str = "v2",
        min_dynamic_patch: int = 1,
        max_dynamic_patch: int = 12,
        dynamic_image_size: bool = True,
        use_thumbnail: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vision_config = SkyworkVisionConfig(**(vision_config or {}))
        self.llm_config = Qwen2Config(**(llm_config or {}))
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
