"""http(s) images fetched by the worker from a real HTTP server on loopback: good images, a 404, a 429 then
200, a slow body, oversize bodies, redirects (one to 127.0.0.1 with the private ban on), an
`X-Robots-Tag: noai` image; a per-host cap and the User-Agent as the server saw them."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, settings_for
from vlmbatch.media.http import HttpImages, HttpOptions
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import (
    ErrorType,
    InputForbidden,
    InputNotFound,
    InputOptedOut,
    InputTooLarge,
    StorageTransient,
)
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.transport.publisher import NullPublisher

MAX_BYTES = 64 * 1024
IMAGE = good_jpeg(40, 30, seed=7)


@dataclass
class ServerLog:
    """What the server saw: requests per path, User-Agents and Host headers, and the most `/held.jpg`
    requests held at once."""

    hits: dict[str, int] = field(default_factory=dict)
    agents: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ImageHandler(BaseHTTPRequestHandler):
    """The routes of the test server; `log` and `port_of` are set per server (see `_handler`)."""

    log: ServerLog
    port_of: dict[str, int]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        with self.log.lock:
            self.log.hits[self.path] = self.log.hits.get(self.path, 0) + 1
            self.log.agents.add(self.headers.get("User-Agent", ""))
            self.log.hosts.add(self.headers.get("Host", ""))
        # The client gives up on a slow or oversize body, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer()

    def _answer(self) -> None:
        path = self.path
        if path.startswith("/good/"):
            self._send(200, IMAGE)
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            self._send(302, b"", {"Location": "/good/after-hops.jpg" if left == 0 else f"/hop/{left - 1}"})
        else:
            getattr(self, ROUTES.get(path, "_missing"))()

    def _missing(self) -> None:
        self._send(404, b"no such image")

    def _flaky(self) -> None:
        self._send(429, b"slow down") if self.log.hits[self.path] == 1 else self._send(200, IMAGE)

    def _down(self) -> None:
        self._send(503, b"maintenance")

    def _noai(self) -> None:
        self._send(200, IMAGE, {"X-Robots-Tag": "noindex, noai"})

    def _big(self) -> None:
        self._send(200, b"\xff" * (MAX_BYTES + 1))

    def _big_streamed(self) -> None:
        """No Content-Length: only the streamed cap stops it."""
        self._stream(b"\xff" * (MAX_BYTES + 8192), pause=0.0, declared=False)

    def _slow(self) -> None:
        """A byte every 0.2 s: never idle past the read timeout, yet slow."""
        self._stream(IMAGE[:12], pause=0.2, declared=True)

    def _held(self) -> None:
        """Held open until a second request arrives (or 5 s pass); counted as in flight until the answer
        starts, so that a client cannot have released its slot while it still counts here."""
        log = self.log
        with log.lock:
            log.in_flight += 1
            log.most_in_flight = max(log.most_in_flight, log.in_flight)
        deadline = time.monotonic() + 5.0
        while log.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        with log.lock:
            log.in_flight -= 1
        self._send(200, IMAGE)

    def _to_loopback(self) -> None:
        self._send(302, b"", {"Location": f"http://127.0.0.1:{self.port_of['loopback']}/good/1.jpg"})

    def _stream(self, body: bytes, *, pause: float, declared: bool) -> None:
        self.send_response(200)
        if declared:
            self.send_header("Content-Length", str(len(IMAGE)))
        self.end_headers()
        step = 1 if pause else 1024
        for start in range(0, len(body), step):
            self.wfile.write(body[start : start + step])
            self.wfile.flush()
            time.sleep(pause)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ROUTES = {
    "/down.jpg": "_down",
    "/flaky.jpg": "_flaky",
    "/noai.jpg": "_noai",
    "/big.jpg": "_big",
    "/big-streamed.jpg": "_big_streamed",
    "/slow.jpg": "_slow",
    "/held.jpg": "_held",
    "/to-loopback.jpg": "_to_loopback",
}


def _handler(log: ServerLog, port_of: dict[str, int]) -> type[BaseHTTPRequestHandler]:
    return type("Images", (ImageHandler,), {"log": log, "port_of": port_of})


@dataclass
class ImageServer:
    base: str
    loopback_base: str
    log: ServerLog


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    """The same handler on 127.0.0.2 (standing in for a public host) and on 127.0.0.1."""
    log = ServerLog()
    ports: dict[str, int] = {}
    servers = []
    for name, address in (("public", "127.0.0.2"), ("loopback", "127.0.0.1")):
        server = ThreadingHTTPServer((address, 0), _handler(log, ports))
        server.daemon_threads = True
        ports[name] = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield ImageServer(f"http://127.0.0.2:{ports['public']}", f"http://127.0.0.1:{ports['loopback']}", log)
    for server in servers:
        server.shutdown()
        server.server_close()


def _only_127_0_0_1_is_private(address: str) -> bool:
    return address != "127.0.0.1"


def _images(**options: Any) -> HttpImages:
    """The guarded client with the test's policy: 127.0.0.2 counts as public, 127.0.0.1 as private."""
    values: dict[str, Any] = {"backoff_seconds": 0.01, "user_agent": "vlmbatch-test/1.0"}
    values.update(options)
    return HttpImages(HttpOptions(**values), is_allowed=_only_127_0_0_1_is_private)


