"""Build a local model folder of R1V3's architecture (`SkyworkR1VChatModel`), offline, in seconds.

The folder holds what vLLM loads with `trust_remote_code=True`: `config.json`, our own configuration module,
`generation_config.json`, a locally trained byte-level BPE tokenizer with the model's special tokens and an
R1V3-style ChatML chat template, and (optionally) random weights in `model.safetensors`. Its answers are
noise; the code path through vLLM is the real one.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CONFIG_MODULE = "configuration_skywork_chat"
CONFIG_CLASS = "SkyworkChatConfig"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT)
# Ordinary added tokens: kept whole by the tokenizer, yet not dropped by `skip_special_tokens`, so the
# reasoning trace stays splittable in decoded text.
THINK_TOKENS = (THINK_START, THINK_END)

# R1V3-style ChatML with string content (vLLM then inserts its `<image>` placeholder into the user text);
# the generation prompt opens the reasoning trace as R1V3's own template does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)

# Written by hand rather than by save_pretrained, whose output depends on the transformers version (5.x names
# a `TokenizersBackend` class and moves the template to chat_template.jinja); this loads as a
# PreTrainedTokenizerFast with the chat template inline.
_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": None,
    "eos_token": IM_END,
    "pad_token": ENDOFTEXT,
    "model_max_length": 32768,
    "clean_up_tokenization_spaces": False,
    "chat_template": CHAT_TEMPLATE,
}

# Written into the folder and imported by transformers through `auto_map`; vLLM maps `llm_config` to
# `text_config` itself.
CONFIG_SOURCE = '''\
"""SkyworkR1VChatModel configuration (InternViT vision tower + Qwen2 LLM), written by vlmbatch."""

from typing import Any

from transformers import PretrainedConfig, Qwen2Config


class SkyworkVisionConfig(PretrainedConfig):
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


class SkyworkChatConfig(PretrainedConfig):
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
'''

# A small built-in corpus: enough merges for readable noise; the rest of the vocabulary is filler.
_CORPUS = (
    "The image shows a red car parked next to a tall building on a sunny day.",
    "Let me think step by step about what is in the picture before I answer.",
    "There are three people, two dogs and a bicycle in the photo.",
    "First, count the objects. Then compare their sizes. Finally, give the answer.",
    "The chart has an x axis for time and a y axis for the number of sales.",
    "Question: what color is the sky? Answer: the sky is blue with white clouds.",
    "Wait, I should check the left side of the image again to be sure.",
    "So the area of the triangle is one half times the base times the height.",
    "The text in the sign reads: open from nine in the morning until six in the evening.",
    "Therefore, the correct option is B, because the angle is larger than ninety degrees.",
    "A cat is sleeping on a blue sofa while a child reads a book by the window.",
    "The table lists the price, the quantity and the total for each item.",
)


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


def build_model_folder(path: Path, shape: ModelShape = TINY, *, weights: bool = True, seed: int = 0) -> Path:
    """Write a loadable `SkyworkR1VChatModel` folder of `shape` into `path` (created if missing) and return it.

    With `weights=False` no `model.safetensors` is written: load it with vLLM's `load_format="dummy"` (the
    only sane choice for R1V3_38B, whose weights would be ~77 GB). The same `seed` gives the same bytes.
    Raises ValueError if the shape's vocabulary is too small for the tokenizer's base alphabet.
    """
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(shape.vocab_size)
    ids = {token: _token_id(tokenizer, token) for token in (ENDOFTEXT, IM_END, THINK_END)}
    tokenizer.save(str(path / "tokenizer.json"))
    _write_json(path / "tokenizer_config.json", _TOKENIZER_CONFIG)
    (path / f"{CONFIG_MODULE}.py").write_text(CONFIG_SOURCE)
    _write_json(path / "config.json", _config(shape, bos_id=ids[ENDOFTEXT], eos_id=ids[IM_END]))
    _write_json(
        path / "generation_config.json",
        {"bos_token_id": ids[ENDOFTEXT], "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]], "pad_token_id": ids[ENDOFTEXT]},
    )
    weights_file = path / "model.safetensors"
    if weights:
        _write_weights(
            weights_file,
            shape,
            seed=seed,
            think_end_id=ids[THINK_END],
            eos_id=ids[IM_END],
            other_eos_ids=(ids[ENDOFTEXT],),
        )
    else:
        weights_file.unlink(missing_ok=True)  # stale weights of another shape would fail the load
    return path


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on the built-in corpus, padded with filler ids to exactly `vocab_size`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    added = len(SPECIAL_TOKENS) + len(THINK_TOKENS)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + added:
        raise ValueError(f"vocab_size {vocab_size} < {len(alphabet) + added} (byte alphabet + added tokens)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - added, initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(_CORPUS, trainer=trainer)

    # Fillers go into the BPE vocabulary rather than being ~150k added tokens (which every encode matches
    # against); no merge reaches them, and their ASCII names decode as plain text when sampled.
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for index in range(vocab_size - added - len(vocab)):
        vocab[f"<|filler_{index}|>"] = len(vocab)
    padded = Tokenizer.from_str(json.dumps(spec))
    padded.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    padded.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK_TOKENS])
    return padded


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise AssertionError(f"{token} missing from the tokenizer just built")
    return token_id


def _config(shape: ModelShape, *, bos_id: int, eos_id: int) -> dict[str, Any]:
    vision = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": shape.vision_hidden_size,
        "image_size": shape.image_size,
        "patch_size": shape.patch_size,
        "num_channels": 3,
        "num_attention_heads": shape.vision_heads,
        "num_hidden_layers": shape.vision_layers,
        "intermediate_size": shape.vision_intermediate_size,
        "qkv_bias": False,
        "qk_normalization": True,
        "norm_type": shape.vision_norm,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "initializer_factor": 0.1,
        "torch_dtype": shape.dtype,
    }
    llm = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": shape.llm_hidden_size,
        "intermediate_size": shape.llm_intermediate_size,
        "num_hidden_layers": shape.llm_layers,
        "num_attention_heads": shape.llm_heads,
        "num_key_value_heads": shape.llm_kv_heads,
        "hidden_act": "silu",
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rope_theta,
        "rms_norm_eps": shape.rms_norm_eps,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": shape.dtype,
    }
    return {
        "architectures": ["SkyworkR1VChatModel"],
        "model_type": "skywork_chat",
        "auto_map": {"AutoConfig": f"{CONFIG_MODULE}.{CONFIG_CLASS}"},
        "select_layer": -1,
        "force_image_size": shape.image_size,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "torch_dtype": shape.dtype,
        # Without it transformers 5 suspects an old Mistral tokenizer and warns about its regex.
        "transformers_version": importlib.metadata.version("transformers"),
        "vision_config": vision,
        "llm_config": llm,
    }


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


def _write_weights(
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


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
