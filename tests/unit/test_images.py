"""Specification of `media.images.decode_image`: hostile bytes fail with one input error, odd-but-valid
images come out RGB at their upright size."""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from tests.fixtures import bad_images
from vlmbatch.media.images import decode_image
from vlmbatch.schema.contracts.errors import InputTooLarge, InputUnreadable, InputUnsupported, JobError

SOURCE = "s3://bucket/prefix/input-0001.jpg"
MAX_BYTES = 10 << 20
MAX_PIXELS = 40_000_000
Colour = tuple[int, int, int]


def decode(data: bytes, **bounds: int) -> Image.Image:
    return decode_image(
        data,
        max_bytes=bounds.get("max_bytes", MAX_BYTES),
        max_pixels=bounds.get("max_pixels", MAX_PIXELS),
        source=SOURCE,
    )


def assert_close(actual: object, expected: Colour, tolerance: int) -> None:
    assert isinstance(actual, tuple)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


HOSTILE: list[tuple[str, Callable[[], bytes], type[JobError]]] = [
    ("empty", bad_images.empty, InputUnreadable),
    ("truncated_jpeg", bad_images.truncated_jpeg, InputUnreadable),
    ("truncated_png", lambda: bad_images.good_png()[:300], InputUnreadable),
    ("text_file", bad_images.not_an_image, InputUnreadable),
    ("random_bytes", lambda: random.Random(7).randbytes(4096), InputUnreadable),
    ("jpeg_marker_then_garbage", lambda: b"\xff\xd8\xff\xe0" + bytes(200), InputUnreadable),
    ("decompression_bomb", bad_images.decompression_bomb_png, InputTooLarge),
    ("png_text_chunk_bomb", bad_images.png_text_bomb, InputTooLarge),
    ("ico_not_allowed", bad_images.unsupported_format, InputUnsupported),
    ("heic_not_allowed", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", InputUnsupported),
    ("tiff_unknown_mode", bad_images.tiff_unknown_mode, InputUnsupported),
]


@pytest.mark.parametrize(("make", "error"), [pytest.param(make, error, id=name) for name, make, error in HOSTILE])
def test_hostile_input_fails_with_its_error_naming_the_source(make: Callable[[], bytes], error: type[JobError]) -> None:
    data = make()
    with pytest.raises(JobError) as raised:
        decode(data)
    assert type(raised.value) is error
    assert SOURCE in raised.value.message


def test_error_message_never_carries_the_input_bytes() -> None:
    with pytest.raises(InputUnreadable) as raised:
        decode(bad_images.not_an_image())
    assert "question" not in raised.value.message
    assert "bytes" in raised.value.message  # the size, not the content


def test_unsupported_format_is_named_in_the_message() -> None:
    with pytest.raises(InputUnsupported, match="ICO is not an allowed image format"):
        decode(bad_images.unsupported_format())


def test_truncated_jpeg_message_says_format_size_and_truncation() -> None:
    with pytest.raises(InputUnreadable, match=r"corrupt or truncated JPEG \(64x48, \d+ bytes\): .*truncated"):
        decode(bad_images.truncated_jpeg())


# (name, bytes, upright size, [(probe point, expected colour, tolerance)])
ODD: list[tuple[str, Callable[[], bytes], tuple[int, int], list[tuple[tuple[int, int], Colour, int]]]] = [
    ("cmyk_jpeg", bad_images.cmyk_jpeg, (32, 24), [((16, 12), bad_images.RED, 8)]),
    ("gray_16bit_png", bad_images.png_16bit, (32, 24), [((16, 12), (128, 128, 128), 1)]),
    ("gray_32bit_int_tiff", bad_images.tiff_32bit_int, (32, 24), [((16, 12), (128, 128, 128), 1)]),
    ("gray_float_tiff", bad_images.tiff_float, (32, 24), [((16, 12), (128, 128, 128), 1)]),
    (
        "palette_with_transparency",
        bad_images.palette_png_with_transparency,
        (32, 24),
        [((4, 12), bad_images.RED, 0), ((28, 12), bad_images.WHITE, 0)],
    ),
    (
        "rgba",
        bad_images.rgba_png,
        (32, 24),
        [((4, 12), bad_images.GREEN, 0), ((28, 12), bad_images.WHITE, 0)],
    ),
    ("gray_alpha", bad_images.la_png, (32, 24), [((4, 12), (0, 0, 0), 0), ((28, 12), bad_images.WHITE, 0)]),
    ("bilevel", bad_images.bilevel_png, (32, 24), [((4, 12), (0, 0, 0), 0), ((28, 12), bad_images.WHITE, 0)]),
    ("animated_gif", bad_images.animated_gif, (32, 24), [((16, 12), bad_images.RED, 0)]),
    ("animated_png", bad_images.animated_png, (32, 24), [((16, 12), bad_images.RED, 0)]),
    ("animated_webp", bad_images.animated_webp, (32, 24), [((16, 12), bad_images.RED, 0)]),
    ("mpo_first_picture", bad_images.mpo_jpeg, (32, 24), [((16, 12), bad_images.RED, 8)]),
    (
        "exif_orientation_6",
        bad_images.exif_rotated_jpeg,
        (20, 40),
        [((10, 5), bad_images.RED, 12), ((10, 35), bad_images.BLUE, 12)],
    ),
]


@pytest.mark.parametrize(
    ("make", "size", "probes"),
    [pytest.param(make, size, probes, id=name) for name, make, size, probes in ODD],
)
def test_odd_but_valid_image_decodes_to_rgb_at_its_upright_size(
    make: Callable[[], bytes], size: tuple[int, int], probes: list[tuple[tuple[int, int], Colour, int]]
) -> None:
    image = decode(make())
    assert image.mode == "RGB"
    assert image.size == size
    for point, colour, tolerance in probes:
        assert_close(image.getpixel(point), colour, tolerance)


@pytest.mark.parametrize("make", [bad_images.good_jpeg, bad_images.good_png], ids=["jpeg", "png"])
def test_rgb_image_decodes_to_the_same_pixels_pillow_reads(make: Callable[..., bytes]) -> None:
    data = make(80, 60, seed=3)
    image = decode(data)
    assert (image.mode, image.size) == ("RGB", (80, 60))
    assert image.tobytes() == Image.open(io.BytesIO(data)).convert("RGB").tobytes()


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_is_ignored_and_the_image_stays_as_stored() -> None:
    image = decode(bad_images.corrupt_exif_jpeg(40, 20))
    assert (image.mode, image.size) == ("RGB", (40, 20))
    assert_close(image.getpixel((20, 10)), bad_images.RED, 8)


def test_16bit_gray_scales_its_full_range_instead_of_clipping_to_white() -> None:
    dark, bright = (decode(bad_images.png_16bit(value=value)) for value in (256, 65535))
    assert dark.getpixel((0, 0)) == (1, 1, 1)
    assert bright.getpixel((0, 0)) == (255, 255, 255)


def test_byte_bound_is_enforced() -> None:
    data = bad_images.good_jpeg()
    assert decode(data, max_bytes=len(data)).size == (64, 48)
    with pytest.raises(InputTooLarge, match=rf"{SOURCE}: {len(data)} bytes, over the bound of {len(data) - 1}"):
        decode(data, max_bytes=len(data) - 1)


def test_pixel_bound_is_enforced_from_the_header() -> None:
    data = bad_images.good_png(64, 48)
    assert decode(data, max_pixels=64 * 48).size == (64, 48)
    with pytest.raises(InputTooLarge, match=r"PNG declares 64x48 = 3072 pixels, over the bound of 3071"):
        decode(data, max_pixels=64 * 48 - 1)


def test_bomb_is_refused_from_its_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's process-wide guard off, our own bound must still refuse, and before any decode:
    # the bomb's 10 GB of pixels would otherwise be allocated (and its pixel data is truncated anyway).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    def fail_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"decoding was attempted for a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail_load)
    with pytest.raises(InputTooLarge, match=r"declares 50000x50000 = 2500000000 pixels"):
        decode(bad_images.decompression_bomb_png())


def test_decoding_leaves_pillows_process_globals_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for make in (bad_images.truncated_jpeg, bad_images.decompression_bomb_png, bad_images.good_jpeg):
        with contextlib.suppress(JobError):
            decode(make(), max_pixels=100)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(("max_bytes", "max_pixels"), [(0, 1), (1, 0), (-1, -1)])
def test_non_positive_bounds_are_a_caller_error(max_bytes: int, max_pixels: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        decode_image(bad_images.good_jpeg(), max_bytes=max_bytes, max_pixels=max_pixels)


def test_message_without_source_still_says_what_failed() -> None:
    with pytest.raises(InputUnreadable, match=r"^<bytes>: empty input \(0 bytes\)$"):
        decode_image(b"", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)


def test_mixed_folder_files_decode_to_their_expected_outcome(tmp_path: Path) -> None:
    expected = bad_images.write_mixed_folder(tmp_path, good=4)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(expected)
    assert sum(error is None for error in expected.values()) >= 4
    for name, error_type in expected.items():
        try:
            outcome = decode((tmp_path / name).read_bytes()).mode
        except JobError as error:
            outcome = error.error_type
        assert outcome == (error_type or "RGB"), name
