"""Image sources side by side in one run: submit jobs/s and worker-path jobs/s (fake engine answering at
once, images fetched and decoded for real) for plain files beside a `datasets` Parquet with embedded
images and WebDataset shards, locally and on an S3 server over HTTP (moto). SQLite ledger, one
in-process pipeline (the `vlmbatch run` path), so that only the source differs between rows.

  python bench/image_sources.py --n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import free_port  # noqa: E402


def _images(n: int) -> list[bytes]:
    from tests.fixtures.bad_images import good_jpeg

    return [good_jpeg(64, 64, seed=i) for i in range(n)]


def _write_parquet(path: Path, images: list[bytes]) -> None:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
    table = {
        "image": [{"bytes": data, "path": None} for data in images],
        "question": ["What is shown?"] * len(images),
    }
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))


def _write_shards(folder: Path, images: list[bytes], per_shard: int) -> None:
    import webdataset

    folder.mkdir(parents=True)
    for start in range(0, len(images), per_shard):
        with webdataset.TarWriter(str(folder / f"{start // per_shard:05d}.tar")) as sink:
            for i in range(start, min(len(images), start + per_shard)):
                sink.write({"__key__": f"{i:09d}", "jpg": images[i], "json": {"caption": f"image {i}"}})


def _measure(label: str, uri: str, work: Path, endpoint: str | None, **open_args: Any) -> dict[str, Any]:
    from vlmbatch.media.stores import ObjectStores
    from vlmbatch.producer.sources.open import open_source
    from vlmbatch.producer.sources.prompts import Prompting
    from vlmbatch.producer.submit import submit
    from vlmbatch.schema.contracts.models import RunSettings
    from vlmbatch.schema.contracts.settings import Settings
    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.worker.process.runtime import build_pipeline
    from vlmbatch.worker.transport.publisher import NullPublisher

    database = f"sqlite:///{work / (label.replace(' ', '-').replace(',', '') + '.db')}"
    settings = Settings(
        database_url=database, engine="fake", model="fake-model", max_num_seqs=64, s3_endpoint_url=endpoint
    )
    _, sessions = open_ledger(database)
    started = time.perf_counter()
    source = open_source(
        uri, prompting=Prompting.of("What is shown?"), stores=ObjectStores(s3_endpoint_url=endpoint), **open_args
    )
    report = submit(
        sessions=sessions,
        publisher=NullPublisher(),
        source=source,
        settings=RunSettings(model="fake-model"),
        queue="q",
        name_basis="What is shown?",
    )
    submit_s = time.perf_counter() - started
    pipeline = build_pipeline(settings, sessions=sessions, publisher=NullPublisher())
    pipeline.start()
    try:
        started = time.perf_counter()
        pipeline.feed_run(report.run).result(timeout=900)
        work_s = time.perf_counter() - started
    finally:
        pipeline.stop()
    jobs = report.submitted
    print(f"  {label}: {jobs} jobs, submit {submit_s:.1f} s, worker {work_s:.1f} s", file=sys.stderr)
    return {"jobs": jobs, "submit_s": submit_s, "worker_s": work_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image_sources.json")
    args = parser.parse_args()
    import logging

    from moto.server import ThreadedMotoServer

    from tests.conftest import fill_bucket
    from vlmbatch.media.stores import make_s3_client

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    work = Path(tempfile.mkdtemp(prefix="vlmbatch-sources-"))
    images = _images(args.n)
    folder = work / "files"
    folder.mkdir()
    for i, data in enumerate(images):
        (folder / f"{i:07d}.jpg").write_bytes(data)
    _write_parquet(work / "data.parquet", images)
    _write_shards(work / "shards", images, per_shard=500)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    rows: dict[str, dict[str, Any]] = {}
    try:
        make_s3_client(endpoint).create_bucket(Bucket="bench")
        objects = {f"files/{i:07d}.jpg": data for i, data in enumerate(images)}
        objects |= {f"shards/{p.name}": p.read_bytes() for p in sorted((work / "shards").iterdir())}
        objects["parquet/data.parquet"] = (work / "data.parquet").read_bytes()
        fill_bucket(endpoint, "bench", objects, threads=16)
        cases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("plain files, local folder", lambda: _measure("local files", str(folder), work, None)),
            (
                "embedded Parquet, local (staged locally)",
                lambda: _measure("local parquet", str(work / "data.parquet"), work, None, stage_to=str(work / "st")),
            ),
            ("WebDataset shards, local folder", lambda: _measure("local shards", str(work / "shards"), work, None)),
            ("plain files, S3 prefix", lambda: _measure("s3 files", "s3://bench/files/", work, endpoint)),
            (
                "embedded Parquet on S3 (staged to S3)",
                lambda: _measure(
                    "s3 parquet", "s3://bench/parquet/data.parquet", work, endpoint, stage_to="s3://bench/staged"
                ),
            ),
            ("WebDataset shards, S3 prefix", lambda: _measure("s3 shards", "s3://bench/shards/", work, endpoint)),
        ]
        _measure("warm-up", str(folder), work, None)  # imports and first-use costs, not reported
        for label, case in cases:
            rows[label] = case()
    finally:
        server.stop()
    print(f"\n{platform.machine()}, {os.cpu_count()} cores; SQLite ledger, fake engine, {args.n} images of 64x64\n")
    print("| source | jobs | submit s | submit jobs/s | worker s | worker jobs/s |\n|---|---|---|---|---|---|")
    for label, row in rows.items():
        print(
            f"| {label} | {row['jobs']:,} | {row['submit_s']:.1f} | {row['jobs'] / row['submit_s']:,.0f} "
            f"| {row['worker_s']:.1f} | {row['jobs'] / row['worker_s']:,.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "n": args.n, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
