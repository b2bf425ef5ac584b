"""`read()`: exact rows for filters and projections, filters pushed down to Iceberg, time travel, bridges."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime

import polars as pl
import pyarrow as pa
import pytest
from pyiceberg.expressions import And, EqualTo, GreaterThan, In

from medlake_assets.serving.catalog_info import AsOfError
from medlake_assets.serving.read import ReadResult, read, tf_kind, tf_ready, tf_slices
from medlake_assets_tests.serving.serving_lake import EMPTY, LABS, LATE, build_serving_lake, sorted_rows


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    return build_serving_lake(tmp_path_factory.mktemp("read") / "home")


def _records(result: ReadResult) -> list[dict]:
    return sorted_rows(result.arrow.to_pylist())


def test_string_filter_and_columns_return_exactly_the_matching_rows(serving):
    result = read(
        LABS,
        columns=["_record", "facility", "value"],
        where="facility = 'F2' and value > 10.0",
        lake=serving.lake,
    )
    expected = [
        {"_record": row["_record"], "facility": "F2", "value": row["value"]}
        for row in sorted_rows(serving.current_rows)
        if row["facility"] == "F2" and row["value"] > 10.0
    ]
    assert result.column_names == ["_record", "facility", "value"]
    assert _records(result) == expected
    assert len(expected) > 0
    assert result.snapshot_id == serving.current_snapshot_id


def test_expression_filter_returns_exactly_the_matching_rows(serving):
    where = And(In("test_code", {"GLU", "K"}), GreaterThan("resulted_on", "2026-11-10"))
    result = read(LABS, where=where, lake=serving.lake)
    expected = [
        row
        for row in sorted_rows(serving.current_rows)
        if row["test_code"] in ("GLU", "K") and row["resulted_on"] > date(2026, 11, 10)
    ]
    assert _records(result) == expected
    assert len(expected) > 0


def test_partition_filter_never_opens_other_partitions_files(tmp_path):
    """Pushdown, observed: with F3's data files gone, a read of F2 still works (they were never opened)."""
    serving = build_serving_lake(tmp_path / "home")
    table = serving.lake.catalog.load_table(LABS)
    for task in table.scan(row_filter=EqualTo("facility", "F3")).plan_files():
        path = task.file.file_path.removeprefix("file://")
        assert path.startswith(str(tmp_path))
        (tmp_path / path[len(str(tmp_path)) + 1 :]).unlink()
    result = read(LABS, columns=["_record"], where=EqualTo("facility", "F2"), lake=serving.lake)
    expected = [row["_record"] for row in sorted_rows(serving.current_rows) if row["facility"] == "F2"]
    assert sorted(result.arrow.column("_record").to_pylist()) == expected
    with pytest.raises(FileNotFoundError):
        read(LABS, where="facility = 'F3'", lake=serving.lake)


def test_no_filter_reads_the_current_snapshot(serving):
    assert _records(read(LABS, lake=serving.lake)) == sorted_rows(serving.current_rows)


@pytest.mark.parametrize("form", ["id", "id_text", "iso", "datetime"])
def test_as_of_returns_the_earlier_snapshots_rows(serving, form):
    moment = datetime.fromtimestamp(serving.first_timestamp_ms / 1000, UTC)
    as_of = {
        "id": serving.first_snapshot_id,
        "id_text": str(serving.first_snapshot_id),
        "iso": moment.isoformat(timespec="milliseconds"),
        "datetime": moment,
    }[form]
    result = read(LABS, as_of=as_of, lake=serving.lake)
    assert result.snapshot_id == serving.first_snapshot_id
    assert _records(result) == sorted_rows(serving.first_rows)
    f1 = read(LABS, where="facility = 'F1'", columns=["_record"], as_of=as_of, lake=serving.lake)
    assert sorted(f1.arrow.column("_record").to_pylist()) == [
        row["_record"] for row in sorted_rows(serving.first_rows) if row["facility"] == "F1"
    ]


