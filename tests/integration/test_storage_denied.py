"""An object store that refuses our credentials is a storage problem, not bad input: `storage.denied`,
retried a few times with backoff, then failed (resubmittable), and shown so by `status`. The store is a
moto server of its own with IAM enforcement switched on, so that a real policy denies a real request."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import jobs_by_name, running_pipeline, settings_for
from tests.processes import free_port, vlmbatch, vlmbatch_json
from vlmbatch.media.stores import ObjectStores, S3Objects
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import ErrorType, StorageDenied
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.tables import Attempt
from vlmbatch.worker.transport.publisher import NullPublisher

BUCKET = "guarded"


@pytest.fixture
def guarded_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server whose user may read `open/` but is denied `secret/`; the test's AWS credentials
    are that user's."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        admin: Any = boto3.client("s3", endpoint_url=endpoint)
        admin.create_bucket(Bucket=BUCKET)
        admin.put_object(Bucket=BUCKET, Key="open/ok.jpg", Body=good_jpeg(16, 16))
        admin.put_object(Bucket=BUCKET, Key="secret/x.jpg", Body=good_jpeg(16, 16))
        iam: Any = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/secret/*"},
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="no-secrets", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        # From here on every request is authenticated and authorised.
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_access_denied_and_unknown_keys_are_storage_denied_not_bad_input(
    guarded_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3Objects(guarded_s3)
    assert store.fetch(f"s3://{BUCKET}/open/ok.jpg", max_bytes=1 << 20)[:2] == b"\xff\xd8"
    with pytest.raises(StorageDenied, match="AccessDenied"):
        store.fetch(f"s3://{BUCKET}/secret/x.jpg", max_bytes=1 << 20)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + uuid.uuid4().hex[:16].upper())
    with pytest.raises(StorageDenied, match="InvalidAccessKeyId"):
        S3Objects(guarded_s3).fetch(f"s3://{BUCKET}/open/ok.jpg", max_bytes=1 << 20)


def test_an_expired_token_is_storage_denied() -> None:
    from vlmbatch.media.s3 import _classify_client_error

    expired = ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "expired"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
        "GetObject",
    )
    assert isinstance(_classify_client_error("s3://b/k", expired), StorageDenied)


def test_a_denied_job_is_retried_a_few_times_then_failed_as_a_storage_problem_and_can_be_resubmitted(
    guarded_s3: str, sqlite_url: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image": f"s3://{BUCKET}/{key}"}) + "\n" for key in ("open/ok.jpg", "secret/x.jpg"))
    )
    settings = settings_for(sqlite_url, s3_endpoint_url=guarded_s3)
    with running_pipeline(settings) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=open_source(
                str(manifest), prompting=Prompting.of("What?"), stores=ObjectStores(s3_endpoint_url=guarded_s3)
            ),
            # One retry keeps the test short; the run's cap would allow more than storage.denied's own.
            settings=RunSettings(model="fake-model", max_transient_retries=1),
            queue="q",
        )
        pipeline.feed_run(report.run).result(timeout=60)
    jobs = jobs_by_name(sessions, report.run)
    assert jobs["ok.jpg"].state == JobState.SUCCEEDED
    denied = jobs["x.jpg"]
    assert (denied.state, denied.error_type) == (JobState.FAILED, ErrorType.STORAGE_DENIED)
    with sessions() as session:
        attempts = session.execute(select(Attempt.outcome, Attempt.error_type).where(Attempt.job_id == denied.id)).all()
    assert attempts == [(AttemptOutcome.FAILED, ErrorType.STORAGE_DENIED)] * 2  # first try and one retry

    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    status = vlmbatch(["status", str(report.run)], env)
    assert status.returncode == 0, status.stderr
    assert "storage problem: 1 jobs were refused by the object store" in status.stdout
    assert f"--error-type {ErrorType.STORAGE_DENIED.value}" in status.stdout
    dry = vlmbatch_json(["resubmit", str(report.run), "--error-type", "storage.denied", "--dry-run", "--json"], env)
    assert isinstance(dry, dict) and dry["job_ids"] == [denied.id]


def test_storage_denied_allows_fewer_retries_than_a_generous_run_cap() -> None:
    from datetime import datetime

    from vlmbatch.schema.ledger.claims import ClaimedJob
    from vlmbatch.schema.ledger.outcomes import Timings
    from vlmbatch.worker.pipeline.attempt import failure_report

    run = RunSettings(max_transient_retries=10)

    def job(failures: int) -> ClaimedJob:
        now = datetime(2026, 1, 1)
        return ClaimedJob(1, 2, 1, 1, ("s3://b/k",), "q", None, None, now, now, transient_failures=failures)

    retried = [failure_report(job(n), StorageDenied("no"), run, Timings()).retry_after_s is not None for n in range(5)]
    assert retried == [True, True, True, False, False]
