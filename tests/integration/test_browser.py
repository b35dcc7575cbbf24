"""The result browser (`vlmbatch serve`): pages over a ledger that the real pipeline filled (fake engine),
on SQLite and PostgreSQL, through a real HTTP server; then a person's path through it in headless
Chromium, with screenshots left in artifacts/browser/."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote

import psycopg
import pytest
import uvicorn
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from tests.conftest import POSTGRES_URL
from tests.fixtures.bad_images import good_jpeg, write_mixed_folder
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from tests.processes import VLMBATCH
from vlmbatch.producer.api.app import build_api
from vlmbatch.producer.api.server import build_server_app, listening_socket
from vlmbatch.producer.browser.app import build_app
from vlmbatch.producer.reports.stats import sample_stats
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.database import open_ledger, open_readonly_ledger
from vlmbatch.schema.ledger.tables import Job, Result
from vlmbatch.worker.engines.base import Completion, Generation, GenerationRequest
from vlmbatch.worker.engines.fake import FakeEngine
from vlmbatch.worker.transport.publisher import NullPublisher

HOSTILE = "<script>alert(1)</script>"
# What the tiny random-weight model writes: special tokens of its vocabulary, as text.
NOISE = "<|filler_12|><|filler_7|> <|im_end|><|im_start|>"
HOSTILE_QUESTION = "Say <b>hostile</b> things"
# A file name is user input too (no slash, so it is one file).
HOSTILE_NAME = '"><img src=x onerror=alert(2)>.png'
LARGE_NAME = "large.jpg"
TOKEN = "browser-test-token-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
]


class NoisyEngine(FakeEngine):
    """The fake engine, except that a hostile question gets the tiny model's noise and a script as its
    trace and answer (through the real output parsing and result writing)."""

    async def generate(self, request: GenerationRequest) -> Generation:
        generation = await super().generate(request)
        if request.question != HOSTILE_QUESTION:
            return generation
        text = f"{NOISE} looking at it {HOSTILE} &amp; more{NOISE}</think>{HOSTILE}"
        noisy = Completion(text=text, num_tokens=20, finish_reason="stop", reasoning_tokens=14)
        return replace(generation, completions=[noisy for _ in generation.completions])


@dataclass(frozen=True)
class Ledger:
    url: str
    run_id: int
    queued_run_id: int
    # File name → job id; and the error type each bad file must fail with.
    jobs: dict[str, int]
    errors: dict[str, ErrorType | None]

    def settings(self, **overrides: object) -> Settings:
        return settings_for(self.url, **overrides)


def _fill_ledger(url: str, folder: Path) -> Ledger:
    """A graded run of good, odd and hostile images (some with references, some without), processed by
    the real pipeline, and a second run left queued."""
    errors = write_mixed_folder(folder / "images", good=6)
    (folder / "images" / HOSTILE_NAME).write_bytes(good_jpeg(40, 30, seed=99))
    (folder / "images" / LARGE_NAME).write_bytes(good_jpeg(1200, 900, seed=7))
    errors[HOSTILE_NAME] = errors[LARGE_NAME] = None
    rows = []
    for index, name in enumerate(sorted(errors)):
        row: dict[str, str] = {"image": f"images/{name}"}
        if index % 4 != 3:  # every fourth job has no reference: ungraded
            row["reference"] = "ABCD"[index % 4]
        if name == HOSTILE_NAME:
            row["question"] = HOSTILE_QUESTION
        rows.append(json.dumps(row))
    manifest = folder / "jobs.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    settings = settings_for(url)
    with running_pipeline(settings, engine=NoisyEngine(settings.model)) as (pipeline, sessions):
        run_id = submit_folder(
            sessions, manifest, question="Which letter?", grader="choice", choices=("A", "B", "C", "D")
        )
        pipeline.feed_run(run_id).result(timeout=60)
    (folder / "later").mkdir()
    (folder / "later" / "a.jpg").write_bytes(good_jpeg(seed=1))
    queued_run_id = submit_folder(sessions, folder / "later", question="Later?")
    with sessions() as session:
        jobs = {
            unquote(images[0].rsplit("/", 1)[-1]): job_id
            for job_id, images in session.execute(select(Job.id, Job.images).where(Job.run_id == run_id))
        }
    return Ledger(url=url, run_id=run_id, queued_run_id=queued_run_id, jobs=jobs, errors=errors)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """One filled ledger per database for the whole module: the browser only reads it."""
    folder = tmp_path_factory.mktemp("browser")
    if request.param == "sqlite":
        yield _fill_ledger(f"sqlite:///{folder / 'ledger.db'}", folder)
        return
    template = request.getfixturevalue("postgres_template")
    name = f"vlmbatch_b_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _fill_ledger(POSTGRES_URL.rsplit("/", 1)[0] + "/" + name, folder)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sqlite_ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    folder = tmp_path_factory.mktemp("browser-chromium")
    return _fill_ledger(f"sqlite:///{folder / 'ledger.db'}", folder)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class Browser:
    """An HTTP client of one running browser server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def page(self, path: str, headers: dict[str, str] | None = None) -> str:
        reply = self.get(path, headers)
        assert reply.status == 200, (path, reply.status, reply.text[:500])
        assert reply.headers["content-type"].startswith("text/html")
        return reply.text


