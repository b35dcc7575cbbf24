"""Hardened image decoding: untrusted bytes in, an RGB `PIL.Image.Image` out, or an input error.

Taxonomy (docs/ARCHITECTURE.md, `schema/contracts/errors.py`):
- `InputUnreadable`: empty, not an image at all, or an allowed format that is corrupt or truncated.
- `InputUnsupported`: a format Pillow recognizes but we do not allow (ICO, PSD, AVIF, HEIF, ...), or an
  allowed format whose mode, compression or codec we cannot decode.
- `InputTooLarge`: over the byte bound, or declaring more pixels than the pixel bound (decompression bombs),
  checked from the header before any pixel is decoded.

Pillow releases the GIL while it decodes, so callers run `decode_image` on threads; it keeps no state.
"""

from __future__ import annotations

import io
import struct
from typing import cast

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vlmbatch.schema.contracts.errors import InputTooLarge, InputUnreadable, InputUnsupported

# Trial order is most common first. MPO (multi-picture JPEG) arrives through the JPEG opener.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# What Pillow raises on hostile or broken data: OSError, SyntaxError and ValueError by design, the rest
# from plugins reading past the end of short data (the ones its own opener tolerates).
_DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
)
# Pillow says "unsupported" only in its messages; these mark a header it understood but cannot decode.
_UNSUPPORTED_MARKERS = (
    "unsupported",
    "not supported",
    "not yet supported",
    "unknown pixel mode",
    "cannot handle",
    "not available",
)
# Pillow refuses PNG text-chunk bombs with ValueError; these messages mark them.
_TOO_LARGE_MARKERS = ("too large", "too much memory")
# 16- and 32-bit grayscale: converting straight to "L" clips every value over 255 to white.
_HIGH_BIT_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_WHITE = (255, 255, 255)
_MAX_REASON_CHARS = 200

_InputError = InputUnreadable | InputUnsupported | InputTooLarge


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, source: str = "") -> Image.Image:
    """Decode untrusted image bytes into a fully loaded RGB image, EXIF orientation applied.

    Only JPEG (and MPO), PNG, WEBP, GIF, BMP and TIFF are tried, so Pillow never runs other plugins
    on the bytes. Animated images give their first frame; transparency is composited on white;
    16/32-bit grayscale is scaled to 8 bits (see `_scale_to_8bit`). `source` (the input's URI) only
    labels the error messages, which never carry the bytes.

    Raises:
        InputUnreadable: `data` is empty, not an image, or a corrupt or truncated image. (A corrupt
            EXIF block is not an error: Pillow warns, and the image stays as stored, unrotated.)
        InputUnsupported: a recognized but disallowed format, or an allowed format whose mode,
            compression or codec cannot be decoded.
        InputTooLarge: `len(data) > max_bytes`, or the header declares more than `max_pixels` pixels
            (checked before decoding), or Pillow's own decompression-bomb guard fires.
        ValueError: `max_bytes` or `max_pixels` is not positive (a caller bug, not an input error).
    """
    if max_bytes < 1 or max_pixels < 1:
        raise ValueError(f"max_bytes and max_pixels must be positive, got {max_bytes} and {max_pixels}")
    where = source or "<bytes>"
    if not data:
        raise InputUnreadable(f"{where}: empty input (0 bytes)")
    if len(data) > max_bytes:
        raise InputTooLarge(f"{where}: {len(data)} bytes, over the bound of {max_bytes} bytes")

    image = _open_header(data, where)
    width, height = image.size
    if width * height > max_pixels:
        raise InputTooLarge(
            f"{where}: {image.format} declares {width}x{height} = {width * height} pixels, "
            f"over the bound of {max_pixels} pixels"
        )
    _load_pixels(image, where, len(data))
    return _to_rgb(image, where)


def _open_header(data: bytes, where: str) -> ImageFile.ImageFile:
    """Parse only the header (Pillow opens lazily), trying the allowed formats alone."""
    try:
        # BytesIO over bytes shares the buffer: no copy.
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise _unidentified(data, where) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's process-wide guard ran first (the warning arrives as an error under a warnings filter).
        raise InputTooLarge(f"{where}: refused from its header as a decompression bomb: {_reason(exc)}") from exc
    except _DECODE_ERRORS as exc:
        raise _classify(exc, where, f"cannot open image header ({len(data)} bytes)") from exc


