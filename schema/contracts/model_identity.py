"""What model a run asks for and a worker serves, beyond the string someone typed.

`--model ./fm` on the submitting host and `--model /abs/fm` on a worker name the same folder; fine-tunes of
one base share a name and are not the same model. So a local folder is named by its resolved path, and
identified by a fingerprint of what makes it that model: its `config.json` and its weight files' names and
sizes (not their bytes: hashing 70 GB at every start would take minutes). A hub id is its own identity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# Files whose names and sizes say which weights a folder holds.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelIdentity:
    """`model` as runs and workers store it (a local folder's resolved path, else the id as given), its
    short name, and for a local folder its fingerprint."""

    model: str
    name: str
    fingerprint: str | None


def canonical_model(model: str) -> str:
    """A local folder's resolved absolute path; anything else (a hub id) unchanged."""
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model


def identify(model: str) -> ModelIdentity:
    """The identity of `model`. Reads config.json and lists the folder (no weight bytes)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return ModelIdentity(model=model, name=model, fingerprint=None)
    resolved = folder.resolve()
    return ModelIdentity(model=str(resolved), name=resolved.name, fingerprint=fingerprint(resolved))


def fingerprint(folder: Path) -> str | None:
    """sha256 over config.json's bytes, the weight index files and each weight file's name and size; None
    for a folder without config.json (not a model folder vLLM could load)."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    digest = hashlib.sha256(config.read_bytes())
    for index in _INDEXES:
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8")).get("weight_map", {})
            digest.update(json.dumps(weight_map, sort_keys=True).encode())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            digest.update(f"\n{path.name}\t{path.stat().st_size}".encode())
    return digest.hexdigest()[:32]
