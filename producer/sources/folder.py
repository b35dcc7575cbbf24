"""A local folder, walked recursively in sorted order. Symlinks are followed only while they stay inside
the root: one that escapes it (or a path with `..` that does) makes the whole source invalid.

An image's sidecar files, as img2dataset's `files` output writes them (`00000/000000001.jpg` beside
`000000001.txt` and `000000001.json`), become the job's metadata: the `.txt` as `caption`, the `.json`
object's fields as they are; `--question-column` / `--reference-column` may name one of them. Sidecars
share the image's key (its name up to the first dot, as WebDataset and img2dataset group a sample)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vlmbatch.producer.sources.base import Rejects, Row, SpecCheck
from vlmbatch.producer.sources.images import looks_like_image
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import JobSpec

# Sidecar files read at most (a caption or a metadata object, not a dataset).
MAX_SIDECAR_BYTES = 1 << 20


class FolderSource:
    def __init__(
        self,
        root: Path,
        *,
        question: str | None,
        question_column: str = "question",
        reference_column: str = "reference",
    ) -> None:
        self._given = root
        self._root = root.resolve()
        self._question = question
        self._question_column = question_column
        self._reference_column = reference_column

    @property
    def uri(self) -> str:
        return self._root.as_uri()

    def validate(self, check: SpecCheck | None = None, rejects: Rejects | None = None) -> None:
        """`check` applies to the references sidecars may bring; with `rejects`, rows are counted (and
        bad sidecars recorded) there."""
        if not self._root.is_dir():
            raise SourceError(f"{self._given}: not a folder")
        escaping = [str(link) for link, _, _ in self._walk() if link is not None]
        if escaping:
            shown = ", ".join(escaping[:10])
            raise SourceError(f"{self._given}: {len(escaping)} path(s) lead outside the folder, refused: {shown}")
        if rejects is not None:
            for where, spec in self.rows():
                if isinstance(spec, ValueError):
                    rejects.add(where, spec)
                else:
                    if check is not None:
                        try:
                            check(spec)
                        except ValueError as exc:
                            rejects.add(where, exc)
                            continue
                    rejects.accept()

    def rows(self) -> Iterator[Row]:
        for escaping, path, siblings in self._walk():
            if escaping is None and path is not None:
                try:
                    yield path.as_uri(), self._spec(path, siblings)
                except ValueError as exc:
                    yield path.as_uri(), exc

    def specs(self) -> Iterator[JobSpec]:
        for where, spec in self.rows():
            if isinstance(spec, ValueError):
                raise SourceError(f"{where}: {spec}")
            yield spec

    def _spec(self, path: Path, siblings: frozenset[str]) -> JobSpec:
        meta = _sidecars(path, siblings)
        question = meta.get(self._question_column) if meta else None
        if not isinstance(question, str) or not question.strip():
            question = self._question
        if question is None:
            raise ValueError(f"no question (no `{self._question_column}` beside the image and no --question)")
        reference = meta.get(self._reference_column) if meta else None
        if reference is not None and not isinstance(reference, str | int | float):
            raise ValueError(f"`{self._reference_column}` must be text or a number")
        try:
            return JobSpec(
                images=(path.as_uri(),),
                question=question,
                reference=None if reference in (None, "") else str(reference),
                meta=meta or None,
            )
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from exc

    def _walk(self) -> Iterator[tuple[Path | None, Path | None, frozenset[str]]]:
        """Yields (escaping_path, None, _) for a path that leaves the root, (None, image_path, the names
        of its folder) otherwise."""
        for dirpath, dirnames, filenames in os.walk(self._root, followlinks=False):
            dirnames.sort()
            here = Path(dirpath)
            names = frozenset(filenames)
            for name in list(dirnames):
                candidate = here / name
                if candidate.is_symlink() and not _inside(candidate.resolve(), self._root):
                    yield candidate, None, names
            for name in sorted(filenames):
                if not looks_like_image(name):
                    continue
                candidate = here / name
                real = candidate.resolve()
                if not _inside(real, self._root):
                    yield candidate, None, names
                elif real.is_file():
                    yield None, real, names


def _sidecars(image: Path, siblings: frozenset[str]) -> dict[str, Any]:
    """The `.json` fields and `.txt` caption beside `image` (same key). Raises ValueError for a sidecar
    that cannot be read (too large, not UTF-8, not JSON)."""
    key = image.name.split(".", 1)[0]
    meta: dict[str, Any] = {}
    for extension in ("json", "txt"):
        name = f"{key}.{extension}"
        if name not in siblings:
            continue
        sidecar = image.with_name(name)
        try:
            if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
                raise ValueError(f"`{name}` is over {MAX_SIDECAR_BYTES} bytes")
            text = sidecar.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"`{name}` cannot be read ({exc})") from exc
        if extension == "txt":
            meta["caption"] = text.strip()
            continue
        try:
            fields = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"`{name}` is not valid JSON") from exc
        meta.update(fields if isinstance(fields, dict) else {"json": fields})
    return meta


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