def test_a_good_image_is_fetched_with_our_user_agent(image_server: ImageServer) -> None:
    assert _images().fetch(f"{image_server.base}/good/1.jpg", max_bytes=MAX_BYTES) == IMAGE
    assert image_server.log.agents == {"vlmbatch-test/1.0"}


def test_the_connection_goes_to_the_checked_address_under_the_urls_host_name(image_server: ImageServer) -> None:
    port = image_server.base.rsplit(":", 1)[1]
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.2"]

    images = HttpImages(HttpOptions(), resolver=resolver, is_allowed=_only_127_0_0_1_is_private)
    assert images.fetch(f"http://images.test:{port}/good/1.jpg", max_bytes=MAX_BYTES) == IMAGE
    assert (resolved, image_server.log.hosts) == (["images.test"], {f"images.test:{port}"})


def test_a_404_is_not_found_without_a_retry(image_server: ImageServer) -> None:
    with pytest.raises(InputNotFound, match="HTTP 404"):
        _images().fetch(f"{image_server.base}/missing.jpg", max_bytes=MAX_BYTES)
    assert image_server.log.hits["/missing.jpg"] == 1


def test_a_429_is_retried_with_backoff_until_the_200(image_server: ImageServer) -> None:
    assert _images().fetch(f"{image_server.base}/flaky.jpg", max_bytes=MAX_BYTES) == IMAGE
    assert image_server.log.hits["/flaky.jpg"] == 2


def test_a_server_that_stays_down_is_tried_the_set_number_of_times_then_fails_transient(
    image_server: ImageServer,
) -> None:
    with pytest.raises(StorageTransient, match="HTTP 503"):
        _images(attempts=3).fetch(f"{image_server.base}/down.jpg", max_bytes=MAX_BYTES)
    assert image_server.log.hits["/down.jpg"] == 3


def test_a_slow_body_is_cut_at_the_whole_download_deadline_and_fails_transient(image_server: ImageServer) -> None:
    with pytest.raises(StorageTransient, match="took over"):
        _images(total_timeout=0.5, read_timeout=5.0, attempts=2).fetch(
            f"{image_server.base}/slow.jpg", max_bytes=MAX_BYTES
        )
    assert image_server.log.hits["/slow.jpg"] == 2  # tried twice


@pytest.mark.parametrize("path", ["/big.jpg", "/big-streamed.jpg"])
def test_an_oversize_body_is_refused_by_its_length_or_while_streaming(image_server: ImageServer, path: str) -> None:
    with pytest.raises(InputTooLarge):
        _images().fetch(f"{image_server.base}{path}", max_bytes=MAX_BYTES)


