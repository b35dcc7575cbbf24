"""Parquet batches stay bounded in bytes when the file's metadata understates its sizes (issue 29, H2):
what is decoded is checked, not only what the footer claims."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.fixtures.lying_parquet import understate_sizes
from vlmbatch.producer.sources.parquet_batches import batch_rows, bounded_batches

ROWS = 200
CELL = 20_000
BUDGET = 256 * 1024


def _lying_file(path: Path, first_cell: int) -> pq.ParquetFile:
    """ROWS rows of incompressible CELL-byte images (the first `first_cell` bytes), in one row group whose
    footer claims 16 bytes."""
    rng = random.Random(7)
    cells = [rng.randbytes(first_cell)] + [rng.randbytes(CELL) for _ in range(ROWS - 1)]
    table = pa.table({"id": pa.array(range(ROWS), pa.int64()), "image": pa.array(cells, pa.binary())})
    pq.write_table(table, path, use_dictionary=False, compression="zstd", row_group_size=ROWS)
    understate_sizes(path)
    parquet = pq.ParquetFile(path)
    assert batch_rows(parquet.metadata.row_group(0), max_rows=64, budget=BUDGET) == 64  # the lie believed
    return parquet


def _read(parquet: pq.ParquetFile) -> tuple[list[int], list[int], list[int]]:
    batches = list(bounded_batches(parquet, max_rows=64, budget=BUDGET))
    ids = [i for batch in batches for i in batch.column("id").to_pylist()]
    return [b.num_rows for b in batches], [b.nbytes for b in batches], ids


def test_batches_are_sized_by_the_decoded_first_row_when_the_metadata_understates(tmp_path: Path) -> None:
    parquet = _lying_file(tmp_path / "uniform.parquet", first_cell=CELL)
    row_bytes = next(parquet.iter_batches(batch_size=1)).nbytes
    sizes, nbytes, ids = _read(parquet)
    assert ids == list(range(ROWS))
    assert max(nbytes) <= BUDGET, sizes
    assert set(sizes[:-1]) == {BUDGET // row_bytes} and BUDGET // row_bytes > 1  # batched, not row by row


def test_the_rest_is_read_row_by_row_once_a_batch_decodes_over_the_budget(tmp_path: Path) -> None:
    sizes, nbytes, ids = _read(_lying_file(tmp_path / "small_first.parquet", first_cell=1))
    assert ids == list(range(ROWS))  # every row once, in order
    assert nbytes[0] > BUDGET  # the one batch the first row could not warn of
    assert sizes == [64] + [1] * (ROWS - 64)
