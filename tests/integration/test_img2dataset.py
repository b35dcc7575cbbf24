"""img2dataset's output as it comes (img2dataset 1.47 itself, in a virtualenv of its own,
scripts/img2dataset-venv.sh), downloading from a loopback http.server with one failing URL per shard:
its `parquet` output (rows that failed skipped and counted), `files` output (captions and `.json` fields
as metadata, `--question-column` there) and `webdataset` output (shards with metadata-only `.parquet`
beside them: a shard source). `vlmbatch run` with the fake engine, from another folder."""

from __future__ import annotations

import csv
import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.bad_images import good_jpeg
from tests.processes import vlmbatch

REPO = Path(__file__).resolve().parents[2]
PER_SHARD = 4
SHARDS = 2


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def img2dataset() -> str:
    """The img2dataset console script of its own virtualenv (made by the project's script if missing)."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "img2dataset-venv.sh")], capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return str(Path(done.stdout.strip()).parent / "img2dataset")


@pytest.fixture
def url_list(tmp_path: Path) -> Iterator[Path]:
    """A CSV of URLs and captions served on 127.0.0.1; the second URL of each shard answers 404."""
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    rows = []
    for i in range(PER_SHARD * SHARDS):
        name = f"img{i}.jpg"
        if i % PER_SHARD != 1:
            (served / name).write_bytes(good_jpeg(40 + i, 30, seed=i))
        rows.append({"url": f"http://127.0.0.1:{port}/{name}", "caption": f"picture number {i}"})
    path = tmp_path / "urls.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["url", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        yield path
    finally:
        server.shutdown()


def _download(img2dataset: str, urls: Path, out: Path, output_format: str) -> Path:
    args = [img2dataset, "--url_list", str(urls), "--input_format", "csv", "--url_col", "url"]
    args += ["--caption_col", "caption", "--output_folder", str(out), "--output_format", output_format]
    args += ["--processes_count", "1", "--thread_count", "4", "--resize_mode", "no", "--retries", "0"]
    args += ["--number_sample_per_shard", str(PER_SHARD), "--enable_wandb", "False", "--timeout", "5"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=out.parent)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return out


def _run(tmp_path: Path, source: str, *args: str) -> tuple[dict[str, object], str]:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home")}
    done = vlmbatch(["run", source, *args, "--json"], env, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _exported(tmp_path: Path, run: object) -> list[dict[str, object]]:
    out = tmp_path / "out.jsonl"
    done = vlmbatch(["export", str(run), "--out", str(out)], {"VLMBATCH_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_its_parquet_output_skips_and_counts_the_rows_it_did_not_download(
    img2dataset: str, url_list: Path, tmp_path: Path
) -> None:
    _download(img2dataset, url_list, tmp_path / "pq", "parquet")
    status, stderr = _run(tmp_path, "../pq", "--question-column", "caption")
    downloaded = SHARDS * (PER_SHARD - 1)
    assert (status["total"], status["counts"]["succeeded"], status["rejected"]) == (downloaded, downloaded, 0)  # type: ignore[index]
    assert stderr.count("row(s) img2dataset did not download (status), skipped") == SHARDS
    questions = sorted(str(r["question"]) for r in _exported(tmp_path, status["run"]))
    assert questions == sorted(f"picture number {i}" for i in range(PER_SHARD * SHARDS) if i % PER_SHARD != 1)


def test_its_files_output_keeps_captions_and_json_fields(img2dataset: str, url_list: Path, tmp_path: Path) -> None:
    _download(img2dataset, url_list, tmp_path / "files", "files")
    status, _ = _run(tmp_path, "../files", "--question-column", "caption")
    downloaded = SHARDS * (PER_SHARD - 1)
    assert (status["total"], status["counts"]["succeeded"]) == (downloaded, downloaded)
    records = _exported(tmp_path, status["run"])
    for record in records:
        meta = record["metadata"]
        assert isinstance(meta, dict) and record["question"] == meta["caption"]
        assert str(meta["url"]).endswith(".jpg") and meta["status"] == "success"


def test_its_webdataset_output_is_a_shard_source(img2dataset: str, url_list: Path, tmp_path: Path) -> None:
    out = _download(img2dataset, url_list, tmp_path / "wds", "webdataset")
    assert sorted(p.name for p in out.glob("*.parquet")) == ["00000.parquet", "00001.parquet"]
    status, _ = _run(tmp_path, "../wds", "--question-column", "txt")
    downloaded = SHARDS * (PER_SHARD - 1)
    assert (status["total"], status["counts"]["succeeded"]) == (downloaded, downloaded)
