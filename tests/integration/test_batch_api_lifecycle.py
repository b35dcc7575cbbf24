"""A batch's ends besides completion, driven by the official `openai` client over Starlette's test client
on an embedded SQLite ledger: past its completion window (`expired`), cancelled while still `validating`,
and the API keys of a file of hashed keys."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import openai
import pytest
from openai.types import Batch
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from tests.processes import VLMBATCH
from vlmbatch.producer.api.app import build_api
from vlmbatch.producer.api.keys import hashed_key
from vlmbatch.producer.api.server import build_server_app
from vlmbatch.producer.browser.app import build_app
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.claims import claim_next
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, record_outcomes
from vlmbatch.schema.ledger.tables import ApiBatch, ApiFile, Attempt, Job

KEY = "sk-lifecycle-key-0123456789abcdef"
DONE = {"completed", "failed", "cancelled", "expired"}


class RecordingPublisher:
    """The broker seam, remembering for how many jobs it was asked to publish claim tokens, call by call."""

    def __init__(self) -> None:
        self.published: list[int] = []

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        if jobs:
            self.published.append(jobs)
        return 1 if jobs else 0


def _serving(settings: Settings, publisher: RecordingPublisher) -> TestClient:
    _, sessions = open_ledger(settings.resolved_database_url())
    api = build_api(settings, sessions=sessions, publisher=publisher)
    return TestClient(build_server_app(build_app(settings, token=None), api), base_url="http://127.0.0.1")


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def http(tmp_path: Path, publisher: RecordingPublisher) -> Iterator[TestClient]:
    with _serving(Settings(home=tmp_path, api_keys=KEY), publisher) as client:  # type: ignore[arg-type]
        yield client


def _sdk(http: TestClient, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url="http://127.0.0.1/v1", http_client=http, max_retries=0)


def _requests(count: int) -> str:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    content = [image, {"type": "text", "text": "What is it?"}]
    lines = [{"custom_id": f"r{i}", "body": {"messages": [{"role": "user", "content": content}]}} for i in range(count)]
    return "".join(json.dumps(line) + "\n" for line in lines)


def _upload(sdk: openai.OpenAI, path: Path, count: int) -> str:
    path.write_text(_requests(count))
    return sdk.files.create(file=path.open("rb"), purpose="batch").id


def _until(sdk: openai.OpenAI, batch_id: str, statuses: set[str]) -> Batch:
    deadline = time.monotonic() + 30
    while (batch := sdk.batches.retrieve(batch_id)).status not in statuses:
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return batch


def _lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, object]]:
    assert file_id is not None
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]


def _answer(sessions: object, run_id: int, jobs: int) -> None:
    """`jobs` of the run claimed and answered through the ledger calls a worker makes."""
    with sessions() as session, session.begin():  # type: ignore[operator]
        claimed = claim_next(session, limit=jobs, worker="test-worker", lease_seconds=60, run_id=run_id)
        sample = SampleRecord(0, "a cat", "looked", "looked</think>a cat", "stop", True, 4, 2, 2)
        reports = [AttemptReport(c.job_id, c.attempt_id, AttemptOutcome.SUCCEEDED, samples=[sample]) for c in claimed]
        record_outcomes(session, reports)


def test_a_batch_past_its_window_expires_keeping_its_answers_and_listing_the_rest_as_batch_expired(
    http: TestClient, tmp_path: Path
) -> None:
    sdk = _sdk(http)
    upload = _upload(sdk, tmp_path / "five.jsonl", 5)
    batch = sdk.batches.create(input_file_id=upload, endpoint="/v1/chat/completions", completion_window="48h")
    batch = _until(sdk, batch.id, {"in_progress"})
    assert batch.expires_at == batch.created_at + 48 * 3600 and batch.expired_at is None
    _, sessions = open_ledger(Settings(home=tmp_path).resolved_database_url())
    run_id = int(http.get("/api/runs").json()["runs"][0]["id"])
    _answer(sessions, run_id, 2)
    with sessions() as session, session.begin():  # the clock moved past the window
        row_id = int(batch.id.removeprefix("batch_"))
        row = session.get(ApiBatch, row_id)
        assert row is not None and row.expires_at is not None
        session.execute(
            update(ApiBatch).where(ApiBatch.id == row_id).values(expires_at=row.created_at - timedelta(seconds=1))
        )

    expired = _until(sdk, batch.id, DONE)
    assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
    assert expired.request_counts is not None
    assert (expired.request_counts.total, expired.request_counts.completed, expired.request_counts.failed) == (5, 2, 3)
    answered, unfinished = _lines(sdk, expired.output_file_id), _lines(sdk, expired.error_file_id)
    assert len(answered) == 2 and all(line["response"]["status_code"] == 200 for line in answered)  # type: ignore[index]
    assert {line["error"]["code"] for line in unfinished} == {"batch_expired"}  # type: ignore[index]
    assert all(line["response"] is None and line["error"]["message"] for line in unfinished)  # type: ignore[index]
    assert sorted(str(line["custom_id"]) for line in [*answered, *unfinished]) == [f"r{i}" for i in range(5)]
    with sessions() as session:  # no worker can take what is left: nothing is queued
        by_state = select(Job.state, func.count()).where(Job.run_id == run_id).group_by(Job.state)
        states = {state: n for state, n in session.execute(by_state)}
    assert states == {JobState.SUCCEEDED.value: 2, JobState.CANCELLED.value: 3}
    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(batch.id)


@pytest.mark.parametrize("window", ["24 hours", "1h", "0h", "24H", "9999h", ""])
def test_a_malformed_or_too_short_completion_window_is_refused(http: TestClient, tmp_path: Path, window: str) -> None:
    sdk = _sdk(http)
    upload = _upload(sdk, tmp_path / "one.jsonl", 1)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.batches.create(input_file_id=upload, endpoint="/v1/chat/completions", completion_window=window)  # type: ignore[arg-type]
    assert refused.value.param == "completion_window" and refused.value.status_code == 400


class HeldFile:
    """The stored input file replaced by named pipes: the first read (the line check) goes through, the
    second (the submit's own) waits until `release`, so the batch is provably `validating` when cancelled.
    Each read gets a pipe of its own: a later write can never reach an earlier reader."""

    def __init__(self, path: Path, text: str, *, hold_first: bool = False) -> None:
        self._path, self._text = path, text
        self._second = path.with_name(path.name + ".second")
        self._swapped = threading.Event()
        path.unlink()
        os.mkfifo(path)
        os.mkfifo(self._second)
        self._first = threading.Thread(target=self._serve_first, daemon=True)
        if hold_first:  # then `release` serves the first read, and later reads get the file itself
            os.replace(self._second, path)
            self._swapped.set()
        else:
            self._first.start()

    def _serve_first(self) -> None:
        with self._path.open("w") as pipe:  # blocks until the line check opens it
            os.replace(self._second, self._path)  # the next read opens the second pipe
            self._swapped.set()
            pipe.write(self._text)

    def release(self) -> None:
        """Let the held read through; every read after it reads the file itself."""
        assert self._swapped.wait(30)
        whole = self._path.with_name(self._path.name + ".whole")
        whole.write_text(self._text)
        with self._path.open("w") as pipe:  # blocks until the held read opens it
            os.replace(whole, self._path)
            pipe.write(self._text)


def test_a_batch_cancelled_while_validating_ends_cancelled_and_none_of_its_jobs_is_published(
    http: TestClient, publisher: RecordingPublisher, tmp_path: Path
) -> None:
    sdk = _sdk(http)
    upload = _upload(sdk, tmp_path / "four.jsonl", 4)
    _, sessions = open_ledger(Settings(home=tmp_path).resolved_database_url())
    with sessions() as session:
        stored = session.get(ApiFile, int(upload.removeprefix("file-")))
        assert stored is not None
    held = HeldFile(Path(stored.path), _requests(4))  # the line check reads it; the submit's reads wait
    batch = sdk.batches.create(input_file_id=upload, endpoint="/v1/chat/completions", completion_window="24h")
    assert sdk.batches.retrieve(batch.id).status == "validating"
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    held.release()  # the submit goes on: it inserts the jobs, then finds the batch cancelled
    cancelled = _until(sdk, batch.id, DONE)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None and cancelled.output_file_id is None
    assert cancelled.request_counts is not None and cancelled.request_counts.total == 4
    assert cancelled.request_counts.failed == 4
    listed = sorted(str(line["custom_id"]) for line in _lines(sdk, cancelled.error_file_id))
    assert listed == [f"r{i}" for i in range(4)]
    with sessions() as session:
        states = set(session.scalars(select(Job.state)))
        attempts = session.scalar(select(func.count()).select_from(Attempt))
    assert states == {JobState.CANCELLED.value} and attempts == 0  # inserted, then cancelled, never run
    assert publisher.published == []


def test_a_batch_cancelled_before_its_submit_started_queues_nothing(http: TestClient, tmp_path: Path) -> None:
    sdk = _sdk(http)
    upload = _upload(sdk, tmp_path / "two.jsonl", 2)
    _, sessions = open_ledger(Settings(home=tmp_path).resolved_database_url())
    with sessions() as session:
        stored = session.get(ApiFile, int(upload.removeprefix("file-")))
        assert stored is not None
    held = HeldFile(Path(stored.path), _requests(2), hold_first=True)
    batch = sdk.batches.create(input_file_id=upload, endpoint="/v1/chat/completions", completion_window="24h")
    assert sdk.batches.cancel(batch.id).status == "cancelling"
    held.release()
    cancelled = _until(sdk, batch.id, DONE)
    assert cancelled.status == "cancelled" and cancelled.error_file_id is None and cancelled.output_file_id is None
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_keys_of_a_file_of_hashed_keys_are_accepted_and_others_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# the notebook team\n{hashed_key(KEY)}\n\n{hashed_key('sk-other-0123456789')}  # ci\n")
    settings = Settings(home=tmp_path, api_keys_file=keys)
    with _serving(settings, RecordingPublisher()) as http:
        assert _sdk(http, KEY).batches.list().data == []
        assert _sdk(http, "sk-other-0123456789").batches.list().data == []
        for wrong in (KEY[:-1], hashed_key(KEY), hashed_key(KEY).removeprefix("sha256:")):
            with pytest.raises(openai.AuthenticationError):
                _sdk(http, wrong).batches.list()
    assert KEY not in keys.read_text()


@pytest.mark.parametrize("content", [None, "sk-a-plain-key-in-the-hashed-file\n"])
def test_serve_stops_at_start_with_one_line_when_the_keys_file_is_missing_or_malformed(
    tmp_path: Path, content: str | None
) -> None:
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update({"VLMBATCH_HOME": str(tmp_path), "VLMBATCH_API_KEYS_FILE": str(keys), "VLMBATCH_BROWSER_PORT": "0"})
    done = subprocess.run([*VLMBATCH, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(keys) in line
