"""`provenance.json` of a dataset folder: what produced a run's traces, as far as the ledger records it
(the model named, the sampling and engine-facing settings, the system prompt), plus what the model folder
says now when the model is a local folder (its resolved path, a fingerprint of its config and weights
index, its chat template's hash). What neither holds is written as null: the ledger does not (yet) record
the vLLM version or the worker's engine arguments."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.ledger.runs import RunView

# The files that say what a model is: its config, and the index of its weight files (sharded checkpoints).
_FINGERPRINTED = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def run_provenance(run: RunView) -> dict[str, Any]:
    """The provenance entry of one run (module docstring)."""
    settings = RunSettings.model_validate(run.settings)
    folder = _model_folder(run.model)
    return {
        "run": run.name,
        "run_id": run.id,
        "created_at": run.created_at.isoformat() + "Z",
        "source": run.source,
        "model": run.model,
        "model_path": str(folder) if folder is not None else None,
        "model_fingerprint": _fingerprint(folder) if folder is not None else None,
        "chat_template_sha256": _template_hash(folder) if folder is not None else None,
        "vllm_version": None,
        "engine": None,
        "system_prompt": settings.system_prompt,
        "sampling": settings.sampling.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json", exclude={"sampling", "system_prompt", "model"}),
        "settings_fingerprint": settings.fingerprint(),
    }


def _model_folder(model: str) -> Path | None:
    path = Path(model).expanduser()
    try:
        return path.resolve() if path.is_dir() else None
    except OSError:
        return None


def _fingerprint(folder: Path) -> str | None:
    """SHA-256 over the config and weights index files present (name and bytes of each)."""
    digest = hashlib.sha256()
    found = False
    for name in _FINGERPRINTED:
        path = folder / name
        if path.is_file():
            found = True
            digest.update(f"{name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest() if found else None


def _template_hash(folder: Path) -> str | None:
    """SHA-256 of the chat template: its own file, else `tokenizer_config.json`'s `chat_template`."""
    for name in _TEMPLATE_FILES:
        path = folder / name
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, OSError, AttributeError):
            return None
        if template is not None:
            text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
            return hashlib.sha256(text.encode()).hexdigest()
    return None
