"""The ledger boundary's second rule (docs/ARCHITECTURE.md, "The ledger boundary"): nothing outside
`schema/ledger/dialect.py` asks which database the ledger is. (The first rule, no import of the ledger's
tables outside `schema/`, is an import contract: tests/unit/test_layers.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_PARTS = ("schema", "media", "worker", "producer")
DIALECT_MODULE = Path("schema/ledger/dialect.py")

# The ways code has asked, or could ask, which database it talks to.
_ASKS_THE_DATABASE = re.compile(
    r"\.dialect\.name\b"
    r"|get_backend_name\("
    r"|[=!]=\s*[\"'](?:postgresql|postgres|sqlite)[\"']"
    r"|[\"'](?:postgresql|postgres|sqlite)[\"']\s*[=!]="
    r"|\b_?is_(?:postgres|postgresql|sqlite)\s*\("
    r"|\b_postgres\s*\("
)


def _asks(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if _ASKS_THE_DATABASE.search(line)]


def _package_modules() -> list[Path]:
    return sorted(
        path.relative_to(REPO)
        for part in PACKAGE_PARTS
        for path in (REPO / part).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def test_only_the_dialect_module_asks_which_database_it_is() -> None:
    asking = {
        str(path): found
        for path in _package_modules()
        if path != DIALECT_MODULE and (found := _asks((REPO / path).read_text(encoding="utf-8")))
    }
    assert asking == {}


def test_the_dialect_module_is_where_the_question_is_asked() -> None:
    assert _asks((REPO / DIALECT_MODULE).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "line",
    [
        # the submit's two write paths, as producer/submit.py once chose between them
        'if sessions.kw["bind"].dialect.name == "postgresql":',
        "if engine.url.get_backend_name() != 'sqlite':",
        "if is_postgres(session):",
        'postgres = "postgresql" == bind.dialect.name',
    ],
)
def test_a_question_about_the_database_is_recognised(line: str) -> None:
    assert _asks(f"def f():\n    {line}\n        pass\n") == [line]
