"""Reading a Parquet file a record batch at a time, bounded in bytes rather than rows: a batch decodes to
about BATCH_BYTES at most, judged from each row group's metadata, so a file of huge cells (a
decompression bomb: 4 KB of zstd that decodes to gigabytes) is read row by row.

The metadata is the file's own word, and a hostile file may understate its sizes, so what is decoded is
checked too: each row group's first row is decoded alone first and the batch size is cut to fit its
actual size, and once a batch decodes over BATCH_BYTES the rest of the group is read row by row. The
first-row read fetches the group's column chunks again (a ParquetFile reads a chunk whole): twice the
bytes of a Parquet source on S3, the price of not trusting its footer. What is left: a lying group whose
first row is small and whose later rows are huge decodes one oversize batch (at most `max_rows` rows)
before it is caught; no reader option bounds Arrow's decoding in bytes."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

BATCH_BYTES = 64 * 1024 * 1024
_DICTIONARY_ENCODINGS = frozenset({"PLAIN_DICTIONARY", "RLE_DICTIONARY"})


def batch_rows(group: Any, *, max_rows: int, budget: int = BATCH_BYTES) -> int:
    """Rows of the row group `group` (pyarrow's RowGroupMetaData) to decode at once: as many as fit
    `budget` by the group's uncompressed size per row, at most `max_rows`. A dictionary-encoded column
    may decode one value into every row, so its whole uncompressed size counts for each row."""
    per_row = group.total_byte_size / max(group.num_rows, 1)
    for index in range(group.num_columns):
        column = group.column(index)
        if _DICTIONARY_ENCODINGS & set(column.encodings):
            per_row += column.total_uncompressed_size
    return int(max(1, min(max_rows, budget // max(per_row, 1))))


def bounded_batches(parquet: Any, *, max_rows: int, budget: int = BATCH_BYTES) -> Iterator[Any]:
    """The record batches of `parquet` (a pyarrow ParquetFile), each row group's sized by `batch_rows`
    and by the decoded size of its first row, and row by row after a batch over `budget` (the module
    docstring). A source without row groups (an Arrow stream file, memory-mapped) is cut to `max_rows`."""
    metadata = getattr(parquet, "metadata", None)
    if metadata is None:
        yield from parquet.iter_batches(batch_size=max_rows)
        return
    for group in range(metadata.num_row_groups):
        rows = batch_rows(metadata.row_group(group), max_rows=max_rows, budget=budget)
        if rows > 1:
            rows = min(rows, budget // max(_first_row_bytes(parquet, group), 1))
        read = 0
        for batch in parquet.iter_batches(batch_size=max(rows, 1), row_groups=[group]):
            yield batch
            read += batch.num_rows
            if rows > 1 and batch.nbytes > budget:  # the metadata understated the sizes
                yield from islice(parquet.iter_batches(batch_size=1, row_groups=[group]), read, None)
                break


def _first_row_bytes(parquet: Any, group: int) -> int:
    """The decoded size of the row group's first row (0 for an empty group)."""
    batches = parquet.iter_batches(batch_size=1, row_groups=[group])
    try:
        first = next(batches, None)
        return 0 if first is None else int(first.nbytes)
    finally:
        batches.close()
