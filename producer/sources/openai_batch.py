"""An OpenAI Batch API input file (`.jsonl`, as `vllm run-batch` also reads): one chat-completion request
per line, `{"custom_id", "method", "url", "body": {"model", "messages", …}}`, one job per line.

What a line may say: system (or developer) messages and one user message, whose content is text and
`image_url` parts (`data:` URIs, `s3://`, `http(s)://`, `file://` or paths relative to the file's folder,
which may not leave it); `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`, `n`
(samples), `response_format` of type `json_schema` (or `json_object`) as a constraint on the answer, and
vLLM's `repetition_detection` (`{"max_pattern_size", "min_pattern_size", "min_count"}`) and
`thinking_token_budget`. `model` is ignored (the run's model answers); any other field refuses the line
rather than being dropped silently. Images placed after some text keep their place (`<image>` placeholders
in the stored question).

The line's `custom_id` is kept in the job's metadata (`meta["custom_id"]`, what the `openai` export writes
back) and is part of the job's identity. A duplicate `custom_id` or an invalid line refuses the whole
submit, naming every bad line, before anything is written.

`data:` images never enter the ledger: their bytes are staged once to content-addressed objects under
`--stage-to` (media/staging.py, a folder or an S3 prefix), and the job references the object. A `data:`
URI whose bytes are no image is staged like any other and fails its own job at the worker
(`input.unreadable`).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from vlmbatch.media.local_roots import LocalRoots, source_root
from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import local_path
from vlmbatch.producer.sources.base import Row, RowSource, lent_text, rewound_text
from vlmbatch.producer.sources.locations import resolve_image_ref
from vlmbatch.schema.contracts.errors import JobError, SourceError
from vlmbatch.schema.contracts.models import JobParams, JobSpec
from vlmbatch.schema.contracts.placement import PlaceholderMismatch, has_placeholders, user_layout

# Lines read to tell a batch file from a manifest, and how much of each.
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
# Body fields read, and those accepted without effect (the run decides the model; nothing streams).
_READ = {
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "n",
    "response_format",
    # vLLM's own request fields, by its names (its server and `vllm run-batch` read them from the body).
    "repetition_detection",
    "thinking_token_budget",
}
_IGNORED = {"model", "stream", "user", "metadata", "store"}
_NUMBER = (int, float)
_TYPES: dict[str, type | tuple[type, ...]] = {
    "max_tokens": int,
    "max_completion_tokens": int,
    "seed": int,
    "n": int,
    "temperature": _NUMBER,
    "top_p": _NUMBER,
}
# `data:` images whose staged URI a source remembers (~150 bytes each).
_REMEMBERED_STAGES = 65_536


class LineError(ValueError):
    """A line that cannot become a job; `custom_id` is the line's, where it could be read.
    `refuses_source`: the whole file is refused whatever the policy (sources.base.Rejects)."""

    custom_id: str | None = None
    refuses_source = False


class NotARequest(LineError):
    """A line that is no request at all (not JSON, no `custom_id`, no `body`, another endpoint): the Batch
    API refuses the whole file for it, as OpenAI does; the command line records it like any bad line."""


class OpenAIBatchSource(RowSource):
    def __init__(
        self,
        uri: str,
        *,
        stager: Stager | None,
        local_roots: Sequence[Path] = (),
        reader: IO[bytes] | None = None,
    ) -> None:
        """`reader`: the file, opened already (by `open_source`, which read its first lines through it;
        an S3 file is read by ranges, never downloaded whole); without it, the local file at `uri` is
        opened for each pass."""
        self._uri = uri
        self._reader = reader
        # Local images may come from the file's own folder and VLMBATCH_LOCAL_ROOTS, as for a manifest.
        self._roots = LocalRoots.of([source_root(uri), *local_roots])
        # Where `data:` images are staged, content-addressed (media/staging.py, `--stage-to`), and what
        # this source staged lately: a submit reads the file more than once (validation, then insert), and
        # decodes each `data:` image once.
        self._stager = stager
        self._staged: OrderedDict[tuple[int, int], str] = OrderedDict()

    def rows(self) -> Iterator[Row]:
        # 8-byte digests of the ids seen: duplicates are found in one pass, in ~60 bytes per line.
        seen: set[bytes] = set()
        with self._lines() as lines:
            for number, line in enumerate(_decoded(lines, self._uri), start=1):
                if not line.strip():
                    continue
                where = f"line {number}"
                try:
                    spec = self._spec(line)
                    custom_id = (spec.meta or {})["custom_id"]
                    digest = hashlib.blake2b(custom_id.encode(), digest_size=8).digest()
                    if digest in seen:
                        duplicate = LineError(f"duplicate custom_id {custom_id!r}")
                        duplicate.custom_id = custom_id
                        duplicate.refuses_source = True  # as OpenAI does: ids must name one request each
                        raise duplicate
                    seen.add(digest)
                except LineError as exc:
                    yield where, exc
                    continue
                yield where, spec

    @contextmanager
    def _lines(self) -> Iterator[IO[str]]:
        if self._reader is not None:
            with rewound_text(self._reader) as lines:
                yield lines
            return
        try:
            handle = local_path(self._uri).open("rb")
        except OSError as exc:
            raise SourceError(f"{self._uri}: cannot read the batch file ({exc})") from exc
        with handle, lent_text(handle) as lines:  # opened for this pass: at its start, maybe a pipe
            yield lines

    # -- one line --------------------------------------------------------------------------------------

    def _spec(self, line: str) -> JobSpec:
        try:
            return self._checked_spec(line)
        except RecursionError:  # the JSON, or a schema in it, nests deeper than anything parses
            raise NotARequest("nested too deeply") from None

    def _checked_spec(self, line: str) -> JobSpec:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NotARequest(f"invalid JSON ({exc.msg})") from exc
        # A lone surrogate comes only from a `\\ud800`-style escape: only lines with one are checked.
        if ("\\ud" in line or "\\uD" in line) and not _encodable(record):
            raise NotARequest("a string holds a lone surrogate (\\ud800-\\udfff), which is no character")
        if not isinstance(record, dict):
            raise NotARequest("not an object")
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id.strip():
            raise NotARequest("`custom_id` must be a non-empty string")
        try:
            return self._request(record, custom_id)
        except LineError as exc:
            exc.custom_id = custom_id  # the error file names the request it refuses
            raise

    def _request(self, record: dict[str, Any], custom_id: str) -> JobSpec:
        if record.get("method", "POST") != "POST":
            raise NotARequest(f"method {record.get('method')!r}: only POST")
        if record.get("url", CHAT_URLS[0]) not in CHAT_URLS:
            raise NotARequest(f"url {record.get('url')!r}: only {CHAT_URLS[0]}")
        body = record.get("body")
        if not isinstance(body, dict):
            raise NotARequest("`body` must be an object")
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
            if not content.strip():
                raise LineError("the user message has no text")
            return (), content  # a text-only request
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
        # A `data:` image is keyed by its length and (SipHash, seeded per process) hash: no copy is kept.
        key = (len(url), hash(url)) if url.startswith("data:") else None
        if key is not None and key in self._staged:
            self._staged.move_to_end(key)
            return self._staged[key]
        try:
            uri = resolve_image_ref(url, base_uri=self._uri, stager=self._stager, roots=self._roots)
        except ValueError as exc:
            raise LineError(str(exc)) from exc
        if key is not None:
            self._staged[key] = uri
            if len(self._staged) > _REMEMBERED_STAGES:
                self._staged.popitem(last=False)
        return uri


def _decoded(lines: IO[str], uri: str) -> Iterator[str]:
    try:
        yield from lines
    except UnicodeDecodeError as exc:
        raise SourceError(f"{uri}: not valid UTF-8 text ({exc.reason})") from exc
    except JobError as exc:  # the S3 reader failed mid-file
        raise SourceError(f"{uri}: cannot read the batch file ({exc.message})") from exc


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
        "repetition_detection": body.get("repetition_detection"),
        "thinking_token_budget": body.get("thinking_token_budget"),
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
