"""The export's field table is the one definition: the record type, the Parquet schema and the SQL
selection all follow it."""

from __future__ import annotations

import typing

from vlmbatch.producer.reports.fields import (
    FIELDS,
    SELECTED,
    TIMING_FIELDS,
    TIMINGS,
    ExportRecord,
    Timings,
    parquet_schema,
)
from vlmbatch.schema.ledger.export_reads import has_column


def test_record_type_has_the_table_fields_in_order() -> None:
    assert list(typing.get_type_hints(ExportRecord)) == [f.name for f in FIELDS] + ["timings"]
    assert list(typing.get_type_hints(Timings)) == list(TIMING_FIELDS)


def test_parquet_schema_has_a_column_per_field_and_timings_nested() -> None:
    schema = parquet_schema()
    assert schema.names == [f.name for f in FIELDS] + ["timings"]
    assert [schema.field("timings").type.field(i).name for i in range(len(TIMINGS))] == list(TIMING_FIELDS)
    assert str(schema.field("images").type) == "list<item: string>"
    assert str(schema.field("metadata").type) == "string"  # free-form JSON text


def test_selection_reads_every_sourced_field_once() -> None:
    names = [f.name for f in SELECTED]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in FIELDS if f.source is not None} | set(TIMING_FIELDS)
    assert {"run", "run_id"}.isdisjoint(names)  # the run's own fields are added, not selected


def test_every_selected_field_names_a_ledger_column() -> None:
    unreadable = [f"{f.name}: {f.source}" for f in SELECTED if f.source is None or not has_column(f.source)]
    assert unreadable == []
    assert not has_column("result.no_such_column") and not has_column("runs.name")
