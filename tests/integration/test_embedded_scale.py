"""Submit of a large Parquet with embedded images stays flat in memory: rows are read a small batch at a
time and each image is staged as it passes, so the peak does not grow with the row count. Measured in a
fresh process (as the export test does), so that its peak RSS is the submit's alone."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROWS = 200_000
DISTINCT_IMAGES = 5000  # more than the stager's recent-digest memory: old digests are forgotten
ROW_GROUP = 10_000
MAX_GROWTH_MIB = 150
MAX_GROWTH_PER_10X_MIB = 30

# pyarrow is loaded before the baseline: its libraries are code, not memory that grows with the rows.
_SUBMIT_CHILD = """
import json, sys
import pyarrow.parquet
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.worker.transport.publisher import NullPublisher

def peak_mib():
    # VmHWM, not ru_maxrss: Linux carries the peak RSS across fork and exec, so ru_maxrss would
    # report at least the size of the test process that started this one.
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024

_, sessions = open_ledger(sys.argv[1])
baseline = peak_mib()
source = open_source(sys.argv[2], prompting=Prompting.of("What is shown?"), stores=ObjectStores(), stage_to=sys.argv[3])
report = submit(sessions=sessions, publisher=NullPublisher(), source=source,
                settings=RunSettings(model="fake-model"), queue="q", name_basis="What is shown?")
print(json.dumps({"submitted": report.submitted, "baseline_mib": baseline, "peak_mib": peak_mib()}))
"""


def _tiny_png(number: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 2), (number % 256, number // 256 % 256, 7)).save(out, "PNG")
    return out.getvalue()


def write_large_image_parquet(path: Path, rows: int, *, distinct: int = DISTINCT_IMAGES) -> None:
    """`rows` rows of struct<bytes, path> images (as `datasets` stores them) and a question of their own
    (a job is unique per images and question), in row groups."""
    images = [_tiny_png(i) for i in range(distinct)]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("question", pa.string())])
    metadata = {"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})}
    with pq.ParquetWriter(path, schema.with_metadata(metadata)) as writer:
        for start in range(0, rows, ROW_GROUP):
            ids = range(start, min(rows, start + ROW_GROUP))
            cells = [{"bytes": images[i % distinct], "path": None} for i in ids]
            questions = pa.array([f"What is shown in picture {i}?" for i in ids])
            writer.write_table(pa.table({"image": pa.array(cells, image_type), "question": questions}, schema=schema))


def _submit_peak(sqlite_url: str, tmp_path: Path, rows: int) -> dict[str, float]:
    folder = tmp_path / str(rows)
    folder.mkdir()
    write_large_image_parquet(folder / "large.parquet", rows)
    url = sqlite_url.replace("ledger.db", f"ledger-{rows}.db")
    child = subprocess.run(
        [sys.executable, "-c", _SUBMIT_CHILD, url, str(folder / "large.parquet"), str(folder / "staged")],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    measured: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    assert measured["submitted"] == rows
    assert len(list((folder / "staged").rglob("*/*/*"))) == DISTINCT_IMAGES
    return measured


def test_submitting_200_000_embedded_images_keeps_memory_flat(sqlite_url: str, tmp_path: Path) -> None:
    small = _submit_peak(sqlite_url, tmp_path, ROWS // 10)
    large = _submit_peak(sqlite_url, tmp_path, ROWS)
    growth = large["peak_mib"] - large["baseline_mib"]
    assert growth < MAX_GROWTH_MIB, large
    # Ten times the rows, about the same peak: nothing is kept per row.
    assert large["peak_mib"] - small["peak_mib"] < MAX_GROWTH_PER_10X_MIB, (small, large)
