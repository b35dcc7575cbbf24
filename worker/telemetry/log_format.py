"""Process logging: plain text for people or one JSON object per line for log pipelines, with the
run/job/attempt/worker ids of the work being done, and secrets (passwords in URLs, AWS keys) masked in either.

Ids come from context, not from each call: `log_context(run_id=..., job_id=...)` binds them for the code it
wraps (an asyncio task and whatever it awaits, or a thread that runs under `copy_context()`), and every
record logged meanwhile carries them, whichever library logs it. The worker id is the process's own.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

# Ids a record carries as keys of its own in JSON lines (and as a bracketed suffix in text lines).
CONTEXT_FIELDS = ("run_id", "job_id", "attempt_id", "worker")
_CONTEXT: ContextVar[Mapping[str, object]] = ContextVar("vlmbatch_log_context", default=MappingProxyType({}))
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]+)@")
_AWS_SECRET = re.compile(r"(?i)(aws_secret_access_key|secret_key|password|token)(['\"]?\s*[=:]\s*['\"]?)([^\s'\",]+)")


def redact(text: str) -> str:
    """`text` with URL passwords and `secret=value` pairs replaced by ***."""
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    return _AWS_SECRET.sub(r"\1\2***", text)


@contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Records logged inside carry these ids (None values are left out); contexts nest."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound ids (and this process's worker id) onto every record the handler sees; an id a
    call passed with `extra=` wins."""

    def __init__(self, *, worker: str | None = None) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        ids = dict(_CONTEXT.get())
        if self._worker is not None:
            ids.setdefault("worker", self._worker)
        for name, value in ids.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def _ids(record: logging.LogRecord) -> dict[str, object]:
    return {name: value for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None}


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = {k: v for k, v in _ids(record).items() if k != "worker"}  # one worker per process: noise
        if ids:
            text += " [" + " ".join(f"{k.removesuffix('_id')}={v}" for k, v in ids.items()) + "]"
        return redact(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update(_ids(record))
        progress = getattr(record, "progress", None)
        if isinstance(progress, dict):  # worker/telemetry/progress_log.py: the numbers as fields
            entry["progress"] = progress
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class OwnLines(logging.Filter):
    """With a log file, the terminal gets vlmbatch's own lines; other libraries' (vLLM, Celery) only when
    `verbose`, and then WARNING and above."""

    def __init__(self, *, verbose: bool) -> None:
        super().__init__()
        self._verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "vlmbatch" or record.name.startswith("vlmbatch."):
            return True
        return self._verbose and record.levelno >= logging.WARNING


def configure_logging(
    level: str = "INFO",
    *,
    fmt: str = "text",
    worker: str | None = None,
    log_file: Path | None = None,
    verbose: bool = False,
    terminal_format: str | None = None,
    stream: Any = None,
) -> None:
    """Set up the root logger once, for the entry points (`vlmbatch worker`, `run`, `serve`). With
    `log_file`, every record goes there and the terminal keeps vlmbatch's own lines (OwnLines); a text
    terminal then uses `terminal_format` if given. `stream`: the terminal's (default: standard error)."""
    terminal = logging.StreamHandler(stream)
    terminal.addFilter(ContextFilter(worker=worker))
    full = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if fmt == "json":
        terminal.setFormatter(JsonFormatter())
    else:
        terminal.setFormatter(RedactingFormatter(terminal_format if log_file and terminal_format else full))
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        terminal.addFilter(OwnLines(verbose=verbose))
        into_file = logging.FileHandler(log_file, encoding="utf-8")
        into_file.addFilter(ContextFilter(worker=worker))
        into_file.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter(full))
        handlers.append(into_file)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    # Warnings (Celery's "running as root", deprecations) become records too, not bare lines on stderr.
    logging.captureWarnings(fmt == "json" or log_file is not None)
