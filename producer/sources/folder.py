"""A local folder, walked recursively in sorted order. Symlinks are followed only while they stay inside
the root: one that escapes it (or a path with `..` that does) makes the whole source invalid."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from vlmbatch.producer.sources.base import Rejects, Row, SpecCheck
from vlmbatch.producer.sources.images import looks_like_image
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import JobSpec


class FolderSource:
    def __init__(self, root: Path, *, question: str) -> None:
        self._given = root
        self._root = root.resolve()
        self._question = question

    @property
    def uri(self) -> str:
        return self._root.as_uri()

    def validate(self, check: SpecCheck | None = None, rejects: Rejects | None = None) -> None:
        """`check` is unused: listed images carry no reference or metadata to check."""
        if not self._root.is_dir():
            raise SourceError(f"{self._given}: not a folder")
        escaping: list[str] = []
        for link, image in self._walk():
            if link is not None:
                escaping.append(str(link))
            elif rejects is not None and image is not None:
                rejects.accept()
        if escaping:
            shown = ", ".join(escaping[:10])
            raise SourceError(f"{self._given}: {len(escaping)} path(s) lead outside the folder, refused: {shown}")

    def rows(self) -> Iterator[Row]:
        for spec in self.specs():
            yield spec.images[0], spec

    def specs(self) -> Iterator[JobSpec]:
        for escaping, path in self._walk():
            if escaping is None and path is not None:
                yield JobSpec(images=(path.as_uri(),), question=self._question)

    def _walk(self) -> Iterator[tuple[Path | None, Path | None]]:
        """Yields (escaping_path, None) for a path that leaves the root, (None, image_path) otherwise."""
        for dirpath, dirnames, filenames in os.walk(self._root, followlinks=False):
            dirnames.sort()
            here = Path(dirpath)
            for name in list(dirnames):
                candidate = here / name
                if candidate.is_symlink() and not _inside(candidate.resolve(), self._root):
                    yield candidate, None
            for name in sorted(filenames):
                if not looks_like_image(name):
                    continue
                candidate = here / name
                real = candidate.resolve()
                if not _inside(real, self._root):
                    yield candidate, None
                elif real.is_file():
                    yield None, real


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