@contextmanager
def _serve(settings: Settings, token: str | None = None) -> Iterator[Browser]:
    """`vlmbatch serve`'s application (the pages and the Batch API) on uvicorn, in a thread."""
    _, sessions = open_ledger(settings.resolved_database_url(), auto_migrate=False)
    api = build_api(settings, sessions=sessions, publisher=NullPublisher())
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(build_server_app(build_app(settings, token=token), api), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        yield Browser(int(sock.getsockname()[1]))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def browser(ledger: Ledger) -> Iterator[Browser]:
    with _serve(ledger.settings()) as serving:
        yield serving


def _job_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr class="job" data-job="(\d+)"', html)]


def _standing(ledger: Ledger) -> dict[int, list[bool | None]]:
    """Job id → the correctness of each of its standing samples, straight from the ledger."""
    _, sessions = open_ledger(ledger.url, auto_migrate=False)
    with sessions() as session:
        stmt = (
            select(Job.id, Result.correct)
            .join(Result, Result.attempt_id == Job.current_attempt_id)
            .where(Job.run_id == ledger.run_id)
        )
        graded: dict[int, list[bool | None]] = {}
        for job_id, correct in session.execute(stmt):
            graded.setdefault(job_id, []).append(correct)
    return graded


def test_the_runs_page_lists_every_run_with_progress_counts_rate_and_eta(ledger: Ledger, browser: Browser) -> None:
    html = browser.page("/")
    assert html.count('<tr class="run">') == 2
    for run_id in (ledger.run_id, ledger.queued_run_id):
        assert f'href="/runs/{run_id}"' in html
    bad = sum(error is not None for error in ledger.errors.values())
    total = len(ledger.errors)
    assert f'<progress value="{total}" max="{total}">' in html
    assert f"succeeded {total - bad}</span>" in html and f"failed {bad}</span>" in html
    assert '<progress value="0" max="1">' in html and "queued 1</span>" in html
    assert "Jobs/s" in html and "ETA" in html


def test_a_run_page_breaks_failures_down_by_error_type_with_example_jobs(ledger: Ledger, browser: Browser) -> None:
    html = browser.page(f"/runs/{ledger.run_id}")
    section = html[html.index('id="errors"') : html.index('id="results"')]
    for name, error in ledger.errors.items():
        if error is None:
            continue
        expected = sum(e == error for e in ledger.errors.values())
        assert f"status=failed&amp;error={error}" in section
        assert re.search(rf">{re.escape(error)}</a></td><td class=\"num\">{expected}</td>", section), error
        if expected <= 3:
            assert f'href="/jobs/{ledger.jobs[name]}"' in section, name


def test_a_run_page_shows_each_jobs_question_and_thumbnail_and_the_runs_accuracy(
    ledger: Ledger, browser: Browser
) -> None:
    html = browser.page(f"/runs/{ledger.run_id}?limit=500")
    table = html[html.index('id="results-table"') :]
    assert table.count('<td class="question">Which letter?</td>') == len(ledger.errors) - 1  # one asks its own
    for job_id in ledger.jobs.values():
        assert f'<img class="thumb" src="/jobs/{job_id}/images/0"' in table
    with open_ledger(ledger.url)[1]() as session:
        stats = sample_stats(session, ledger.run_id)
    assert stats.graded > 0
    assert f"{100 * (stats.accept_rate or 0):.1f}% of {stats.graded} graded samples correct" in html
    queued = browser.page(f"/runs/{ledger.queued_run_id}")
    assert "graded samples correct" not in queued  # not a graded run


def test_a_run_page_draws_its_charts_as_svg_bars(ledger: Ledger, browser: Browser) -> None:
    html = browser.page(f"/runs/{ledger.run_id}")
    charts = html[html.index('id="charts"') : html.index('id="errors"')]
    assert charts.count('<svg class="chart"') == 3 and "<script" not in charts
    for title in ("Output tokens/s", "Trace length, tokens", "Failed jobs by error type"):
        assert title in charts
    bad = {e for e in ledger.errors.values() if e is not None}
    assert charts.count('<rect class="bar"') >= 2 + len(bad)  # tokens and lengths drawn, one bar per error type
    for error in bad:
        assert f"<title>{error}: " in charts
    queued = browser.page(f"/runs/{ledger.queued_run_id}")
    assert queued.count("nothing yet") == 3


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        ("status=failed", lambda job, samples: job.state == JobState.FAILED),
        ("status=succeeded", lambda job, samples: job.state == JobState.SUCCEEDED),
        ("error=input.too_large", lambda job, samples: job.error_type == ErrorType.INPUT_TOO_LARGE),
        ("status=failed&error=input.unreadable", lambda job, samples: job.error_type == ErrorType.INPUT_UNREADABLE),
        ("correct=correct", lambda job, samples: True in samples),
        ("correct=incorrect", lambda job, samples: False in samples and True not in samples),
        ("correct=ungraded", lambda job, samples: bool(samples) and set(samples) == {None}),
        ("status=succeeded&correct=incorrect", lambda job, samples: job.state == "succeeded" and samples == [False]),
    ],
)
def test_filters_select_jobs_by_status_error_type_and_correctness(
    ledger: Ledger, browser: Browser, query: str, wanted: Callable[[Job, list[bool | None]], bool]
) -> None:
    standing = _standing(ledger)
    _, sessions = open_ledger(ledger.url, auto_migrate=False)
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.run_id == ledger.run_id).order_by(Job.id)).all()
    expected = [job.id for job in jobs if wanted(job, standing.get(job.id, []))]
    assert expected, f"the ledger has no job for {query}: the fixture should make some"
    shown = _job_ids(browser.page(f"/runs/{ledger.run_id}?{query}&limit=500"))
    assert shown == expected


