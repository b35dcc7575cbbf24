"""Build a local model folder of R1V3's architecture (`SkyworkR1VChatModel`), offline, in seconds.

The folder holds what vLLM loads with `trust_remote_code=True`: `config.json`, our own configuration module
(configuration_skywork_chat.py, copied), `generation_config.json`, a locally trained byte-level BPE tokenizer
with the model's special tokens and an R1V3-style ChatML chat template, and (optionally) random weights in
`model.safetensors`. Its answers are noise; the code path through vLLM is the real one.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Any

from vlmbatch.schema.contracts.reasoning import THINK_CLOSE
from vlmbatch.worker.smoke_model.shapes import TINY, ModelShape
from vlmbatch.worker.smoke_model.tokenizer import ENDOFTEXT, IM_END, TOKENIZER_CONFIG, token_id, train_tokenizer
from vlmbatch.worker.smoke_model.weights import write_weights

CONFIG_MODULE = "configuration_skywork_chat"
CONFIG_CLASS = "SkyworkChatConfig"
CONFIG_FILE = Path(__file__).with_name(f"{CONFIG_MODULE}.py")


def build_model_folder(path: Path, shape: ModelShape = TINY, *, weights: bool = True, seed: int = 0) -> Path:
    """Write a loadable `SkyworkR1VChatModel` folder of `shape` into `path` (created if missing) and return it.

    With `weights=False` no `model.safetensors` is written: load it with vLLM's `load_format="dummy"` (the
    only sane choice for R1V3_38B, whose weights would be ~77 GB). The same `seed` gives the same bytes.
    Raises ValueError if the shape's vocabulary is too small for the tokenizer's base alphabet.
    """
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(shape.vocab_size)
    ids = {token: token_id(tokenizer, token) for token in (ENDOFTEXT, IM_END, THINK_CLOSE)}
    tokenizer.save(str(path / "tokenizer.json"))
    _write_json(path / "tokenizer_config.json", TOKENIZER_CONFIG)
    shutil.copyfile(CONFIG_FILE, path / CONFIG_FILE.name)
    _write_json(path / "config.json", _config(shape, bos_id=ids[ENDOFTEXT], eos_id=ids[IM_END]))
    _write_json(
        path / "generation_config.json",
        {"bos_token_id": ids[ENDOFTEXT], "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]], "pad_token_id": ids[ENDOFTEXT]},
    )
    weights_file = path / "model.safetensors"
    if weights:
        write_weights(
            weights_file,
            shape,
            seed=seed,
            think_end_id=ids[THINK_CLOSE],
            eos_id=ids[IM_END],
            other_eos_ids=(ids[ENDOFTEXT],),
        )
    else:
        weights_file.unlink(missing_ok=True)  # stale weights of another shape would fail the load
    return path


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


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
