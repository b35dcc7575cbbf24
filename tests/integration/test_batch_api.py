"""The OpenAI-compatible Batch API of `vlmbatch serve`, driven by the official `openai` client: a real
`vlmbatch serve` process and a real Celery worker (fake engine) on Redis and PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types import Batch, BatchError
from openai.types.chat import ChatCompletion
from sqlalchemy import func, select

from tests.fixtures.bad_images import good_jpeg
from tests.processes import VLMBATCH, service_env, start_worker, stop_worker
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Job, Run

KEY = "sk-test-batch-api-key-0123456789"
GOOD = 5
DONE = {"completed", "failed", "cancelled", "expired"}


def _line(custom_id: str, image: str) -> str:
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "What is it?"}]
    body = {"model": "any", "messages": [{"role": "user", "content": content}], "max_tokens": 32}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def _batch_file(path: Path, count: int, *, broken: bool = False) -> Path:
    jpeg = "data:image/jpeg;base64," + base64.b64encode(good_jpeg(32, 32)).decode()
    lines = [_line(f"req-{i}", jpeg) for i in range(count)]
    # Bytes that are no image: the line is valid, its job fails at the worker (input.unreadable).
    lines.append(_line("req-not-an-image", "data:image/png;base64," + base64.b64encode(b"not a png").decode()))
    if broken:
        lines.insert(1, '{"custom_id": "req-x", "body": "not an object"}')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def served(postgres_url: str, redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        VLMBATCH_HOME=str(tmp_path / "home"),
        VLMBATCH_API_KEYS=f"another-key-abcdefghijkl,{KEY}",
        VLMBATCH_BROWSER_PORT="0",
    )
    process = subprocess.Popen(
        [*VLMBATCH, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"Batch API on (http://127\.0\.0\.1:\d+/v1)", line)
        assert found, line
        yield found.group(1), env
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait(client: openai.OpenAI, batch_id: str, *, timeout: float = 180) -> Batch:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in DONE:
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
    return batch


def _accepted(client: openai.OpenAI, batch_id: str, *, timeout: float = 60) -> Batch:
    """The batch once its submit is done (no longer `validating`)."""
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status == "validating":
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
    return batch


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, object]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_the_openai_client_runs_a_batch_cancels_another_and_pages_through_them(
    served: tuple[str, dict[str, str]], postgres_url: str, tmp_path: Path
) -> None:
    base_url, env = served
    client = openai.OpenAI(api_key=KEY, base_url=base_url, max_retries=0)
    with _batch_file(tmp_path / "batch.jsonl", GOOD).open("rb") as handle:
        upload = client.files.create(file=handle, purpose="batch")
    assert client.files.retrieve(upload.id).bytes == (tmp_path / "batch.jsonl").stat().st_size
    assert client.files.content(upload.id).content == (tmp_path / "batch.jsonl").read_bytes()

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        first = client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": "vision"},
        )
        assert first.status in ("validating", "in_progress", "finalizing", "completed") and first.metadata == {
            "team": "vision"
        }
        done = _wait(client, first.id)
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (GOOD + 1, GOOD, 1)
    assert done.completed_at is not None and done.in_progress_at is not None

    outputs, errors = _lines(client, done.output_file_id), _lines(client, done.error_file_id)
    for line in outputs:
        response = line["response"]
        assert isinstance(response, dict) and response["status_code"] == 200
        completion = ChatCompletion.model_validate(response["body"])
        assert completion.choices[0].message.content
    assert [e["error"]["code"] for e in errors] == ["input.unreadable"]  # type: ignore[index]
    custom_ids = sorted(str(line["custom_id"]) for line in [*outputs, *errors])
    assert custom_ids == sorted([*(f"req-{i}" for i in range(GOOD)), "req-not-an-image"])  # each once

    # No worker now: the second batch stays queued until it is cancelled.
    with _batch_file(tmp_path / "second.jsonl", 40).open("rb") as handle:
        second_file = client.files.create(file=handle, purpose="batch")
    second = client.batches.create(
        input_file_id=second_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    second = _accepted(client, second.id)
    assert second.status == "in_progress" and second.request_counts is not None and second.request_counts.total == 41
    cancelled = client.batches.cancel(second.id)
    assert cancelled.status in ("cancelling", "cancelled")
    cancelled = _wait(client, second.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None and cancelled.cancelled_at is not None
    assert {e["error"]["code"] for e in _lines(client, cancelled.error_file_id)} == {"cancelled"}  # type: ignore[index]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(first.id)

    # A malformed file: the batch fails naming the line, and nothing is queued.
    _, sessions = open_ledger(postgres_url)
    with sessions() as session:
        jobs_before = session.scalar(select(func.count()).select_from(Job))
    with _batch_file(tmp_path / "broken.jsonl", 3, broken=True).open("rb") as handle:
        broken_file = client.files.create(file=handle, purpose="batch")
    broken = client.batches.create(
        input_file_id=broken_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    broken = _accepted(client, broken.id)
    assert broken.status == "failed" and broken.errors is not None and broken.errors.data is not None
    [error] = [BatchError.model_validate(e.model_dump()) for e in broken.errors.data]
    assert error.line == 2 and error.message and "body" in error.message
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == jobs_before
        assert session.scalar(select(func.count()).select_from(Run).where(Run.name == broken.id)) == 0

    first_page = client.batches.list(limit=2)
    assert [b.id for b in first_page.data] == [broken.id, second.id] and first_page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == [broken.id, second.id, first.id]  # the SDK pages on
    assert [b.id for b in client.batches.list(after=second.id)] == [first.id]

    uploads = [upload.id, second_file.id, broken_file.id]
    assert [f.id for f in client.files.list(purpose="batch")] == uploads[::-1]  # newest first
    assert [f.id for f in client.files.list(purpose="batch", order="asc", limit=1)] == uploads  # the SDK pages on
    newest = client.files.list(limit=1)
    assert len(newest.data) == 1 and newest.has_more and newest.data[0].purpose == "batch"
    outputs_listed = [f.id for f in client.files.list(purpose="batch_output")]
    assert done.output_file_id in outputs_listed and done.error_file_id in outputs_listed

    assert client.files.delete(broken_file.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(broken_file.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_999999")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-wrong-key-0123456789", base_url=base_url, max_retries=0).batches.list()
