"""Job image thumbnails: fetched through the object store seam, decoded with the worker's own bounds
(`decode_image`: no decompression bomb, no disallowed format), shrunk, and sent as JPEG.

Any failure gives a small placeholder image naming the error type, never a stack trace: the images of
failed jobs are exactly the ones that do not decode. Only URIs the ledger holds for a job are fetched;
the browser never fetches a URI a request names.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw

from vlmbatch.media.images import decode_image
from vlmbatch.media.local_roots import LocalRoots
from vlmbatch.media.stores import ObjectStore
from vlmbatch.schema.contracts.errors import ErrorType, JobError

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
PLACEHOLDER_SIZE = (192, 144)
_PLACEHOLDER_BACKGROUND = (236, 236, 236)
_PLACEHOLDER_INK = (150, 150, 150)
# Decoding is CPU-bound: a page of thumbnails must not take every core from a worker on the same host.
MAX_CONCURRENT_DECODES = 4
# Thumbnails kept in memory (about 30 KB each at 512 px); a job's images never change.
CACHE_ENTRIES = 256


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    # None for a real thumbnail; the error type for a placeholder.
    error: str | None = None


class Thumbnailer:
    """Thumbnails of image URIs, at most `max_px` on their longer side, cached by URI."""

    def __init__(self, store: ObjectStore, *, max_px: int, max_bytes: int, max_pixels: int) -> None:
        self._store = store
        self._max_px = max_px
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._decodes = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def thumbnail(self, uri: str, roots: LocalRoots) -> Thumbnail:
        """The thumbnail of `uri`, or a placeholder naming why there is none (a local path outside
        `roots` among the reasons: the browser reads no more of its host than the workers do). Never
        raises for bad input."""
        try:
            roots.check(uri)  # before the cache: another run's roots may have let this URI in
        except JobError as exc:
            return Thumbnail(placeholder(exc.error_type.value), exc.error_type.value)
        with self._lock:
            cached = self._cache.get(uri)
            if cached is not None:
                self._cache.move_to_end(uri)
                return Thumbnail(cached)
        try:
            with self._decodes:
                jpeg = self._make(uri)
        except JobError as exc:  # the input's own fault: the same error the job failed with
            return Thumbnail(placeholder(exc.error_type.value), exc.error_type.value)
        except Exception:  # a bug or an unexpected library error: logged here, never shown
            log.exception("thumbnail of %s failed", uri)
            return Thumbnail(placeholder(ErrorType.INTERNAL.value), ErrorType.INTERNAL.value)
        with self._lock:
            self._cache[uri] = jpeg
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return Thumbnail(jpeg)

    def _make(self, uri: str) -> bytes:
        data = self._store.fetch(uri, max_bytes=self._max_bytes)
        image = decode_image(data, max_bytes=self._max_bytes, max_pixels=self._max_pixels, source=uri)
        image.thumbnail((self._max_px, self._max_px), Image.Resampling.LANCZOS)
        return _jpeg(image)


def placeholder(label: str) -> bytes:
    """A small grey JPEG, crossed out, with `label` (an error type) written on it."""
    image = Image.new("RGB", PLACEHOLDER_SIZE, _PLACEHOLDER_BACKGROUND)
    draw = ImageDraw.Draw(image)
    width, height = PLACEHOLDER_SIZE
    draw.rectangle((0, 0, width - 1, height - 1), outline=_PLACEHOLDER_INK)
    draw.line((0, 0, width - 1, height - 1), fill=_PLACEHOLDER_INK)
    draw.line((0, height - 1, width - 1, 0), fill=_PLACEHOLDER_INK)
    text_box = (8, height // 2 - 9, width - 8, height // 2 + 9)
    draw.rectangle(text_box, fill=_PLACEHOLDER_BACKGROUND)
    text = label[:28]
    left, top, right, bottom = draw.textbbox((0, 0), text)
    draw.text(((width - right - left) // 2, (height - bottom - top) // 2), text, fill=(90, 90, 90))
    return _jpeg(image)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()
