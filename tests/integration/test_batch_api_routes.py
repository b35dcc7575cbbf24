"""The Batch API's refusals and the browser pages on the ASGI stack, in process: the official `openai`
client over Starlette's test client (an httpx client), on an embedded SQLite ledger."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types import Batch
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tests.processes import VLMBATCH
from vlmbatch.producer.api.app import build_api
from vlmbatch.producer.api.server import build_server_app
from vlmbatch.producer.browser.app import build_app
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import ApiBatch, Job
from vlmbatch.worker.transport.publisher import NullPublisher

KEY = "sk-routes-key-0123456789abcdef"
TOKEN = "browser-token-0123456789abcdef"
LIMIT = 4096


def _serving(home: Path, *, keys: str | None, token: str | None) -> TestClient:
    settings = Settings(home=home, api_keys=keys, api_max_file_bytes=LIMIT)  # type: ignore[arg-type]
    _, sessions = open_ledger(settings.resolved_database_url())
    api = build_api(settings, sessions=sessions, publisher=NullPublisher())
    return TestClient(build_server_app(build_app(settings, token=token), api), base_url="http://127.0.0.1")


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    with _serving(tmp_path, keys=KEY, token=TOKEN) as client:
        yield client


def _accepted(sdk: openai.OpenAI, batch_id: str) -> Batch:
    deadline = time.monotonic() + 30
    while (batch := sdk.batches.retrieve(batch_id)).status == "validating":
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return batch


def _sdk(http: TestClient, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url="http://127.0.0.1/v1", http_client=http, max_retries=0)


def test_uploads_past_the_limit_and_of_another_purpose_are_refused(http: TestClient, tmp_path: Path) -> None:
    sdk = _sdk(http)
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"custom_id": "a", "body": {"messages": []}, "pad": "x" * LIMIT}) + "\n")
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.files.create(file=big.open("rb"), purpose="batch")
    assert refused.value.status_code == 413 and refused.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as wrong:
        sdk.files.create(file=(tmp_path / "big.jsonl").open("rb"), purpose="fine-tune")
    assert wrong.value.param == "purpose"
    assert not list((tmp_path / "api_files").glob("upload-*"))  # nothing half-written stays


def test_batches_of_other_endpoints_windows_or_unknown_files_are_refused(http: TestClient, tmp_path: Path) -> None:
    sdk = _sdk(http)
    small = tmp_path / "small.jsonl"
    small.write_text('{"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}]}}\n')
    upload = sdk.files.create(file=small.open("rb"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as endpoint:
        sdk.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    assert endpoint.value.param == "endpoint"
    with pytest.raises(openai.BadRequestError) as window:
        sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    assert window.value.param == "completion_window"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file-424242", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        sdk.files.content("not-a-file-id")
    with pytest.raises(openai.AuthenticationError) as auth:
        _sdk(http, key=KEY[:-1]).batches.list()
    assert auth.value.code == "invalid_api_key"


def test_browser_pages_on_the_asgi_stack_keep_their_token_and_security_headers(http: TestClient) -> None:
    refused = http.get("/")
    assert refused.status_code == 401 and "Token required" in refused.text
    page = http.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200 and "No runs yet" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"


def test_without_keys_or_token_only_requests_for_a_loopback_host_are_served(tmp_path: Path) -> None:
    with _serving(tmp_path, keys=None, token=None) as http:
        assert _sdk(http, key="unused").batches.list().data == []
        assert http.get("/").status_code == 200
        assert http.get("/", headers={"Host": "rebound.example"}).status_code == 403
        rebound = openai.OpenAI(api_key="unused", base_url="http://rebound.example/v1", http_client=http, max_retries=0)
        with pytest.raises(openai.PermissionDeniedError):
            rebound.batches.list()


def test_serve_beyond_loopback_without_api_keys_serves_the_pages_and_keeps_the_api_off(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update({"VLMBATCH_HOME": str(tmp_path), "VLMBATCH_BROWSER_TOKEN": TOKEN})
    serve = [*VLMBATCH, "serve", "--host", "0.0.0.0", "--port", "0"]
    process = subprocess.Popen(serve, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        found = re.search(r"http://0\.0\.0\.0:(\d+)/", process.stdout.readline())
        assert found
        assert "Batch API is off" in process.stdout.readline()
        sdk = openai.OpenAI(api_key="any", base_url=f"http://127.0.0.1:{found.group(1)}/v1", max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as refused:
            sdk.batches.list()
        assert refused.value.code == "api_disabled"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_a_batch_left_validating_by_a_stopped_server_is_submitted_once_when_next_read(
    http: TestClient, tmp_path: Path
) -> None:
    sdk = _sdk(http)
    source = tmp_path / "two.jsonl"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    lines = [
        {
            "custom_id": f"r{i}",
            "body": {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]},
        }
        for i in range(2)
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    upload = sdk.files.create(file=source.open("rb"), purpose="batch")
    done = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    _, sessions = open_ledger(Settings(home=tmp_path).resolved_database_url())
    with sessions() as session, session.begin():  # as a server that stopped after recording its batch
        row = ApiBatch(
            input_file_id=int(upload.id.removeprefix("file-")), endpoint="/v1/chat/completions", completion_window="24h"
        )
        session.add(row)
        session.flush()
        stopped = f"batch_{row.id}"
    assert _accepted(sdk, done.id).request_counts.total == 2  # type: ignore[union-attr]
    resumed = _accepted(sdk, stopped)  # its first read starts its submit again
    assert resumed.status == "in_progress" and resumed.request_counts.total == 2  # type: ignore[union-attr]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 4  # two runs of two jobs, once each


def test_a_line_that_is_a_bad_request_fails_alone_and_a_text_only_line_is_a_request(
    http: TestClient, tmp_path: Path
) -> None:
    sdk = _sdk(http)
    source = tmp_path / "mixed.jsonl"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    lines = [
        {
            "custom_id": "img",
            "body": {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "?"}]}]},
        },
        {"custom_id": "text", "body": {"messages": [{"role": "user", "content": "Name a prime."}]}},
        {"custom_id": "bad", "body": {"messages": [{"role": "user", "content": "hi"}], "stop": ["x"]}},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    upload = sdk.files.create(file=source.open("rb"), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    accepted = _accepted(sdk, batch.id)
    assert accepted.status == "in_progress" and accepted.request_counts is not None
    assert (accepted.request_counts.total, accepted.request_counts.failed) == (3, 1)
    _, sessions = open_ledger(Settings(home=tmp_path).resolved_database_url())
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2


def test_run_summaries_as_json_for_scripts(http: TestClient, tmp_path: Path) -> None:
    sdk = _sdk(http)
    source = tmp_path / "three.jsonl"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    content = [image, {"type": "text", "text": "What is it?"}]
    lines = [{"custom_id": f"r{i}", "body": {"messages": [{"role": "user", "content": content}]}} for i in range(3)]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    upload = sdk.files.create(file=source.open("rb"), purpose="batch")
    batch = _accepted(
        sdk, sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http.get("/api/runs").status_code == 401
    runs = http.get("/api/runs", headers=auth)
    assert runs.status_code == 200 and runs.headers["content-type"] == "application/json"
    [run] = runs.json()["runs"]
    assert run["name"] == batch.id and run["total"] == 3 and run["counts"]["queued"] == 3 and not run["finished"]
    assert runs.json()["next_before"] is None
    assert http.get(f"/api/runs/{run['id']}", headers=auth).json() == run
    missing = http.get("/api/runs/424242", headers=auth)
    assert missing.status_code == 404 and "424242" in missing.json()["error"]["message"]
    assert http.get("/api/nothing", headers=auth).json()["error"]["status"] == 404


def test_the_access_log_masks_the_token(http: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vlmbatch.producer.api.server"):
        assert http.get(f"/?token={TOKEN}").status_code == 200
    [line] = [r.getMessage() for r in caplog.records if r.name == "vlmbatch.producer.api.server"]
    assert TOKEN not in line and line.endswith('"GET /?token=***" 200')