def test_a_redirect_to_a_private_address_is_refused_on_that_hop(image_server: ImageServer) -> None:
    with pytest.raises(InputForbidden, match=r"127\.0\.0\.1"):
        _images().fetch(f"{image_server.base}/to-loopback.jpg", max_bytes=MAX_BYTES)
    assert "/good/1.jpg" not in image_server.log.hits  # never reached


def test_three_redirects_are_followed_and_a_fourth_is_refused(image_server: ImageServer) -> None:
    assert _images().fetch(f"{image_server.base}/hop/2", max_bytes=MAX_BYTES) == IMAGE  # 3 redirects
    with pytest.raises(InputNotFound, match="more than 3 redirects"):
        _images().fetch(f"{image_server.base}/hop/3", max_bytes=MAX_BYTES)


def test_an_x_robots_tag_noai_image_is_opted_out(image_server: ImageServer) -> None:
    with pytest.raises(InputOptedOut):
        _images().fetch(f"{image_server.base}/noai.jpg", max_bytes=MAX_BYTES)
    assert _images(honour_opt_out=False).fetch(f"{image_server.base}/noai.jpg", max_bytes=MAX_BYTES) == IMAGE


def test_requests_to_one_host_are_capped(image_server: ImageServer) -> None:
    images = _images(per_host=2)
    threads = [
        threading.Thread(target=images.fetch, args=(f"{image_server.base}/held.jpg",), kwargs={"max_bytes": MAX_BYTES})
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (image_server.log.hits["/held.jpg"], image_server.log.most_in_flight) == (6, 2)


def test_loopback_and_localhost_are_refused_by_default_and_allowed_by_the_setting(
    image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    banned = HttpImages(HttpOptions.from_settings(Settings()))
    port = image_server.loopback_base.rsplit(":", 1)[1]
    for url in (f"{image_server.loopback_base}/good/1.jpg", f"http://localhost:{port}/good/1.jpg"):
        with pytest.raises(InputForbidden, match="non-public address"):
            banned.fetch(url, max_bytes=MAX_BYTES)
    assert image_server.log.hits == {}
    monkeypatch.setenv("VLMBATCH_HTTP_ALLOW_PRIVATE", "true")
    allowed = HttpImages(HttpOptions.from_settings(Settings()))
    assert allowed.fetch(f"http://localhost:{port}/good/1.jpg", max_bytes=MAX_BYTES) == IMAGE


def test_a_manifest_of_urls_runs_each_job_to_its_outcome(
    sqlite_url: str, tmp_path: Path, image_server: ImageServer
) -> None:
    base = image_server.loopback_base
    expected = {
        f"{base}/good/a.jpg": (JobState.SUCCEEDED, None),
        f"{base}/flaky.jpg": (JobState.SUCCEEDED, None),
        f"{base}/missing.jpg": (JobState.FAILED, ErrorType.INPUT_NOT_FOUND),
        f"{base}/noai.jpg": (JobState.FAILED, ErrorType.INPUT_OPTED_OUT),
        f"{base}/big.jpg": (JobState.FAILED, ErrorType.INPUT_TOO_LARGE),
        f"{base}/slow.jpg": (JobState.FAILED, ErrorType.STORAGE_TRANSIENT),
    }
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text("".join(json.dumps({"image": url}) + "\n" for url in expected))
    settings = settings_for(
        sqlite_url,
        http_allow_private=True,
        max_image_bytes=MAX_BYTES,
        http_total_timeout_seconds=0.5,
        http_attempts=2,
    )
    with running_pipeline(settings) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=open_source(str(manifest), prompting=Prompting.of("What is shown?"), stores=ObjectStores()),
            settings=RunSettings(model="fake-model", max_transient_retries=0),
            queue="q",
        )
        pipeline.feed_run(report.run).result(timeout=120)
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.run_id == report.run)).all()
    assert {job.images[0]: (job.state, job.error_type) for job in jobs} == expected
