"""A Parquet decompression bomb at submit: a few KB of zstd whose image cells decode to 100 MB each. The
submit reads it row by row (its batches are bounded in bytes, not rows) and refuses each oversize cell
as a malformed row; its peak memory is measured in a fresh process, under an address-space limit so that
a regression fails the test rather than the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import fill_bucket
from tests.fixtures.lying_parquet import understate_sizes
from vlmbatch.media.stores import make_s3_client
from vlmbatch.producer.sources.parquet_batches import batch_rows

ROWS = 16
CELL_BYTES = 100 * 1024 * 1024
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# The child may not map more than this: decoding the whole row group at once (16 x 100 MB, held twice)
# cannot fit; one row at a time (~100 MB, held a few times) does.
ADDRESS_SPACE = 3 * 1024**3
MAX_PEAK_MIB = 1536  # measured: ~710 MiB (one 100 MB row decoded, its dictionary, a copy)

_VALIDATE_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[4]), int(sys.argv[4])))
import pyarrow.parquet
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.sources.parquet import ColumnChoice
from vlmbatch.schema.contracts.errors import SourceError

stores = ObjectStores(s3_endpoint_url=sys.argv[5] or None)
source = open_source(sys.argv[1], prompting=Prompting.of("What is shown?"), stores=stores, stage_to=sys.argv[2],
                     columns=ColumnChoice(image_columns=("image",)), max_image_bytes=int(sys.argv[3]))
try:
    source.validate()
    refused = ""
except SourceError as exc:
    refused = str(exc)
# VmHWM, not ru_maxrss: Linux carries the peak RSS across fork and exec (the pytest process's own size).
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
print(json.dumps({"refused": refused, "peak_mib": peak}))
"""


def write_bomb(path: Path) -> None:
    """ROWS rows whose `image` cell is one CELL_BYTES value of zeros, dictionary-encoded and compressed,
    without the Arrow schema (so a reader decodes every cell in full)."""
    dictionary = pa.array([bytes(CELL_BYTES)], pa.binary())
    cells = pa.DictionaryArray.from_arrays(pa.array([0] * ROWS, pa.int32()), dictionary)
    table = pa.table({"image": cells, "question": pa.array(["What is shown?"] * ROWS)})
    pq.write_table(
        table, path, compression="zstd", store_schema=False, row_group_size=ROWS, dictionary_pagesize_limit=1 << 30
    )


def _validate_in_a_child(uri: str, stage_to: str, s3_endpoint_url: str = "") -> dict[str, Any]:
    child = [sys.executable, "-c", _VALIDATE_CHILD, uri, stage_to, str(MAX_IMAGE_BYTES), str(ADDRESS_SPACE)]
    done = subprocess.run([*child, s3_endpoint_url], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def test_a_decompression_bomb_is_read_row_by_row_and_its_cells_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.parquet"
    write_bomb(bomb)
    assert bomb.stat().st_size < 64 * 1024  # a few KB on disk
    group = pq.ParquetFile(bomb).metadata.row_group(0)
    assert group.num_rows == ROWS and batch_rows(group, max_rows=64) == 1
    report = _validate_in_a_child(str(bomb), str(tmp_path / "staged"))
    assert f"{ROWS} malformed row(s)" in report["refused"] and "VLMBATCH_MAX_IMAGE_BYTES" in report["refused"]
    assert report["peak_mib"] < MAX_PEAK_MIB, report
    assert not any(p.is_file() for p in (tmp_path / "staged").rglob("*"))  # nothing oversize was staged


def test_a_bomb_whose_metadata_understates_its_sizes_is_still_read_row_by_row(tmp_path: Path) -> None:
    bomb = tmp_path / "liar.parquet"
    write_bomb(bomb)
    understate_sizes(bomb)
    group = pq.ParquetFile(bomb).metadata.row_group(0)
    assert group.total_byte_size == 16 and group.column(0).total_uncompressed_size == 16
    assert batch_rows(group, max_rows=64) == 64  # by its metadata alone, the whole group in one batch
    report = _validate_in_a_child(str(bomb), str(tmp_path / "staged"))
    assert f"{ROWS} malformed row(s)" in report["refused"] and "VLMBATCH_MAX_IMAGE_BYTES" in report["refused"]
    assert report["peak_mib"] < MAX_PEAK_MIB, report


def test_the_same_bomb_on_s3_is_read_by_ranges_row_by_row(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    write_bomb(tmp_path / "bomb.parquet")
    fill_bucket(s3_endpoint, s3_bucket, {"data/bomb.parquet": (tmp_path / "bomb.parquet").read_bytes()})
    report = _validate_in_a_child(f"s3://{s3_bucket}/data/bomb.parquet", f"s3://{s3_bucket}/staged", s3_endpoint)
    assert f"{ROWS} malformed row(s)" in report["refused"], report
    assert report["peak_mib"] < MAX_PEAK_MIB, report
    listing = make_s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="staged/")
    assert listing["KeyCount"] == 0  # nothing oversize was staged
