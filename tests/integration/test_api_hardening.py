"""The keyless Batch API against web pages of other origins, and its limits on request bodies: the ASGI
stack in process (Starlette's test client), on an embedded SQLite ledger."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from tests.fixtures.bad_images import good_jpeg
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.api.app import build_api
from vlmbatch.producer.api.server import build_server_app
from vlmbatch.producer.browser.app import build_app
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.status import run_status
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


def _create(http: TestClient, text: str) -> Any:
    sdk = _sdk(http)
    created = sdk.batches.create(
        input_file_id=_upload(http, text), endpoint="/v1/chat/completions", completion_window="24h"
    )
    return _settled(sdk, created.id)


def test_undecodable_lines_fail_the_batch_naming_them_and_reads_do_not_validate_again(
    keyless: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    deep = '{"custom_id": "deep", "body": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    surrogate = _line("x").replace('"x"', '"bad\\ud800id"')
    cases = {
        "not valid UTF-8": _line("a") + '{"custom_id": "b\xff"}\n',  # the whole file is no text
        "nested too deeply": _line("a") + deep,
        "lone surrogate": _line("a") + surrogate,
    }
    for reason, text in cases.items():
        raw = text.encode("utf-8", "surrogateescape") if reason != "not valid UTF-8" else text.encode("latin-1")
        sdk = _sdk(keyless)
        answer = keyless.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", raw)})
        created = sdk.batches.create(
            input_file_id=answer.json()["id"], endpoint="/v1/chat/completions", completion_window="24h"
        )
        with caplog.at_level(logging.ERROR):
            batch = _settled(sdk, created.id)
            assert batch.status == "failed", (reason, batch)
            [error] = batch.errors.data
            assert error.line in (2, None) and reason in error.message, (reason, error)
            for _ in range(3):  # reads find it ended, and validate nothing again
                assert sdk.batches.retrieve(created.id).status == "failed"
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], reason


def test_a_batch_does_not_take_over_a_cli_run_of_its_name(keyless: TestClient, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    _, sessions = open_ledger(settings.resolved_database_url())
    folder = tmp_path / "cli-images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(good_jpeg(16, 16, seed=1))
    cli_run = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=open_source(str(folder), prompting=Prompting.of("What?"), stores=ObjectStores()),
        settings=RunSettings(model="m"),
        queue="q",
        run_name="batch_1",  # as a ledger from before the names were reserved may hold
    ).run
    batch = _create(keyless, _line("a"))
    assert batch.id == "batch_1" and batch.status == "failed"
    assert "not this batch's" in batch.errors.data[0].message
    with sessions() as session:
        assert run_status(session, cli_run).counts["queued"] == 1  # the CLI run's job, untouched


def test_json_bodies_over_the_limit_are_refused_unread(keyless: TestClient) -> None:
    body = json.dumps({"endpoint": "/v1/chat/completions", "pad": "x" * 1024 * 1024})
    answer = keyless.post("/v1/batches", headers={"Content-Type": "application/json"}, content=body)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while it streams
        yield b'{"pad": "'
        for _ in range(256):
            yield b"x" * 4096
        yield b'"}'

    streamed = keyless.post("/v1/batches", headers={"Content-Type": "application/json"}, content=chunks())
    assert streamed.status_code == 413


def test_ids_are_ascii_digits_in_one_spelling(keyless: TestClient) -> None:
    file_id = _upload(keyless, _line("a"))
    assert file_id == "file-1" and keyless.get("/v1/files/file-1").status_code == 200
    for alias in ("file-01", "file-\u00b2", "file-\u0661", "file-+1", "file-"):
        answer = keyless.get(f"/v1/files/{alias}")
        assert answer.status_code == 404, alias
        assert answer.json()["error"]["code"] == "not_found"
    assert keyless.get("/v1/batches", params={"limit": "\u00b2"}).status_code == 400


def test_uploads_a_stopped_server_left_unrecorded_are_removed_at_start(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    _, sessions = open_ledger(settings.resolved_database_url())
    with TestClient(
        build_api(settings, sessions=sessions, publisher=NullPublisher()), base_url="http://127.0.0.1"
    ) as api:
        answer = api.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", _line("a").encode())})
        assert answer.status_code == 200
    files = tmp_path / "api_files"
    [recorded] = list(files.glob("upload-*"))
    orphan, fresh = files / "upload-killed", files / "upload-in-flight"
    for folder in (orphan, fresh):
        folder.mkdir()
        (folder / "input.jsonl").write_bytes(b"x" * 4096)  # a server killed mid-copy left these
    an_hour_ago = time.time() - 2 * 3600
    for path in (orphan, recorded):
        os.utime(path, (an_hour_ago, an_hour_ago))
    build_api(settings, sessions=sessions, publisher=NullPublisher())  # a server starting again
    assert not orphan.exists()
    assert recorded.is_dir() and fresh.is_dir()  # a recorded file stays; another server may be mid-upload