def test_keyset_pages_are_disjoint_consecutive_and_page_back_exactly(ledger: Ledger, browser: Browser) -> None:
    pages: list[list[int]] = []
    path: str | None = f"/runs/{ledger.run_id}?limit=4"
    while path is not None:
        html = browser.page(path)
        pages.append(_job_ids(html))
        found = re.search(r'<a rel="next" href="([^"]+)#results">', html)
        path = found.group(1).replace("&amp;", "&") if found else None
        assert "offset" not in (path or "")
    flat = [job_id for page in pages for job_id in page]
    assert flat == sorted(ledger.jobs.values())  # every job once, in order: disjoint and consecutive
    assert all(len(page) == 4 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 4
    # Paging back from the third page gives the second exactly.
    third = browser.page(f"/runs/{ledger.run_id}?limit=4&after={pages[1][-1]}")
    back = re.search(r'<a rel="prev" href="([^"]+)#results">', third)
    assert back is not None
    assert _job_ids(browser.page(back.group(1).replace("&amp;", "&"))) == pages[1]
    # A filtered run pages the same way.
    failed = _job_ids(browser.page(f"/runs/{ledger.run_id}?status=failed&limit=500"))
    first = _job_ids(browser.page(f"/runs/{ledger.run_id}?status=failed&limit=2"))
    second = _job_ids(browser.page(f"/runs/{ledger.run_id}?status=failed&limit=2&after={first[-1]}"))
    assert first + second == failed[:4]


def test_a_token_is_required_on_every_request_when_set(ledger: Ledger) -> None:
    with _serve(ledger.settings(), token=TOKEN) as browser:
        job = ledger.jobs["good_000.jpg"]
        for path in ("/", f"/runs/{ledger.run_id}", f"/jobs/{job}", f"/jobs/{job}/images/0"):
            missing = browser.get(path)
            assert missing.status == 401 and missing.headers["www-authenticate"].startswith("Bearer")
            assert browser.get(path + "?token=wrong").status == 403
            assert browser.get(path, {"Authorization": "Bearer wrong"}).status == 403
            assert browser.get(path, {"Authorization": f"Bearer {TOKEN}"}).status == 200
        first = browser.get(f"/?token={TOKEN}")
        assert first.status == 200 and TOKEN not in first.text
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert browser.get(f"/runs/{ledger.run_id}", {"Cookie": cookie.split(";")[0]}).status == 200
        assert browser.get("/", {"Cookie": "vlmbatch_token=forged"}).status == 403


def test_without_a_token_only_requests_for_a_loopback_host_are_served(browser: Browser) -> None:
    assert browser.get("/", {"Host": f"localhost:{browser.port}"}).status == 200
    # A page elsewhere reaching us through DNS rebinding names its own host.
    assert browser.get("/", {"Host": f"attacker.example:{browser.port}"}).status == 403


def test_untrusted_text_is_escaped_everywhere_and_no_page_runs_script(ledger: Ledger, browser: Browser) -> None:
    hostile_job = ledger.jobs[HOSTILE_NAME]
    job_html = browser.page(f"/jobs/{hostile_job}")
    run_html = browser.page(f"/runs/{ledger.run_id}?limit=500")
    for html in (job_html, run_html, browser.page("/")):
        assert "<script" not in html and "<img src=x" not in html
        assert ledger.url not in html and "sqlite:///" not in html and "postgresql" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job_html  # answer and trace, shown as text
    assert "&lt;|filler_12|&gt;&lt;|filler_7|&gt; &lt;|im_end|&gt;" in job_html
    assert "&amp;amp; more" in job_html  # escaped once more: an entity in the output stays literal text
    assert "Say &lt;b&gt;hostile&lt;/b&gt; things" in job_html
    escaped_name = "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;.png"  # MarkupSafe writes " as &#34;
    assert escaped_name in job_html and escaped_name in run_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in run_html  # the answer preview in the results list
    policy = browser.get("/").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "unsafe-inline" not in policy


def test_thumbnails_are_shrunk_jpegs_and_bad_images_get_a_placeholder(ledger: Ledger, browser: Browser) -> None:
    large = browser.get(f"/jobs/{ledger.jobs[LARGE_NAME]}/images/0")
    assert large.status == 200 and large.headers["content-type"] == "image/jpeg"
    assert "x-vlmbatch-thumbnail" not in large.headers
    assert Image.open(io.BytesIO(large.body)).size == (512, 384)
    small = browser.get(f"/jobs/{ledger.jobs['good_001.png']}/images/0")
    assert Image.open(io.BytesIO(small.body)).size == (56, 40)  # never enlarged
    for name in ("bad_bomb.png", "bad_truncated.jpg", "bad_unsupported_ico.png"):
        placeholder = browser.get(f"/jobs/{ledger.jobs[name]}/images/0")
        assert placeholder.status == 200 and placeholder.headers["content-type"] == "image/jpeg"
        assert placeholder.headers["x-vlmbatch-thumbnail"] == f"placeholder; error={ledger.errors[name]}"
        assert Image.open(io.BytesIO(placeholder.body)).format == "JPEG"
    assert browser.get(f"/jobs/{ledger.jobs[LARGE_NAME]}/images/1").status == 404


def test_a_job_page_shows_question_reference_samples_trace_tokens_and_attempts(
    ledger: Ledger, browser: Browser
) -> None:
    html = browser.page(f"/jobs/{ledger.jobs['good_000.jpg']}")
    assert '<img class="thumbnail" src="/jobs/' in html
    assert "Which letter?" in html and '<details class="trace"><summary>Reasoning trace' in html
    assert '<tr class="attempt">' in html and "test-worker" in html and "(standing)" in html
    assert "completion =" in html and "Generation" in html
    failed = browser.page(f"/jobs/{ledger.jobs['bad_bomb.png']}")
    assert "input.too_large" in failed and "No result stands for this job." in failed


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/runs/{run}?status=bogus", 400),
        ("/runs/{run}?after=-3", 400),
        ("/runs/{run}?correct=maybe", 400),
        ("/runs/{run}?after=1&before=9", 400),
        ("/runs/987654", 404),
        ("/jobs/987654", 404),
        ("/jobs/987654/images/0", 404),
        ("/nothing/here", 404),
    ],
)
def test_bad_requests_get_a_short_page_and_never_a_stack_trace(
    ledger: Ledger, browser: Browser, path: str, status: int
) -> None:
    reply = browser.get(path.format(run=ledger.run_id))
    assert reply.status == status
    assert "Traceback" not in reply.text and "sqlalchemy" not in reply.text.lower()


