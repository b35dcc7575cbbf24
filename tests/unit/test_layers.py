"""The layer contracts of docs/ARCHITECTURE.md (`make imports`) hold for the code as it is, and each fails
on an upward arrow of the kinds the code once had. Each case copies the package, adds one import to the
copy and runs import-linter on it with the project's own configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    for part in ("schema", "media", "worker", "producer"):
        shutil.copytree(REPO / part, root / "vlmbatch" / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_code_as_it_is_keeps_every_contract(tmp_path: Path) -> None:
    done = _lint(_copy_package(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "upward_import", "contract"),
    [
        # the pipeline reaching up into the process for its metrics and log format
        ("worker/pipeline/counters.py", "vlmbatch.worker.process.main", "worker: process over pipeline"),
        # a Celery task module under transport importing the pipeline it drives
        ("worker/transport/publisher.py", "vlmbatch.worker.pipeline.pipeline", "worker: process over pipeline"),
        # telemetry is below everything in the worker
        ("worker/telemetry/metrics.py", "vlmbatch.worker.engines.base", "worker: process over pipeline"),
        # the sources' base importing a source (the dispatcher that was the base)
        ("producer/sources/base.py", "vlmbatch.producer.sources.parquet", "sources: open over the sources"),
        # a source importing the dispatcher
        ("producer/sources/folder.py", "vlmbatch.producer.sources.open", "sources: open over the sources"),
        # the ledger importing the worker, and the contracts importing the ledger
        ("schema/ledger/claims.py", "vlmbatch.worker.transport.publisher", "The stack"),
        ("schema/contracts/models.py", "vlmbatch.schema.ledger.tables", "schema: the ledger over grading"),
        # the worker reading the ledger's tables itself instead of asking schema.ledger
        ("worker/pipeline/attempt.py", "vlmbatch.schema.ledger.tables", "Only schema reads the ledger tables"),
        # the producer's reports, server and browser querying the tables instead of asking schema.ledger
        ("producer/reports/stats.py", "vlmbatch.schema.ledger.tables", "Only schema reads the ledger tables"),
        ("producer/api/batches.py", "vlmbatch.schema.ledger.tables", "Only schema reads the ledger tables"),
        ("producer/browser/queries.py", "vlmbatch.schema.ledger.tables", "Only schema reads the ledger tables"),
        # media reaching up into the producer
        ("media/stores.py", "vlmbatch.producer.sources.base", "The stack"),
    ],
)
def test_an_upward_import_breaks_its_contract(tmp_path: Path, module: str, upward_import: str, contract: str) -> None:
    root = _copy_package(tmp_path)
    target = root / "vlmbatch" / module
    target.write_text(target.read_text() + f"\nimport {upward_import}  # noqa\n")
    done = _lint(root)
    assert done.returncode != 0
    broken = [line for line in done.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), done.stdout
