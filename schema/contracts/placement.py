"""Where a job's images go in its user turn: `<image N>` placeholders in the question place image N there
(1-based, as MMMU writes them), `<image>` places the next image not yet placed; images no placeholder
places (all of them in a question without any) go first, then the text. Both sides use it: the producer
refuses a row whose placeholder names an image it does not have, the worker lays out the engine request
with it."""

from __future__ import annotations

import re
from collections.abc import Sequence

# A user turn in order: text pieces, and indexes into the job's images.
UserPart = str | int
UserLayout = tuple[UserPart, ...]

_PLACEHOLDER = re.compile(r"<image(?:\s*(\d+))?>")


class PlaceholderMismatch(ValueError):
    """The question's image placeholders do not match the job's images."""


def has_placeholders(text: str) -> bool:
    return _PLACEHOLDER.search(text) is not None


def user_layout(text: str, image_count: int) -> UserLayout:
    """The user turn of a job with `image_count` images and question `text`.

    A second mention of an image already placed stays in the text as written (MMMU's options refer back
    to `<image 1>`). Images that no placeholder places go before the text, in their order, as in a text
    without placeholders (ViRL writes one `<image>` for two images; MMMU's question may place `<image 1>`
    while `<image 2>` sits in its options). Raises PlaceholderMismatch for a placeholder naming no image
    (`<image 3>` of two) or an `<image>` with no image left."""
    return _layout(text, image_count)[0]


def unplaced_images(text: str, image_count: int) -> int:
    """How many of the job's images no placeholder of `text` places (0 for a text without placeholders,
    whose images all go first by convention). Raises PlaceholderMismatch as `user_layout` does."""
    return _layout(text, image_count)[1]


def _layout(text: str, image_count: int) -> tuple[UserLayout, int]:
    if "<image" not in text or not has_placeholders(text):
        return (*range(image_count), text), 0
    parts: list[UserPart] = []
    placed: set[int] = set()
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        number = match.group(1)
        if number is not None:
            index = int(number) - 1
            if not 0 <= index < image_count:
                raise PlaceholderMismatch(f"{match.group(0)} names no image: the job has {image_count}")
            if index in placed:
                continue  # a reference back to an image already shown: keep it as text
        else:
            index = next((i for i in range(image_count) if i not in placed), -1)
            if index < 0:
                raise PlaceholderMismatch(f"more placeholders than the job's {image_count} image(s)")
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append(index)
        placed.add(index)
        position = match.end()
    if position < len(text):
        parts.append(text[position:])
    unplaced = [i for i in range(image_count) if i not in placed]
    return (*unplaced, *parts), len(unplaced)


def with_image_tokens(text: str, images: Sequence[str], token: str) -> tuple[str, list[str]]:
    """The question as a training record writes it: each image as `token` where the job placed it (the
    unplaced ones first), and the images in the order their tokens appear (LLaMA-Factory and InternVL pair
    the n-th token with the n-th image). A text whose placeholders do not match (a job older than
    placeholders) gets its images first, as it was sent."""
    try:
        parts = user_layout(text, len(images))
    except PlaceholderMismatch:
        parts = (*range(len(images)), text)
    prompt = "".join(token if isinstance(part, int) else part for part in parts)
    return prompt, [images[part] for part in parts if isinstance(part, int)]