def _load_pixels(image: ImageFile.ImageFile, where: str, size_bytes: int) -> None:
    """Decode the first frame now, so a truncated file fails here and not in a later caller."""
    try:
        image.load()
        # In place: no copy when there is nothing to rotate.
        ImageOps.exif_transpose(image, in_place=True)
    except _DECODE_ERRORS as exc:
        width, height = image.size
        context = f"corrupt or truncated {image.format} ({width}x{height}, {size_bytes} bytes)"
        raise _classify(exc, where, context) from exc


def _unidentified(data: bytes, where: str) -> _InputError:
    """Tell apart garbage, a disallowed format, and an allowed format with a broken header."""
    name = _sniff_format(data[:16])
    if name is None:
        return InputUnreadable(f"{where}: not a recognized image ({len(data)} bytes)")
    if name not in ALLOWED_FORMATS:
        allowed = ", ".join(ALLOWED_FORMATS)
        return InputUnsupported(f"{where}: {name} is not an allowed image format (allowed: {allowed})")
    # Image.open swallows the plugin's reason; open with that plugin alone to learn it.
    opener, _ = Image.OPEN[name]
    try:
        opener(io.BytesIO(data), "")
    except _DECODE_ERRORS as exc:
        return _classify(exc, where, f"cannot open {name} header ({len(data)} bytes)")
    return InputUnreadable(f"{where}: cannot open {name} header ({len(data)} bytes)")


def _sniff_format(prefix: bytes) -> str | None:
    """Name the format whose signature `prefix` carries, by Pillow's own signature checks, or None."""
    Image.init()  # registers every plugin's signature check (Image.open does the same on a miss)
    for name in (*ALLOWED_FORMATS, *Image.OPEN):
        accept = Image.OPEN[name][1] if name in Image.OPEN else None
        try:
            if accept is not None and accept(prefix):
                return name
        except (IndexError, TypeError, struct.error):
            continue
    if prefix[4:8] == b"ftyp":
        return "HEIF/ISO-BMFF"  # iPhone photos (HEIC); Pillow reads AVIF only, which matched above
    return None


def _classify(exc: BaseException, where: str, context: str) -> _InputError:
    """Map a Pillow exception to the input error it means, keeping Pillow's reason in the message."""
    reason = _reason(exc)
    lowered = reason.lower()
    message = f"{where}: {context}: {reason}"
    if isinstance(exc, ValueError) and any(marker in lowered for marker in _TOO_LARGE_MARKERS):
        return InputTooLarge(message)
    # Pillow turns a KeyError in a plugin's mode table into SyntaxError: an unsupported mode.
    if any(marker in lowered for marker in _UNSUPPORTED_MARKERS) or isinstance(exc.__cause__, KeyError):
        return InputUnsupported(message)
    return InputUnreadable(message)


def _reason(exc: BaseException) -> str:
    """Pillow's message, bounded so that a pathological one cannot flood the stored error."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS] + "..."


def _to_rgb(image: Image.Image, where: str) -> Image.Image:
    """Convert any loaded mode to RGB; RGB itself is returned as is (the common path: no copy)."""
    if image.mode == "RGB":
        return image
    try:
        if image.mode in _HIGH_BIT_GRAY_MODES:
            return _scale_to_8bit(image).convert("RGB")
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite_on_white(image)
        return image.convert("RGB")
    except ValueError as exc:
        raise InputUnsupported(
            f"{where}: {image.format} image mode {image.mode} cannot be converted to RGB: {_reason(exc)}"
        ) from exc


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit grayscale to "L" by its nominal range rather than clipping.

    I;16*: 0..65535. I: 0..65535 when its values fit (16-bit data widened), else its own min..max.
    F: 0.0..1.0 when its values fit (the float convention), else its own min..max.
    """
    low: float
    high: float
    if image.mode.startswith("I;16"):
        low, high = 0, 65535
    else:
        low, high = cast("tuple[float, float]", image.getextrema())  # one band: (min, max)
        nominal_high = 65535 if image.mode == "I" else 1.0
        if low >= 0 and high <= nominal_high:
            low, high = 0, nominal_high
    scale = 255.0 / ((high - low) or 1)
    # +0.5 rounds: the F -> L conversion truncates.
    offset = 0.5 - low * scale
    # Through float, so that every integer mode scales exactly with one linear point transform.
    return image.convert("F").point(lambda value: value * scale + offset).convert("L")


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten alpha or palette/colour-key transparency onto a white background."""
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba)
    return background
