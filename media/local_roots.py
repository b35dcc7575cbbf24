"""Local reads confined to allowed roots.

A manifest (which may come from S3, or a Batch API upload) must not make a worker or the result browser
read any file of their host. Local paths are allowed only under the folder of the run's own source (the
manifest's folder, or the submitted folder) and the folders of `VLMBATCH_LOCAL_ROOTS`. Paths are
compared after resolving symlinks and `..`, so a link inside a root that points out of it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from vlmbatch.schema.contracts.errors import InputUnsupported

# A run's source that names a file (a manifest) allows that file's folder; a folder allows itself.
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


def is_local(uri: str) -> bool:
    """Whether `uri` names a local file (a `file://` URI or a plain path)."""
    return urlparse(uri).scheme in ("", "file")


def local_path(uri: str) -> Path:
    """The filesystem path of a `file://` URI or plain path."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)


def source_root(source: str | None) -> Path | None:
    """The folder a run's recorded source allows: a local manifest's folder, or a local folder itself.
    None for remote sources and for relative paths (their meaning depends on the submitter's folder)."""
    if not source or not is_local(source):
        return None
    path = local_path(source)
    if not path.is_absolute():
        return None
    # A manifest, a tar shard or a brace pattern of shards names files: their folder is the root.
    names_files = path.name.lower().endswith((*MANIFEST_SUFFIXES, ".tar")) or "{" in path.name
    return path.parent if names_files else path


@dataclass(frozen=True)
class LocalRoots:
    """The folders local reads may come from (already resolved)."""

    roots: tuple[Path, ...] = ()

    @classmethod
    def of(cls, paths: Iterable[Path | str | None]) -> LocalRoots:
        resolved = dict.fromkeys(Path(os.path.realpath(p)) for p in paths if p)
        return cls(tuple(resolved))

    def allows(self, path: Path) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == root or root in real.parents for root in self.roots)

    def check(self, uri: str) -> None:
        """Raise InputUnsupported when `uri` is a local path outside every root (remote URIs pass; a tar
        shard member is checked by its shard)."""
        if uri.startswith("tar+"):  # media/shards.py: tar+<shard URI>#offset=...
            uri = uri[len("tar+") :].rpartition("#")[0] or uri[len("tar+") :]
        if is_local(uri) and not self.allows(local_path(uri)):
            raise InputUnsupported(f"{uri}: {self.refusal()}")

    def refusal(self) -> str:
        """Why a local path is refused, and what would allow it."""
        allowed = ", ".join(str(r) for r in self.roots) or "none"
        return f"outside the allowed local folders ({allowed}); add its folder to VLMBATCH_LOCAL_ROOTS"
