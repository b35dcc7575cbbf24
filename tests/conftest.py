"""Fixtures for real services. Each test gets its own PostgreSQL database (cloned from a migrated
template, so it costs ~0.1 s), its own Redis database number and queue, its own S3 bucket on a moto
server reached over HTTP, and its own working folder. A service that cannot be reached fails the test:
nothing is skipped silently (`.ci/run` starts the services first)."""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.processes import free_port

# transformers fixes its remote-code cache folder at first import: point it (and vLLM's cache) at a
# temporary folder before anything imports them, so tests never write into the developer's home.
_CACHE = Path(tempfile.mkdtemp(prefix="vlmbatch-test-cache-"))
os.environ.setdefault("HF_MODULES_CACHE", str(_CACHE / "hf_modules"))
os.environ.setdefault("VLLM_CACHE_ROOT", str(_CACHE / "vllm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

POSTGRES_URL = os.environ.get("VLMBATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VLMBATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Redis databases 1..15 rotate between tests (0 is left to whoever else uses the server).
_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No VLMBATCH_* setting leaks in from the developer's shell; embedded files go to tmp_path."""
    for key in list(os.environ):
        if key.startswith("VLMBATCH_") and not key.startswith("VLMBATCH_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _admin_dsn() -> str:
    return POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated database that every test's database is cloned from."""
    from vlmbatch.schema.ledger.database import make_engine, upgrade

    name = f"vlmbatch_tpl_{os.getpid()}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(_with_database(POSTGRES_URL, name))
    upgrade(engine)
    engine.dispose()
    yield name
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    name = f"vlmbatch_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield _with_database(POSTGRES_URL, name)
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on both databases the ledger supports."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def redis_url() -> str:
    """A Redis database of its own, emptied first."""
    db = next(_redis_dbs)
    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def queue_name() -> str:
    return f"vlmbatch-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server over HTTP, shared by the session (each test uses its own bucket)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    from vlmbatch.media.stores import make_s3_client

    name = f"bucket-{uuid.uuid4().hex[:10]}"
    make_s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def fill_bucket(endpoint: str, bucket: str, objects: dict[str, bytes], *, threads: int = 8) -> None:
    """Upload `objects` (key → bytes) in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from vlmbatch.media.stores import make_s3_client

    client: Any = make_s3_client(endpoint)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test hides a missing service or dependency: in this suite it fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"FAILED: {skipped} test(s) skipped; every test must run here", red=True)
