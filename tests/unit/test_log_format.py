"""Logs carry ids for correlation and never a secret."""

from __future__ import annotations

import json
import logging

import pytest

from vlmbatch.worker.process.log_format import JsonFormatter, RedactingFormatter, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg://vlm:hunter2@db:5432/x", "postgresql+psycopg://vlm:***@db:5432/x"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("AWS_SECRET_ACCESS_KEY=abcd1234", "AWS_SECRET_ACCESS_KEY=***"),
        ("token: 'xyz'", "token: '***'"),
        ("no secret here", "no secret here"),
    ],
)
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("worker.pipeline", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_the_ids_of_the_record() -> None:
    line = JsonFormatter().format(_record("db at postgresql://u:pw@h/db failed", run_id=3, job_id=7, attempt_id=9))
    entry = json.loads(line)
    assert entry["message"] == "db at postgresql://u:***@h/db failed"
    assert (entry["run_id"], entry["job_id"], entry["attempt_id"], entry["level"]) == (3, 7, 9, "warning")


def test_text_logs_are_redacted_too() -> None:
    assert "pw" not in RedactingFormatter("%(message)s").format(_record("postgresql://u:pw@h/db"))
