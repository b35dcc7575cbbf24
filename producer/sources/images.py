"""Which object names count as images when listing a folder or an S3 prefix."""

from __future__ import annotations

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def looks_like_image(name: str) -> bool:
    dot = name.rfind(".")
    return dot != -1 and name[dot:].lower() in IMAGE_SUFFIXES
