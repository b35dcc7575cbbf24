"""Logs carry ids for correlation and never a secret."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from vlmbatch.worker.telemetry.log_format import ContextFilter, JsonFormatter, RedactingFormatter, log_context, redact


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


def _through_handler(formatter: logging.Formatter, emit: Callable[[logging.Logger], None]) -> list[str]:
    """What a handler configured like configure_logging's writes for the records `emit` logs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter(worker="host-w0"))
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"vlmbatch.test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    emit(logger)
    return stream.getvalue().splitlines()


def test_records_logged_while_a_job_is_handled_carry_its_ids_from_context() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("before")
        with log_context(run_id=3, job_id=7, attempt_id=9):
            logger.info("fetching")
            with ThreadPoolExecutor(1) as pool:  # an I/O thread, run under the caller's context
                pool.submit(contextvars.copy_context().run, logger.warning, "slow").result()
        logger.info("after")

    lines = [json.loads(line) for line in _through_handler(JsonFormatter(), emit)]
    assert [entry["message"] for entry in lines] == ["before", "fetching", "slow", "after"]
    assert all(entry["worker"] == "host-w0" for entry in lines)
    assert ("job_id" in lines[0], "job_id" in lines[3]) == (False, False)
    for entry in lines[1:3]:
        assert (entry["run_id"], entry["job_id"], entry["attempt_id"]) == (3, 7, 9)


def test_asyncio_tasks_keep_their_own_ids() -> None:
    async def job(logger: logging.Logger, job_id: int) -> None:
        with log_context(job_id=job_id):
            await asyncio.sleep(0.01)  # the other task runs meanwhile
            logger.info("done %d", job_id)

    async def both(logger: logging.Logger) -> None:
        await asyncio.gather(job(logger, 1), job(logger, 2))

    lines = [json.loads(line) for line in _through_handler(JsonFormatter(), lambda lg: asyncio.run(both(lg)))]
    assert sorted((entry["message"], entry["job_id"]) for entry in lines) == [("done 1", 1), ("done 2", 2)]


def test_text_lines_name_the_ids_too() -> None:
    def emit(logger: logging.Logger) -> None:
        with log_context(run_id=3, job_id=7):
            logger.info("fetching")

    (line,) = _through_handler(RedactingFormatter("%(message)s"), emit)
    assert line == "fetching [run=3 job=7]"
