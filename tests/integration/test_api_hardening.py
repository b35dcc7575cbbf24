"""The keyless Batch API against web pages of other origins, and its limits on request bodies: the ASGI
stack in process (Starlette's test client), on an embedded SQLite ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from vlmbatch.producer.api.app import build_api
from vlmbatch.producer.api.server import build_server_app
from vlmbatch.producer.browser.app import build_app
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.worker.transport.publisher import NullPublisher

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
EVIL = "https://evil.example"


def _line(custom_id: str) -> str:
    content = [IMAGE, {"type": "text", "text": "What is it?"}]
    return json.dumps({"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": content}]}}) + "\n"


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path)
    _, sessions = open_ledger(settings.resolved_database_url())
    api = build_api(settings, sessions=sessions, publisher=NullPublisher())
    with TestClient(build_server_app(build_app(settings, token=None), api), base_url="http://127.0.0.1") as client:
        yield client


def _sdk(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url="http://127.0.0.1/v1", http_client=http, max_retries=0)


def _settled(sdk: openai.OpenAI, batch_id: str) -> Any:
    deadline = time.monotonic() + 30
    while (batch := sdk.batches.retrieve(batch_id)).status == "validating":
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return batch


def _upload(http: TestClient, text: str) -> str:
    answer = http.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", text.encode())})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def _refused_cross_origin(answer: Any) -> None:
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "cross_origin_request" and error["type"] == "invalid_request_error"


def test_a_web_page_of_another_origin_cannot_cancel_create_or_upload(keyless: TestClient) -> None:
    sdk = _sdk(keyless)
    batch = _settled(
        sdk,
        sdk.batches.create(
            input_file_id=_upload(keyless, _line("a")), endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert batch.status == "in_progress"
    foreign = [
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},  # another local server's page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ]
    for headers in foreign:
        _refused_cross_origin(keyless.post(f"/v1/batches/{batch.id}/cancel", headers=headers))
        _refused_cross_origin(
            keyless.post("/v1/files", headers=headers, data={"purpose": "batch"}, files={"file": ("x.jsonl", b"{}")})
        )
        body = json.dumps(
            {"input_file_id": batch.input_file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        )
        _refused_cross_origin(
            keyless.post("/v1/batches", headers={**headers, "Content-Type": "text/plain"}, content=body)
        )
        _refused_cross_origin(keyless.get("/v1/batches", headers=headers))
    assert sdk.batches.retrieve(batch.id).status == "in_progress"
    assert len(sdk.batches.list().data) == 1
    # The server's own origin, and a local client that is no browser, still pass.
    own = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
    assert keyless.get("/v1/batches", headers=own).status_code == 200
    assert keyless.post(f"/v1/batches/{batch.id}/cancel", headers=own).json()["status"] in ("cancelling", "cancelled")


def test_a_batch_body_must_be_declared_json(keyless: TestClient) -> None:
    file_id = _upload(keyless, _line("a"))
    body = json.dumps({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    for declared in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": declared} if declared else {}
        answer = keyless.post("/v1/batches", headers=headers, content=body)
        assert answer.status_code == 415 and answer.json()["error"]["code"] == "unsupported_media_type"
    assert _sdk(keyless).batches.list().data == []
    accepted = keyless.post("/v1/batches", headers={"Content-Type": "application/json; charset=utf-8"}, content=body)
    assert accepted.status_code == 200
