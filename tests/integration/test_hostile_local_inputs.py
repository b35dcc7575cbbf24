"""Hostile local inputs: FIFOs, sockets and devices named as images fail their own job at once (the good
jobs of the run succeed), and local reads stay inside the run's folder and VLMBATCH_LOCAL_ROOTS, at
submit, in the worker and in the result browser."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.integration.ledger_helpers import make_run
from tests.integration.pipeline_helpers import jobs_by_name, running_pipeline, settings_for
from tests.processes import vlmbatch
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.browser.app import build_app
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import ErrorType, SourceError
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.transport.publisher import NullPublisher

LOOPBACK = {"Host": "127.0.0.1:8800"}


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Iterator[Path]:
    """Two good images, a FIFO (no writer ever comes), a socket, and a link to /dev/zero."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        (folder / f"good{i}.jpg").write_bytes(good_jpeg(32, 32, seed=i))
    os.mkfifo(folder / "pipe.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "sock.jpg"))
    (folder / "zero.jpg").symlink_to("/dev/zero")
    try:
        yield folder
    finally:
        listener.close()


def _manifest(folder: Path, images: list[str]) -> Path:
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": image}) + "\n" for image in images))
    return manifest


def _submit(sessions: object, manifest: Path, *, local_roots: tuple[Path, ...] = ()) -> int:
    report = submit(
        sessions=sessions,  # type: ignore[arg-type]
        publisher=NullPublisher(),
        source=open_source(
            str(manifest), prompting=Prompting.of("What?"), stores=ObjectStores(), local_roots=local_roots
        ),
        settings=RunSettings(model="fake-model"),
        queue="q",
    )
    return report.run


def test_fifo_socket_and_device_fail_their_jobs_at_once_and_the_good_ones_succeed(
    sqlite_url: str, hostile_folder: Path
) -> None:
    manifest = _manifest(hostile_folder, ["good0.jpg", "pipe.jpg", "sock.jpg", "zero.jpg", "good1.jpg"])
    # /dev is allowed here, so that the device itself (not the roots) is what refuses zero.jpg.
    settings = settings_for(sqlite_url, fetch_threads=2, local_roots="/dev")
    with running_pipeline(settings) as (pipeline, sessions):
        run_id = _submit(sessions, manifest, local_roots=(Path("/dev"),))
        pipeline.feed_run(run_id).result(timeout=30)  # a FIFO opened for reading would block forever
    jobs = jobs_by_name(sessions, run_id)
    assert {name: job.state for name, job in jobs.items()} == {
        "good0.jpg": JobState.SUCCEEDED,
        "good1.jpg": JobState.SUCCEEDED,
        "pipe.jpg": JobState.FAILED,
        "sock.jpg": JobState.FAILED,
        "zero": JobState.FAILED,  # the manifest's link resolves to /dev/zero
    }
    for name, kind in (("pipe.jpg", "a FIFO"), ("sock.jpg", "a socket"), ("zero", "a character device")):
        assert jobs[name].error_type == ErrorType.INPUT_UNSUPPORTED
        assert f"{kind}, not a regular file" in (jobs[name].error_message or "")

    app = build_app(Settings(database_url=sqlite_url, local_roots="/dev"), token=None)
    for name in ("pipe.jpg", "sock.jpg", "zero"):
        reply = app.respond(f"/jobs/{jobs[name].id}/images/0", LOOPBACK)
        assert reply.status == 200 and reply.content_type == "image/jpeg"
        assert ("X-Vlmbatch-Thumbnail", "placeholder; error=input.unsupported") in reply.headers
    good = app.respond(f"/jobs/{jobs['good0.jpg'].id}/images/0", LOOPBACK)
    assert good.status == 200 and not any(name == "X-Vlmbatch-Thumbnail" for name, _ in good.headers)


def test_a_manifest_naming_files_outside_its_folder_is_refused_with_each_row_number(
    sqlite_url: str, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(good_jpeg(8, 8))
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(good_jpeg(8, 8))
    (folder / "link.jpg").symlink_to(outside / "secret.jpg")
    manifest = _manifest(
        folder, ["ok.jpg", str(outside / "secret.jpg"), (outside / "secret.jpg").as_uri(), "link.jpg", "/etc/hostname"]
    )
    source = open_source(str(manifest), prompting=Prompting.of("q?"), stores=ObjectStores())
    with pytest.raises(SourceError) as refused:
        source.validate()
    message = refused.value.message
    assert "4 malformed row(s); nothing was submitted" in message
    for line in (2, 3, 4, 5):
        assert f"line {line}: " in message
    assert "line 1" not in message and "VLMBATCH_LOCAL_ROOTS" in message

    # The same manifest through the CLI, --strict: one line of refusal per row, exit 2, no run created.
    result = vlmbatch(["submit", str(manifest), "--question", "q?", "--strict"], {"VLMBATCH_DATABASE_URL": sqlite_url})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "line 2: " in result.stderr

    # A folder named in VLMBATCH_LOCAL_ROOTS is allowed (the system file still is not).
    allowed = _manifest(folder, ["ok.jpg", str(outside / "secret.jpg"), "link.jpg"])
    open_source(str(allowed), prompting=Prompting.of("q?"), stores=ObjectStores(), local_roots=(outside,)).validate()


def test_workers_and_the_browser_refuse_a_job_that_names_a_file_outside_the_roots(
    sqlite_url: str, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(good_jpeg(8, 8))
    settings = settings_for(sqlite_url)
    with running_pipeline(settings) as (pipeline, sessions):
        # A job row that no submit checked (a run whose source allows no local folder).
        run_id, (job_id,) = make_run(sessions, jobs=1, model="fake-model")
        with sessions() as session, session.begin():
            session.get(Job, job_id).images = [(outside / "secret.jpg").as_uri()]  # type: ignore[union-attr]
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
    assert (job.state, job.error_type) == (JobState.FAILED, ErrorType.INPUT_UNSUPPORTED)
    assert "outside the allowed local folders" in (job.error_message or "")
    reply = build_app(Settings(database_url=sqlite_url), token=None).respond(f"/jobs/{job_id}/images/0", LOOPBACK)
    assert ("X-Vlmbatch-Thumbnail", "placeholder; error=input.unsupported") in reply.headers
    allowed = build_app(Settings(database_url=sqlite_url, local_roots=str(outside)), token=None)
    assert not any(
        name == "X-Vlmbatch-Thumbnail" for name, _ in allowed.respond(f"/jobs/{job_id}/images/0", LOOPBACK).headers
    )
