"""Load a `vlmbatch export --format sft` folder with LLaMA-Factory's own `get_dataset`, as training would:
stage `sft`, the `llava` multimodal template (its `<image>` placeholder, LlavaPlugin's image processing and
count check), `dataset_dir` = the folder, a tiny offline tokenizer (the smoke model's) and processor.
Prints `{"DATASET_NAME": {"loaded": N, "longest": tokens}, ...}` as its last line.

Run with the LLaMA-Factory environment (scripts/llamafactory-env.sh): `.venv-llamafactory/bin/python
tests/consumers/llamafactory_load.py DIR DATASET_NAME [DIR DATASET_NAME ...]`, from any working directory.

Two things are set up before LLaMA-Factory is imported, both because the machine's torch is the `+cpu`
build: vlmbatch's compatibility layer (PyPI's CUDA torchvision), and an empty `torchaudio` module: PyPI's
torchaudio is a CUDA build that cannot load here, LLaMA-Factory's mm_plugin imports it at module level, and
uses it only for audio, which these records never have. Version checks are off
(`DISABLE_VERSION_CHECK=1`): LLaMA-Factory pins older transformers / datasets than this project runs.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

CUTOFF_LEN = 8192
IMAGE_SIZE = 224
PATCH_SIZE = 14


def _prepare_imports() -> None:
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from vlmbatch.worker.engines.vllm_compat import install

    install()
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = stub


def _tokenizer_and_processor(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    from vlmbatch.worker.smoke_model.tokenizer import TOKENIZER_CONFIG, train_tokenizer

    train_tokenizer(4096).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    size = {"shortest_edge": IMAGE_SIZE}
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size=size, crop_size=crop),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    return tokenizer, processor


def load(folders: list[tuple[Path, str]]) -> dict[str, dict[str, int]]:
    _prepare_imports()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "tokenizer").mkdir()
        return {name: _load_one(work, dataset_dir, name) for dataset_dir, name in folders}


def _load_one(work: Path, dataset_dir: Path, name: str) -> dict[str, int]:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    tokenizer, processor = _tokenizer_and_processor(work / "tokenizer")
    data_args = DataArguments(
        template="llava",
        dataset=name,
        dataset_dir=str(dataset_dir),
        cutoff_len=CUTOFF_LEN,
        overwrite_cache=True,
        preprocessing_num_workers=None,
    )
    model_args = ModelArguments(model_name_or_path=str(work / "tokenizer"), cache_dir=str(work / "cache"))
    training_args = Seq2SeqTrainingArguments(output_dir=str(work / "out"), do_train=True, report_to=[])
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, "sft", tokenizer, processor)
    train = module["train_dataset"]
    longest = max((len(ids) for ids in train["input_ids"]), default=0)
    return {"loaded": len(train), "longest": longest}


if __name__ == "__main__":
    pairs = sys.argv[1:]
    print(json.dumps(load([(Path(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)])))
