"""The page's style sheet and the formatting of values every page shares (numbers, times, image names).
The pages use no script at all, and no inline style attributes, so the Content-Security-Policy can
forbid both; the style sheet is admitted by its hash. The HTML itself is in templates/ (rendering.py)."""

from __future__ import annotations

import base64
import functools
import hashlib
from datetime import datetime
from importlib.resources import files
from urllib.parse import unquote

# Shown where a value is missing (an en dash).
MISSING = "\u2013"
# Longer texts (questions, answers, error messages) are cut on the page; `vlmbatch export` has them whole.
MAX_TEXT_CHARS = 20_000


@functools.cache
def style_sheet() -> str:
    """The pages' style sheet (templates/style.css), put in each page's `<style>`."""
    return files("vlmbatch.producer.browser").joinpath("templates", "style.css").read_text(encoding="utf-8")


@functools.cache
def style_source() -> str:
    """The CSP source that admits exactly the page's style sheet."""
    digest = hashlib.sha256(style_sheet().encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def number(value: int | float | None, digits: int = 2) -> str:
    if value is None:
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f} s"


def when(value: datetime | None) -> str:
    """A stored time (naive UTC) to the second."""
    return MISSING if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def image_name(uri: str) -> str:
    """The file name an image URI ends with (decoded from a `file://` URI's percent-encoding)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1] or uri
    return unquote(name) if uri.startswith("file://") else name


def images_label(images: list[str]) -> str:
    """The first image's file name, and how many more the job has."""
    if not images:
        return MISSING
    more = f" (+{len(images) - 1})" if len(images) > 1 else ""
    return image_name(images[0]) + more
