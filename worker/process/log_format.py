"""Process logging: plain text for people or one JSON object per line for log pipelines, with the
run/job/attempt ids a record carries, and secrets (passwords in URLs, AWS keys) masked in either."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

# Fields a log call may attach with `extra=` and that JSON lines carry as their own keys.
CONTEXT_FIELDS = ("run_id", "job_id", "attempt_id", "worker")
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]+)@")
_AWS_SECRET = re.compile(r"(?i)(aws_secret_access_key|secret_key|password|token)(['\"]?\s*[=:]\s*['\"]?)([^\s'\",]+)")


def redact(text: str) -> str:
    """`text` with URL passwords and `secret=value` pairs replaced by ***."""
    text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)
    return _AWS_SECRET.sub(r"\1\2***", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, fmt: str = "text") -> None:
    """Set up the root logger once, for the entry points (`vlmbatch worker`, `run`, `serve`)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
