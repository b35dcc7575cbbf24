"""An OpenAI Batch API input file (`.jsonl`, as `vllm run-batch` also reads): one chat-completion request
per line, `{"custom_id", "method", "url", "body": {"model", "messages", …}}`, one job per line.

What a line may say: system (or developer) messages and one user message, whose content is text and
`image_url` parts (`data:` URIs, `s3://`, `http(s)://`, `file://` or paths relative to the file's folder,
which may not leave it); `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`, `n`
(samples), and `response_format` of type `json_schema` (or `json_object`) as a constraint on the answer.
`model` is ignored (the run's model answers); any other field refuses the line rather than being dropped
silently. Images placed after some text keep their place (`<image>` placeholders in the stored question).

The line's `custom_id` is kept in the job's metadata (`meta["custom_id"]`, what the `openai` export writes
back) and is part of the job's identity. A duplicate `custom_id` or an invalid line refuses the whole
submit, naming every bad line, before anything is written.

`data:` images never enter the ledger: their bytes are staged once to content-addressed objects under
`--stage-to` (media/staging.py, a folder or an S3 prefix), and the job references the object. A source
remembers what it staged, so the reads of one submit (validation, then insert) decode each image once. A `data:`
URI whose bytes are no image is staged like any other and fails its own job at the worker
(`input.unreadable`).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vlmbatch.media.local_roots import LocalRoots
from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import local_path
from vlmbatch.producer.sources.base import Row, RowSource
from vlmbatch.producer.sources.locations import checked_remote, decode_data_uri, stage_bytes
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import JobParams, JobSpec
from vlmbatch.schema.contracts.placement import PlaceholderMismatch, has_placeholders, user_layout

# Lines read to tell a batch file from a manifest.
SNIFFED_LINES = 10
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
# Body fields read, and those accepted without effect (the run decides the model; nothing streams).
_READ = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "response_format"}
_IGNORED = {"model", "stream", "user", "metadata", "store"}
# `data:` images whose staged URI a source remembers (~150 bytes each).
_REMEMBERED_STAGES = 65_536
_NUMBER = (int, float)
_TYPES: dict[str, type | tuple[type, ...]] = {
    "max_tokens": int,
    "max_completion_tokens": int,
    "seed": int,
    "n": int,
    "temperature": _NUMBER,
    "top_p": _NUMBER,
}


class LineError(ValueError):
    pass


def is_openai_batch(uri: str) -> bool:
    """Whether the local `.jsonl` file at `uri` reads as an OpenAI batch file: its first line that is a
    JSON object (among the first few, so one broken line does not hide the format) has `custom_id` and
    `body`."""
    path = local_path(uri)
    try:
        with path.open("r", encoding="utf-8") as lines:
            for line in islice((line for line in lines if line.strip()), SNIFFED_LINES):
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                return isinstance(record, dict) and "custom_id" in record and "body" in record
    except (OSError, UnicodeDecodeError):
        return False
    return False


class OpenAIBatchSource(RowSource):
    def __init__(self, uri: str, *, stager: Stager | None, local_roots: Sequence[Path] = ()) -> None:
        self._uri = uri
        self._path = local_path(uri)
        self._root = self._path.resolve().parent
        # Where an absolute path or file:// image may lie: the file's folder and VLMBATCH_LOCAL_ROOTS
        # (a Batch API upload: its own folder alone), checked at submit as for every source.
        self._roots = LocalRoots.of([self._root, *local_roots])
        # Where `data:` images are staged, content-addressed (media/staging.py, `--stage-to`), and what
        # this source staged lately: a submit reads the file more than once (validation, then insert), and
        # decodes each `data:` image once.
        self._stager = stager
        self._staged: OrderedDict[tuple[int, int], str] = OrderedDict()

    def rows(self) -> Iterator[Row]:
        # 8-byte digests of the ids seen: duplicates are found in one pass, in ~60 bytes per line.
        seen: set[bytes] = set()
        try:
            lines = self._path.open("rb")
        except OSError as exc:
            raise SourceError(f"{self._uri}: cannot read the batch file ({exc})") from exc
        with lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                where = f"line {number}"
                try:
                    spec = self._spec(_text(raw))
                    custom_id = (spec.meta or {})["custom_id"]
                    digest = hashlib.blake2b(custom_id.encode(), digest_size=8).digest()
                    if digest in seen:
                        raise LineError(f"duplicate custom_id {custom_id!r}")
                    seen.add(digest)
                except LineError as exc:
                    yield where, exc
                    continue
                yield where, spec

    # -- one line --------------------------------------------------------------------------------------

    def _spec(self, line: str) -> JobSpec:
        try:
            return self._checked_spec(line)
        except RecursionError:  # the JSON, or a schema in it, nests deeper than anything parses
            raise LineError("nested too deeply") from None

    def _checked_spec(self, line: str) -> JobSpec:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LineError(f"invalid JSON ({exc.msg})") from exc
        # A lone surrogate comes only from a `\\ud800`-style escape: only lines with one are checked.
        if ("\\ud" in line or "\\uD" in line) and not _encodable(record):
            raise LineError("a string holds a lone surrogate (\\ud800-\\udfff), which is no character")
        if not isinstance(record, dict):
            raise LineError("not an object")
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id.strip():
            raise LineError("`custom_id` must be a non-empty string")
        if record.get("method", "POST") != "POST":
            raise LineError(f"method {record.get('method')!r}: only POST")
        if record.get("url", CHAT_URLS[0]) not in CHAT_URLS:
            raise LineError(f"url {record.get('url')!r}: only {CHAT_URLS[0]}")
        body = record.get("body")
        if not isinstance(body, dict):
            raise LineError("`body` must be an object")
        unknown = sorted(set(body) - _READ - _IGNORED)
        if unknown:
            raise LineError("unsupported body field(s): " + ", ".join(unknown))
        if body.get("stream"):
            raise LineError("`stream` must be false in a batch")
        system, images, question = self._messages(body.get("messages"))
        params = _params(body, system)
        try:
            return JobSpec(images=images, question=question, meta={"custom_id": custom_id}, params=params)
        except ValidationError as exc:
            raise LineError(exc.errors()[0]["msg"]) from exc

    def _messages(self, messages: Any) -> tuple[str | None, tuple[str, ...], str]:
        if not isinstance(messages, list) or not messages:
            raise LineError("`body.messages` must be a non-empty list")
        systems: list[str] = []
        user: Any = None
        for message in messages:
            role = message.get("role") if isinstance(message, dict) else None
            if role in ("system", "developer"):
                systems.append(_text_only(message.get("content"), role))
            elif role == "user":
                if user is not None:
                    raise LineError("more than one user message (one question per line)")
                user = message.get("content")
            else:
                raise LineError(f"role {role!r} is not supported (system and one user message)")
        if user is None:
            raise LineError("no user message")
        images, question = self._user_turn(user)
        return ("\n\n".join(systems) or None), images, question

    def _user_turn(self, content: Any) -> tuple[tuple[str, ...], str]:
        if isinstance(content, str):
            raise LineError("the user message has no image (a job needs at least one `image_url` part)")
        if not isinstance(content, list):
            raise LineError("the user message's content must be a string or a list of parts")
        pieces: list[str | None] = []  # text, or None where an image goes
        images: list[str] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str) or not url.strip():
                    raise LineError("an `image_url` part has no url")
                images.append(self._image_uri(url.strip()))
                pieces.append(None)
            else:
                raise LineError(f"content part of type {kind!r} is not supported (text and image_url)")
        if not images:
            raise LineError("the user message has no image (a job needs at least one `image_url` part)")
        texts = [p for p in pieces if p is not None]
        if not any(t.strip() for t in texts):
            raise LineError("the user message has no text")
        first_text = next(i for i, p in enumerate(pieces) if p is not None)
        images_first = all(p is not None for p in pieces[first_text:])
        # Images after some text keep their place as `<image>` placeholders.
        laid_out = texts if images_first else ["<image>" if p is None else p for p in pieces]
        question = "\n".join(laid_out)
        if has_placeholders(question) or not images_first:
            try:
                user_layout(question, len(images))
            except PlaceholderMismatch as exc:
                raise LineError(f"image placeholders: {exc}") from exc
        return tuple(images), question

    def _image_uri(self, url: str) -> str:
        if url.startswith("data:"):
            return self._stage(url)
        if url.startswith(("file://", "/")):
            return self._local_image(url)
        if url.startswith(("s3://", "http://", "https://", "file://")):
            return self._remote(url)
        if "://" in url:
            raise LineError(f"unsupported image URL scheme in {url[:80]!r}")
        path = Path(url)
        if path.is_absolute():
            return path.as_uri()
        resolved = (self._root / path).resolve()
        if resolved != self._root and self._root not in resolved.parents:
            raise LineError(f"{url!r} leads outside the batch file's folder")
        return resolved.as_uri()

    def _local_image(self, url: str) -> str:
        resolved = local_path(url).resolve()
        if not self._roots.allows(resolved):
            raise LineError(f"{url[:200]!r} is {self._roots.refusal()}")
        return resolved.as_uri()

    def _remote(self, url: str) -> str:
        try:
            return checked_remote(url)
        except ValueError as exc:
            raise LineError(str(exc)) from None

    def _stage(self, url: str) -> str:
        # Keyed by the URI's length and (SipHash, seeded per process) hash: no copy of a 100 MB URI is kept.
        key = (len(url), hash(url))
        staged = self._staged.get(key)
        if staged is not None:
            self._staged.move_to_end(key)
            return staged
        try:
            staged = stage_bytes(decode_data_uri(url), self._stager)
        except ValueError as exc:
            raise LineError(str(exc)) from exc
        self._staged[key] = staged
        if len(self._staged) > _REMEMBERED_STAGES:
            self._staged.popitem(last=False)
        return staged


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not UTF-8 (byte {exc.start + 1} of the line)") from None


def _encodable(record: Any) -> bool:
    """Whether every string of `record` is text that UTF-8 can hold (JSON's `\\ud800` escapes may not)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_only(content: Any, role: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    raise LineError(f"a {role} message must be text")


def _params(body: dict[str, Any], system: str | None) -> JobParams:
    _strict_types(body)
    max_tokens = body.get("max_completion_tokens")
    legacy = body.get("max_tokens")
    if max_tokens is not None and legacy is not None and max_tokens != legacy:
        raise LineError("`max_tokens` and `max_completion_tokens` disagree")
    given: dict[str, Any] = {
        "system": system or None,
        "max_tokens": max_tokens if max_tokens is not None else legacy,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "seed": body.get("seed"),
        "samples": body.get("n"),
        "json_schema": _answer_schema(body.get("response_format")),
    }
    try:
        return JobParams.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = {"samples": "n"}.get(str(error["loc"][0]), str(error["loc"][0])) if error["loc"] else "body"
        raise LineError(f"`{field}`: {error['msg']}") from exc


def _strict_types(body: dict[str, Any]) -> None:
    """As OpenAI does: `"n": true` or `"max_tokens": "100"` refuse the line rather than being coerced."""
    for field, kinds in _TYPES.items():
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            wanted = "an integer" if kinds is int else "a number"
            raise LineError(f"`{field}` must be {wanted}, not {json.dumps(value)[:40]}")


def _answer_schema(response_format: Any) -> dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise LineError("`response_format.json_schema.schema` must be an object")
        return schema
    raise LineError(f"response_format of type {kind!r} is not supported (json_schema, json_object, text)")
