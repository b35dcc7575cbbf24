"""Whether a `.jsonl` file is an OpenAI batch file, judged from the top-level keys of its first lines, each
read only as far as SNIFFED_CHARS (a line may hold a 140 MB `data:` image)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from typing import IO

from vlmbatch.producer.sources.base import rewound_text
from vlmbatch.schema.contracts.errors import JobError

SNIFFED_LINES = 10
SNIFFED_CHARS = 1 << 20


def is_openai_batch(reader: IO[bytes]) -> bool:
    """Whether the `.jsonl` file open in `reader` (local, or on S3 read by ranges: the lines read here stay
    in its buffer for the source that reads it next) reads as an OpenAI batch file: any of its first few
    JSON lines carries `custom_id` and `body`, so a broken first line does not hide the format (its error
    then names the real problem). Only the first SNIFFED_CHARS of a line are read: a line with a 140 MB
    `data:` image is judged by its keys before the image, not parsed whole (the source reads it once,
    later); a key after a value longer than that is not seen (OpenAI's own order puts `custom_id` first,
    `body` last)."""
    try:
        with rewound_text(reader) as lines:
            for line in islice(_line_heads(lines), SNIFFED_LINES):
                if {"custom_id", "body"} <= _top_level_keys(line):
                    return True
    except (JobError, OSError, UnicodeDecodeError):
        return False
    return False


def _line_heads(lines: IO[str]) -> Iterator[str]:
    """The first SNIFFED_CHARS of each non-blank line; the rest of a longer line is skipped unread."""
    while head := lines.readline(SNIFFED_CHARS):
        rest = head
        while not rest.endswith("\n") and (rest := lines.readline(SNIFFED_CHARS)):
            pass
        if head.strip():
            yield head


def _top_level_keys(text: str) -> set[str]:
    """The keys of the JSON object that `text` begins, as far as `text` reaches (a key whose value is cut
    off counts): each key, then its whole value skipped by the JSON decoder."""
    decoder, keys = json.JSONDecoder(), set[str]()
    at = _skip_space(text, 0)
    if not text.startswith("{", at):
        return keys
    at += 1
    try:
        while True:
            at = _skip_space(text, at)
            if not text.startswith('"', at):
                return keys
            key, at = decoder.raw_decode(text, at)
            keys.add(key)
            at = _skip_space(text, at)
            if not text.startswith(":", at):
                return keys
            _, at = decoder.raw_decode(text, _skip_space(text, at + 1))
            at = _skip_space(text, at)
            if not text.startswith(",", at):
                return keys
            at += 1
    except (ValueError, RecursionError):  # cut off, or not JSON
        return keys


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at