def test_the_browser_never_writes_nor_waits_for_a_writer(ledger: Ledger, browser: Browser) -> None:
    _, readonly = open_readonly_ledger(ledger.url)
    with readonly() as session, pytest.raises(DBAPIError):
        session.execute(update(Job).values(state=JobState.QUEUED.value))
    _, writers = open_ledger(ledger.url, auto_migrate=False)
    with writers() as session:
        transaction = session.begin()  # on SQLite, BEGIN IMMEDIATE: the write lock, held
        session.execute(update(Job).where(Job.run_id == ledger.queued_run_id).values(state=JobState.RUNNING.value))
        try:
            assert "queued 1</span>" in browser.page("/")  # read at once, from the last committed state
        finally:
            transaction.rollback()


def test_serve_refuses_to_listen_on_the_network_without_a_token() -> None:
    from vlmbatch.producer.cli import cli
    from vlmbatch.producer.cli import serve as _  # noqa: F401  (registers the command)

    runner = CliRunner()
    public = runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert public.exit_code == 2 and "set a token" in public.output
    short = runner.invoke(cli, ["serve", "--token", "short"])
    assert short.exit_code == 2 and "at least 16 characters" in short.output


def test_vlmbatch_serve_serves_the_embedded_ledger(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update({"VLMBATCH_HOME": str(tmp_path), "VLMBATCH_BROWSER_PORT": "0"})
    process = subprocess.Popen([*VLMBATCH, "serve"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        html = Browser(int(found.group(1))).page("/")
        assert "No runs yet" in html
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_person_finds_a_failure_and_reads_a_trace_in_chromium(sqlite_ledger: Ledger, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "install them with scripts/chromium.sh"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    ledger = sqlite_ledger
    with _serve(ledger.settings(), token=TOKEN) as browser:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
        try:
            wait = WebDriverWait(driver, 20)
            driver.get(f"{browser.base}/?token={TOKEN}")  # once; the cookie carries it from here on
            driver.save_screenshot(str(ARTIFACTS / "1-runs.png"))
            driver.find_element(By.CSS_SELECTOR, f'a[href="/runs/{ledger.run_id}"]').click()
            wait.until(lambda d: d.find_elements(By.ID, "results-table"))
            # Thumbnails load lazily: the first rows' once the table is in view (a placeholder counts too).
            driver.execute_script("document.getElementById('results-table').scrollIntoView()")
            first = "return [...document.querySelectorAll('img.thumb')].slice(0, 3)"
            wait.until(lambda d: d.execute_script(f"{first}.every(i => i.complete && i.naturalWidth > 0);"))
            driver.execute_script("window.scrollTo(0, 0)")
            assert "graded samples correct" in driver.find_element(By.TAG_NAME, "main").text
            driver.save_screenshot(str(ARTIFACTS / "2-run.png"))

            Select(driver.find_element(By.NAME, "status")).select_by_value("failed")
            driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
            wait.until(lambda d: "status=failed" in d.current_url)
            states = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results-table tr.job .badge")]
            bad = sum(error is not None for error in ledger.errors.values())
            assert states == ["failed"] * bad
            driver.save_screenshot(str(ARTIFACTS / "3-run-failures.png"))

            failed_id = ledger.jobs["bad_bomb.png"]
            driver.find_element(By.CSS_SELECTOR, f'#results-table a[href="/jobs/{failed_id}"]').click()
            wait.until(lambda d: d.current_url.endswith(f"/jobs/{failed_id}"))
            assert "input.too_large" in driver.find_element(By.TAG_NAME, "main").text
            assert _image_width(driver, wait) > 0  # the placeholder
            driver.save_screenshot(str(ARTIFACTS / "4-job-failed.png"))

            driver.get(f"{browser.base}/runs/{ledger.run_id}?status=succeeded&limit=500")
            hostile_id = ledger.jobs[HOSTILE_NAME]
            driver.find_element(By.CSS_SELECTOR, f'#results-table a[href="/jobs/{hostile_id}"]').click()
            wait.until(lambda d: d.current_url.endswith(f"/jobs/{hostile_id}"))
            assert _image_width(driver, wait) == 40  # the image itself, not enlarged
            trace = driver.find_element(By.CSS_SELECTOR, "details.trace pre")
            assert not trace.is_displayed()
            driver.find_element(By.CSS_SELECTOR, "details.trace summary").click()
            wait.until(lambda d: trace.is_displayed())
            assert NOISE in trace.text and HOSTILE in trace.text
            with pytest.raises(NoAlertPresentException):
                driver.switch_to.alert.accept()  # the script in the answer and trace never ran
            driver.execute_script("arguments[0].scrollIntoView()", trace)
            driver.save_screenshot(str(ARTIFACTS / "5-job-succeeded-trace.png"))
        finally:
            driver.quit()


def _image_width(driver: object, wait: object) -> int:
    """The natural width of the page's first thumbnail once it has loaded (0 if it failed to)."""
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(driver, WebDriver) and isinstance(wait, WebDriverWait)
    script = "const i = document.querySelector('img.thumbnail'); return i.complete ? i.naturalWidth : -1;"
    wait.until(lambda d: d.execute_script(script) >= 0)
    return int(driver.execute_script(script))
