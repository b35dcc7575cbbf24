"""`vlmbatch demo`: the whole path on the tiny local model, offline, with no server.

It writes the smoke model (Skywork-R1V3's architecture, random weights) and a handful of sample images,
two of them broken on purpose, into a folder, then submits them and works the run in this process with
the real vLLM engine. The answers are noise (random weights); everything else is the real code path.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageDraw

# (name, width, height): from one 448 px tile up to InternVL's 12 tiles + thumbnail.
SAMPLE_IMAGES = (
    ("small-thumbnail.jpg", 200, 150),
    ("one-tile.png", 448, 448),
    ("wide.jpg", 896, 448),
    ("six-tiles.jpg", 1344, 896),
    ("photo-13-tiles.jpg", 1600, 1200),
    ("transparent.png", 320, 240),
)
BROKEN_IMAGES = ("broken-truncated.jpg", "broken-not-an-image.jpg")
DEMO_QUESTION = "What is shown in this image? Answer in one sentence."


def write_sample_images(folder: Path) -> list[Path]:
    """Drawn images of several sizes plus two broken files (expected to fail as input.unreadable)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, width, height) in enumerate(SAMPLE_IMAGES):
        image = _drawing(width, height, index, alpha=name.endswith(".png") and "transparent" in name)
        path = folder / name
        image.save(path)
        paths.append(path)
    jpeg = io.BytesIO()
    _drawing(640, 480, 9, alpha=False).save(jpeg, "JPEG")
    (folder / BROKEN_IMAGES[0]).write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    (folder / BROKEN_IMAGES[1]).write_text("this file only pretends to be a JPEG\n")
    return paths


def _drawing(width: int, height: int, seed: int, *, alpha: bool) -> Image.Image:
    mode = "RGBA" if alpha else "RGB"
    image = Image.new(mode, (width, height), (30 + 20 * seed, 90, 160, 128 if alpha else 255))
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x0, y0 = (i * 37 * (seed + 1)) % width, (i * 53 * (seed + 2)) % height
        box = (x0, y0, min(width, x0 + width // 4), min(height, y0 + height // 4))
        draw.ellipse(box, fill=(255 - 30 * i, 40 * i % 255, 120, 255))
    draw.text((10, 10), f"vlmbatch demo {width}x{height}", fill=(255, 255, 255, 255))
    return image


def demo_environment(folder: Path) -> dict[str, str]:
    """Settings for an offline run inside `folder` (ledger, caches), without touching the user's home."""
    return {
        "VLMBATCH_HOME": str(folder / ".vlmbatch"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CACHE_ROOT": str(folder / "cache" / "vllm"),
        "HF_MODULES_CACHE": str(folder / "cache" / "hf_modules"),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
