"""What gets installed is one import package, `vlmbatch`: the wheel holds `vlmbatch/...` and nothing else,
every module of the code folders is in it under its mapped name, and it works without the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Repository folder → import package (pyproject.toml's package-dir).
PARTS = {
    "schema": "vlmbatch/schema",
    "media": "vlmbatch/media",
    "worker": "vlmbatch/worker",
    "producer": "vlmbatch/producer",
}


def _build_wheel(out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("vlmbatch-*.whl")
    return wheel


def test_the_wheel_holds_only_the_vlmbatch_package_and_every_module(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"vlmbatch"}
    expected = {
        f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, package in PARTS.items()
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".mako", ".typed", ".html", ".css"} and "__pycache__" not in path.parts
    }
    missing = expected - set(names)
    assert not missing, f"left out of the wheel (add the subpackage to pyproject.toml): {sorted(missing)}"
    assert "vlmbatch/worker/smoke_model/configuration_skywork_chat.py" in names  # copied into model folders
    assert not [n for n in names if n.startswith(("vlmbatch/tests", "vlmbatch/bench"))]

    # Unpacked on its own, without site-packages or the repository: the package imports by its name.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import vlmbatch.schema.contracts.reasoning as r; print(r.__file__)"
    )
    done = subprocess.run([sys.executable, "-S", "-c", probe, str(site)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(site))


def test_generic_names_are_not_ours_outside_the_repository(tmp_path: Path) -> None:
    for generic in ("schema", "worker", "producer", "media"):
        done = subprocess.run([sys.executable, "-c", f"import {generic}"], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, generic
    done = subprocess.run(
        [sys.executable, "-c", "import vlmbatch.worker, vlmbatch.producer.cli; print(vlmbatch.worker.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == (ROOT / "worker" / "__init__.py").resolve()
