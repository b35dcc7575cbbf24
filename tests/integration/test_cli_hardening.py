"""Command-line cases of the third hardening round, as subprocesses with the fake engine."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from tests.fixtures.bad_images import good_jpeg
from tests.processes import vlmbatch_json


def _embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update({"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(home)})
    return env


def test_run_reads_the_images_it_staged_under_its_own_stage_to(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    manifest = tmp_path / "source" / "inline.jsonl"  # its folder is readable anyway; the stage is not in it
    lines = []
    for i in range(3):
        uri = "data:image/jpeg;base64," + base64.b64encode(good_jpeg(32, 24, seed=i)).decode()
        lines.append(json.dumps({"image": uri, "question": f"What is in picture {i}?"}))
    manifest.write_text("\n".join(lines) + "\n")
    elsewhere = tmp_path / "stage-elsewhere"
    command = ["run", str(manifest), "--stage-to", str(elsewhere), "--json"]
    status = vlmbatch_json(command, _embedded_env(tmp_path / "home"))
    assert isinstance(status, dict)
    assert status["counts"]["succeeded"] == 3, status
    assert any(p.is_file() for p in elsewhere.rglob("*"))