def test_as_of_another_tables_snapshot_reads_this_table_as_of_that_commit(serving):
    late = serving.lake.catalog.load_table(LATE)
    result = read(LABS, as_of=late.current_snapshot().snapshot_id, lake=serving.lake)
    # bronze.late_feed was committed after the first labs commit and before the overwrite.
    assert _records(result) == sorted_rows(serving.first_rows)


def test_as_of_before_the_table_existed_is_refused(serving):
    with pytest.raises(AsOfError, match=f"table {LATE} did not exist yet"):
        read(LATE, as_of=serving.first_snapshot_id, lake=serving.lake)


@pytest.mark.parametrize(
    ("as_of", "message"),
    [
        (123, "no table in the lake has snapshot 123"),
        ("yesterday", "neither a snapshot id nor an ISO timestamp"),
    ],
)
def test_unknown_as_of_is_refused(serving, as_of, message):
    with pytest.raises(AsOfError, match=message):
        read(LABS, as_of=as_of, lake=serving.lake)


def test_table_without_snapshot_reads_empty_with_its_columns(serving):
    result = read(EMPTY, columns=["facility", "value"], lake=serving.lake)
    assert result.num_rows == 0
    assert result.column_names == ["facility", "value"]
    assert result.snapshot_id is None


def test_to_polars_keeps_rows_and_types(serving):
    frame = read(
        LABS, columns=["_record", "resulted_on"], where="facility = 'F2'", lake=serving.lake
    ).to_polars()
    assert frame.schema == pl.Schema({"_record": pl.Int64, "resulted_on": pl.Date})
    assert sorted(frame["_record"].to_list()) == [
        row["_record"] for row in sorted_rows(serving.current_rows) if row["facility"] == "F2"
    ]


def test_to_pandas_without_pandas_says_what_to_install(serving, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # a None entry makes `import pandas` fail
    with pytest.raises(ImportError, match="pip install pandas"):
        read(LABS, lake=serving.lake).to_pandas()


def test_to_tf_dataset_without_tensorflow_names_the_extra(serving, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"pip install 'medlake\[tf\]'"):
        read(LABS, lake=serving.lake).to_tf_dataset(batch_size=8)


def test_tf_ready_casts_temporal_and_decimal_columns_to_numbers():
    arrow = pa.table(
        {
            "day": pa.array([date(1970, 1, 2), date(2026, 11, 20)]),
            "at": pa.array([datetime(1970, 1, 1, 0, 0, 1), datetime(1970, 1, 1)], pa.timestamp("ms")),
            "amount": pa.array(["1.50", "2.25"]).cast(pa.decimal128(5, 2)),
            "code": pa.array(["GLU", "K"]),
            "flag": pa.array([True, False]),
            "value": pa.array([1.0, 2.0], pa.float32()),
        }
    )
    ready = tf_ready(arrow)
    assert ready.to_pydict() == {
        "day": [1, (date(2026, 11, 20) - date(1970, 1, 1)).days],
        "at": [1_000_000, 0],
        "amount": [1.5, 2.25],
        "code": ["GLU", "K"],
        "flag": [True, False],
        "value": [1.0, 2.0],
    }
    assert [tf_kind(field.type) for field in ready.schema] == [
        "int64",
        "int64",
        "float64",
        "string",
        "bool",
        "float32",
    ]


def test_tf_ready_refuses_nulls_naming_only_the_column():
    arrow = pa.table({"patient_id": pa.array(["P00001", None, None])})
    with pytest.raises(ValueError, match=r"^column 'patient_id' has 2 nulls: fill or filter them first$"):
        tf_ready(arrow)


def test_tf_slices_have_exact_sizes_across_chunks():
    arrow = pa.concat_tables([pa.table({"n": list(range(3))}), pa.table({"n": list(range(3, 7))})])
    assert arrow.column("n").num_chunks == 2
    slices = list(tf_slices(arrow, 3))
    assert [piece.column("n").to_pylist() for piece in slices] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        list(tf_slices(arrow, 0))
