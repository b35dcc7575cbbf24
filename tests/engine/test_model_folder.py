"""The local model folder of R1V3's architecture, and the vLLM CPU build running it for real."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmbatch.worker.engines import vllm_compat
from vlmbatch.worker.smoke_model import R1V3_38B, TINY, build_model_folder
from vlmbatch.worker.smoke_model.builder import CONFIG_CLASS, CONFIG_MODULE
from vlmbatch.worker.smoke_model.tokenizer import IM_END, SPECIAL_TOKENS, THINK_TOKENS


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def vllm_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """vLLM and its spawned engine write their caches and the remote-code module under tmp_path."""
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")
    yield


def _config(folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    return config


def _tokenizer(folder: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(folder)


def _config_class(folder: Path) -> Any:
    """Our configuration module, imported straight from the folder (no remote-code cache involved)."""
    spec = importlib.util.spec_from_file_location(CONFIG_MODULE, folder / f"{CONFIG_MODULE}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, CONFIG_CLASS)


def test_config_declares_the_skywork_architecture_through_our_configuration_module(tiny_folder: Path) -> None:
    config = _config(tiny_folder)

    assert config["architectures"] == ["SkyworkR1VChatModel"]
    assert config["model_type"] == "skywork_chat"
    assert config["auto_map"] == {"AutoConfig": f"{CONFIG_MODULE}.{CONFIG_CLASS}"}
    assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    parsed = _config_class(tiny_folder)(**config)
    assert parsed.llm_config.hidden_size == TINY.llm_hidden_size
    assert parsed.vision_config.hidden_size == TINY.vision_hidden_size
    assert parsed.vision_config.image_size == parsed.force_image_size == 448


def test_tokenizer_holds_the_special_tokens_and_exactly_the_configured_vocabulary(tiny_folder: Path) -> None:
    tokenizer = _tokenizer(tiny_folder)

    assert len(tokenizer) == _config(tiny_folder)["llm_config"]["vocab_size"] == TINY.vocab_size
    for token in (*SPECIAL_TOKENS, *THINK_TOKENS):
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode(token)) == [token]
    assert tokenizer.eos_token == IM_END


def test_think_tokens_survive_skip_special_tokens(tiny_folder: Path) -> None:
    tokenizer = _tokenizer(tiny_folder)

    ids = tokenizer.encode("<think>\nsome reasoning</think>the answer<|im_end|>")

    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nsome reasoning</think>the answer"


def test_chat_template_opens_the_assistant_turn_with_think(tiny_folder: Path) -> None:
    tokenizer = _tokenizer(tiny_folder)

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is in the image?"}], tokenize=False, add_generation_prompt=True
    )

    assert prompt == "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_weights_name_every_checkpoint_tensor_at_the_configured_sizes(tiny_folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny_folder / "model.safetensors"), framework="pt") as weights:
        shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118

    assert shapes["language_model.model.embed_tokens.weight"] == (TINY.vocab_size, TINY.llm_hidden_size)
    assert shapes["language_model.lm_head.weight"] == (TINY.vocab_size, TINY.llm_hidden_size)
    assert shapes["mlp1.1.weight"] == (TINY.llm_hidden_size, 4 * TINY.vision_hidden_size)
    assert shapes["vision_model.embeddings.position_embedding"] == (1, (448 // 14) ** 2 + 1, TINY.vision_hidden_size)
    assert f"vision_model.encoder.layers.{TINY.vision_layers - 1}.attn.qkv.weight" in shapes
    assert f"language_model.model.layers.{TINY.llm_layers - 1}.self_attn.k_proj.bias" in shapes


def test_same_seed_writes_the_same_bytes_and_another_seed_other_weights(tmp_path: Path) -> None:
    first = build_model_folder(tmp_path / "first", seed=0)
    again = build_model_folder(tmp_path / "again", seed=0)
    other = build_model_folder(tmp_path / "other", seed=1)

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_r1v3_38b_folder_has_the_real_sizes_151674_token_ids_and_no_weights(tmp_path: Path) -> None:
    folder = build_model_folder(tmp_path / "r1v3", R1V3_38B, weights=False)
    config = _config_class(folder)(**_config(folder))

    assert not (folder / "model.safetensors").exists()
    assert len(_tokenizer(folder)) == config.llm_config.vocab_size == 151674
    llm, vision = config.llm_config, config.vision_config
    assert (llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers) == (5120, 27648, 64)
    assert (llm.num_attention_heads, llm.num_key_value_heads) == (40, 8)
    assert llm.max_position_embeddings == 32768
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (3200, 45, 25)
    assert (vision.intermediate_size, vision.norm_type, vision.qk_normalization) == (12800, "rms_norm", True)
    assert (config.downsample_ratio, config.ps_version, config.max_dynamic_patch) == (0.5, "v2", 12)


@pytest.mark.vllm
@pytest.mark.timeout(240)
def test_compat_layer_lets_torchvision_and_vllm_import_here_and_in_spawned_children(tmp_path: Path) -> None:
    # The spawned child runs no code of ours: it must get the layer from the environment, as vLLM's engine
    # core and workers do.
    script = (
        "from vlmbatch.worker.engines.vllm_compat import install\n"
        "install()\n"
        "import torchvision.transforms, transformers.audio_utils, vllm\n"
        "import importlib, multiprocessing\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.get_context('spawn').Process(\n"
        "        target=importlib.import_module, args=('torchvision.transforms',))\n"
        "    child.start()\n"
        "    child.join()\n"
        "    assert child.exitcode == 0, child.exitcode\n"
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "hf-modules"), VLLM_CACHE_ROOT=str(tmp_path / "vllm"))
    # Start clean even if this pytest process already installed the layer (it edits PYTHONPATH).
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p and p != str(vllm_compat.HOOK_DIR))

    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=200)

    assert done.returncode == 0, done.stderr[-3000:]
