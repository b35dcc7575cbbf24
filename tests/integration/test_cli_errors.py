"""Every user mistake is one line on stderr and exit status 2: no traceback, nothing half-written.
A table of the inputs a review and a hostile pass found, each run as a subprocess the way a user types it,
on the ledger it matters for (PostgreSQL refuses NUL characters and over-long names; SQLite does not)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from tests.fixtures.bad_images import good_jpeg
from tests.processes import free_port, vlmbatch
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Job, Run


@dataclass(frozen=True)
class Case:
    args: list[str]
    # A few words the one line must hold.
    says: str
    database: str = "sqlite"
    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    "temperature nan": Case(["submit", "imgs", "-q", "x", "--temperature", "nan"], "not a finite number"),
    "temperature inf": Case(["submit", "imgs", "-q", "x", "--temperature", "inf"], "--temperature"),
    "top-p nan": Case(["submit", "imgs", "-q", "x", "--top-p", "nan"], "not a finite number"),
    "repetition penalty 0": Case(["submit", "imgs", "-q", "x", "--repetition-penalty", "0"], "--repetition-penalty"),
    "schema not an object": Case(
        ["submit", "imgs", "-q", "x", "--json-schema", "schema.json"],
        "must be an object",
        files={"schema.json": b"[1, 2]"},
    ),
    "invalid UTF-8 in a JSONL line": Case(
        ["submit", "m.jsonl", "-q", "x", "--strict"],
        "line 2: not valid UTF-8",
        files={"m.jsonl": b'{"image": "imgs/a.jpg"}\n{"image": "imgs/\xff.jpg"}\n'},
    ),
    "invalid UTF-8 in a CSV line": Case(
        ["submit", "m.csv", "-q", "x", "--strict"],
        "line 3: not valid UTF-8",
        files={"m.csv": b"image,question\nimgs/a.jpg,ok\nimgs/a.jpg,\xffbad\n"},
    ),
    "NUL in a question on PostgreSQL": Case(
        ["submit", "m.jsonl"],
        "line 1: Value error, holds a NUL character",
        database="postgresql",
        files={"m.jsonl": b'{"image": "imgs/a.jpg", "question": "what\\u0000?"}\n'},
    ),
    "NUL in a question file": Case(
        ["submit", "imgs", "--question-file", "q.txt"], "NUL character", files={"q.txt": b"what\x00?"}
    ),
    "question file not UTF-8": Case(
        ["submit", "imgs", "--question-file", "q.txt"], "not valid UTF-8", files={"q.txt": b"\xffwhat?"}
    ),
    "CSV cell over the field limit": Case(
        ["submit", "m.csv", "-q", "x"],
        "line 2: field larger than field limit",
        files={"m.csv": b"image,question\nimgs/a.jpg," + b"x" * 200_000 + b"\n"},
    ),
    "database on a wrong port": Case(
        ["status"], "cannot use the database", database="postgresql", env={"VLMBATCH_DATABASE_URL": "wrong-port"}
    ),
    "database that does not exist": Case(
        ["status"], 'database "nosuchdb" does not exist', env={"VLMBATCH_DATABASE_URL": "wrong-name"}
    ),
    "database host unknown": Case(["status"], "cannot use the database", env={"VLMBATCH_DATABASE_URL": "wrong-host"}),
    "database URL malformed": Case(["status"], "database URL is not valid", env={"VLMBATCH_DATABASE_URL": "garbage"}),
    "broker down at submit": Case(
        ["submit", "imgs", "-q", "x"],
        "queued in the ledger, but the broker could not be reached",
        env={"VLMBATCH_BROKER_URL": "broker-down"},
    ),
    "run id too large": Case(["status", "99999999999999999999"], "no run has the id or name"),
    "a superscript two as a run id": Case(["status", "²"], "no run has the id or name"),
    "10,000-character run name on PostgreSQL": Case(
        ["submit", "imgs", "-q", "x", "--run", "r" * 10_000], "over 200", database="postgresql"
    ),
    "all-digit run name": Case(["submit", "imgs", "-q", "x", "--run", "3"], "may not be all digits"),
    "run name with an escape sequence": Case(
        ["submit", "imgs", "-q", "x", "--run", "bad\x1b[2Jname"], "control characters"
    ),
}


def _database_url(name: str, request: pytest.FixtureRequest) -> str:
    url = str(request.getfixturevalue("postgres_url" if name == "postgresql" else "sqlite_url"))
    return url


def _special(value: str, postgres: str) -> str:
    base = postgres.rsplit("/", 1)[0]
    return {
        "wrong-port": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
        "wrong-name": f"{base}/nosuchdb",
        "wrong-host": "postgresql+psycopg://postgres@no-such-host.invalid:5432/x",
        "broker-down": f"redis://127.0.0.1:{free_port()}/0",
    }.get(value, value)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_user_mistake_is_one_line_and_exit_status_2(
    case: Case, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(good_jpeg(16, 16))
    for name, content in case.files.items():
        (tmp_path / name).write_bytes(content)
    url = _database_url(case.database, request)
    open_ledger(url)[0].dispose()  # migrated, so that "nothing written" can be checked
    postgres = str(request.getfixturevalue("postgres_url")) if "wrong-name" in case.env.values() else url
    env = {"VLMBATCH_DATABASE_URL": url, "VLMBATCH_ENGINE": "fake"}
    env.update({key: _special(value, postgres) for key, value in case.env.items()})

    done = vlmbatch(case.args, env, timeout=60)

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and case.says in lines[0], lines[0]
    assert "Traceback" not in done.stderr and "\x1b" not in done.stderr
    if env["VLMBATCH_DATABASE_URL"] == url:  # a ledger we can look into: nothing half-written
        engine = create_engine(url)
        with engine.connect() as connection:
            runs = connection.scalar(select(func.count()).select_from(Run))
            queued = connection.scalar(select(func.count()).select_from(Job))
        engine.dispose()
        if "broker" in case.says:  # the jobs are in the ledger, as the line says
            assert (runs, queued) == (1, 1)
        else:
            assert (runs, queued) == (0, 0)


def test_the_browser_answers_a_unicode_digit_with_400_not_500(sqlite_url: str) -> None:
    from vlmbatch.producer.browser.app import build_app
    from vlmbatch.schema.contracts.settings import Settings

    open_ledger(sqlite_url)
    app = build_app(Settings(database_url=sqlite_url), token=None)
    for target in ("/?before=²", "/runs/1?after=²", "/runs/1?before=١٢"):
        assert app.respond(target, {"Host": "127.0.0.1"}).status in (400, 404), target
    assert app.respond("/?before=²", {"Host": "127.0.0.1"}).status == 400


def test_a_token_in_any_case_is_masked_in_the_browser_log() -> None:
    from vlmbatch.producer.browser.app import redacted

    line = 'GET /runs/1?TOKEN=secret-value&Token=other HTTP/1.1"'
    assert "secret-value" not in redacted(line) and "other" not in redacted(line)


def test_serve_refuses_a_token_of_white_space_for_a_public_bind(sqlite_url: str) -> None:
    done = vlmbatch(
        ["serve", "--host", "0.0.0.0", "--port", "0"],
        {"VLMBATCH_DATABASE_URL": sqlite_url, "VLMBATCH_BROWSER_TOKEN": " " * 16},
        timeout=30,
    )
    assert done.returncode == 2 and "at least" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_cli_output_strips_escape_sequences_from_run_names(sqlite_url: str) -> None:
    # A run created before names were checked (or by the Batch API) may hold any characters.
    from tests.integration.ledger_helpers import ledger, make_run

    run_id, _ = make_run(ledger(sqlite_url), name="evil\x1b]0;pwned\x07\x1b[2J\x1b[31mred", jobs=1)
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}
    for args in (["status"], ["status", str(run_id)]):
        done = vlmbatch(args, env)
        assert done.returncode == 0, done.stderr
        assert "evil" in done.stdout and "red" in done.stdout
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout
