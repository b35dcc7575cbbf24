"""The training exports loaded by LLaMA-Factory's own code (installed from PyPI into its own environment by
`make install`, scripts/llamafactory-env.sh): `get_dataset` with stage sft and a multimodal template, from
another working directory, loads every record exported, for a run of each kind of source."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.training_runs import RUNS
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.reports.dataset import dataset_name
from vlmbatch.producer.reports.export import ExportFilter, export_run

ROOT = Path(__file__).resolve().parents[2]
LLAMAFACTORY_PYTHON = ROOT / ".venv-llamafactory" / "bin" / "python"
LOADER = ROOT / "tests" / "consumers" / "llamafactory_load.py"
CUTOFF_LEN = 8192  # the loader's


@pytest.mark.timeout(900)  # six runs, then LLaMA-Factory's imports (tens of seconds on 2 busy cores)
def test_llamafactory_get_dataset_loads_every_exported_record_of_every_kind_of_run(
    sqlite_url: str, tmp_path: Path
) -> None:
    assert LLAMAFACTORY_PYTHON.exists(), "LLaMA-Factory's environment is missing: `make install` makes it"
    exported: dict[str, int] = {}
    arguments: list[str] = []
    for kind, build in RUNS.items():
        work = tmp_path / kind
        work.mkdir()
        sessions, run = build(sqlite_url, work)
        out = work / "dataset"
        report = export_run(
            sessions,
            run=run,
            fmt="sft",
            out=out,
            selection=ExportFilter(),
            store=ObjectStores(s3_endpoint_url=None),
        )
        assert report.rows > 0 and report.skipped == 0
        exported[dataset_name(run)] = report.rows
        arguments += [str(out), dataset_name(run)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    child = subprocess.run(
        [str(LLAMAFACTORY_PYTHON), str(LOADER), *arguments],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=780,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    loaded = json.loads(child.stdout.strip().splitlines()[-1])
    assert {name: counts["loaded"] for name, counts in loaded.items()} == exported
    assert all(0 < counts["longest"] <= CUTOFF_LEN for counts in loaded.values())
