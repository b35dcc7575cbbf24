"""The images of a dataset folder: each one written once, named by the hash of its bytes, as the model saw
it, so that a trainer opening `images/ab/ab12….jpg` with `Image.open` gets the pixels the trace is about.

- An image whose stored bytes decode to what the worker gave the model (JPEG, PNG, WEBP or BMP in RGB or
  grayscale, one frame, no EXIF rotation) is linked (a hard link where the image is a local file on the
  same filesystem) or copied as it is.
- Any other (an EXIF orientation, transparency, 16-bit grayscale, an animation, TIFF or GIF) is decoded as
  the worker decodes it (`media.images.decode_image`: orientation applied, alpha on white, first frame)
  and written as PNG, losslessly.
- When the worker recorded the hash of the bytes it read, the bytes read now must hash the same: a source
  file changed since is reported (`ImageChanged`), not exported as if the trace were about it.
- With an image root (`--image-root`), nothing is written: local files under that folder are named by
  their path relative to it, as they are.

Memory stays flat: only the last few thousand images' names are remembered; an image met again later is
fetched and hashed again, and found already written.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from vlmbatch.media.images import decode_image
from vlmbatch.media.local_roots import is_local, local_path
from vlmbatch.media.stores import ObjectStore
from vlmbatch.schema.contracts.errors import VlmbatchError

# Names remembered (URI → path): the samples of a job and the questions of one image are adjacent.
RECENT_NAMES = 4096
_PASSTHROUGH_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
_PASSTHROUGH_MODES = frozenset({"RGB", "L"})
_ORIENTATION = 0x0112


class ImageChanged(VlmbatchError):
    """An image's bytes no longer hash as they did when the worker read them."""


class ImageOutsideRoot(VlmbatchError):
    """An image that is not a local file under the image root (`--image-root`)."""


def content_hash(data: bytes) -> str:
    """The hash an image is named and checked by: SHA-256, hex."""
    return hashlib.sha256(data).hexdigest()


class DatasetImages:
    """Writes (or names) the images of a dataset folder; `path_of` gives a record's path for one."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        dataset_dir: Path,
        images_dir: Path,
        image_root: Path | None,
        max_bytes: int,
        max_pixels: int,
    ) -> None:
        self._store = store
        self._dataset_dir = dataset_dir.resolve()
        self._images_dir = images_dir.resolve()
        self._image_root = image_root.resolve() if image_root is not None else None
        self._max_bytes, self._max_pixels = max_bytes, max_pixels
        self._names: OrderedDict[str, str] = OrderedDict()
        self.written = 0

    def path_of(self, uri: str, *, recorded_hash: str | None = None) -> str:
        """The path a record names `uri` by: relative to the dataset folder (or to the image root).
        Raises ImageChanged, ImageOutsideRoot, and the input errors of fetching or decoding it."""
        known = self._names.get(uri)
        if known is not None:
            self._names.move_to_end(uri)
            return known
        name = self._under_root(uri, recorded_hash) if self._image_root is not None else self._write(uri, recorded_hash)
        self._names[uri] = name
        if len(self._names) > RECENT_NAMES:
            self._names.popitem(last=False)
        return name

    def _under_root(self, uri: str, recorded_hash: str | None) -> str:
        assert self._image_root is not None
        path = local_path(uri).resolve() if is_local(uri) else None
        if path is None or self._image_root not in path.parents:
            raise ImageOutsideRoot(f"{uri} is not a file under the image root {self._image_root}")
        if recorded_hash is not None:
            self._checked(uri, recorded_hash)
        return path.relative_to(self._image_root).as_posix()

    def _checked(self, uri: str, recorded_hash: str | None) -> bytes:
        data = self._store.fetch(uri, max_bytes=self._max_bytes)
        if recorded_hash is not None and content_hash(data) != recorded_hash:
            raise ImageChanged(f"{uri} changed since the worker read it (its bytes hash differently now)")
        return data

    def _write(self, uri: str, recorded_hash: str | None) -> str:
        data = self._checked(uri, recorded_hash)
        extension = _passthrough_extension(data)
        source = local_path(uri) if is_local(uri) else None  # linked when written as it is
        if extension is None:  # what the model saw differs from the stored bytes: write that
            decoded = decode_image(data, max_bytes=self._max_bytes, max_pixels=self._max_pixels, source=uri)
            buffer = io.BytesIO()
            decoded.save(buffer, format="PNG")
            data, extension, source = buffer.getvalue(), "png", None
        digest = content_hash(data)
        target = self._images_dir / digest[:2] / f"{digest}.{extension}"
        if not target.exists():
            self._place(target, data, source=source)
        return os.path.relpath(target, self._dataset_dir)

    def _place(self, target: Path, data: bytes, *, source: Path | None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        try:
            if source is not None:
                try:
                    os.link(source, partial)
                except OSError:  # another filesystem, or links not allowed: a copy
                    shutil.copyfile(source, partial)
                if partial.stat().st_size != len(data):  # the file changed since it was read
                    partial.unlink()
                    partial.write_bytes(data)
            else:
                partial.write_bytes(data)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self.written += 1


def _passthrough_extension(data: bytes) -> str | None:
    """The file extension to keep the bytes as they are under, or None when the worker's decoding changes
    them (EXIF orientation, transparency, other modes, animation, other formats) or they do not open."""
    try:
        with Image.open(io.BytesIO(data), formats=tuple(_PASSTHROUGH_FORMATS)) as image:
            if image.mode not in _PASSTHROUGH_MODES or getattr(image, "n_frames", 1) != 1:
                return None
            if "transparency" in image.info or image.getexif().get(_ORIENTATION, 1) != 1:
                return None
            return _PASSTHROUGH_FORMATS.get(image.format or "")
    except Exception:  # not one of those formats, or broken: decode_image says why
        return None
