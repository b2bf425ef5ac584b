"""The `tf.data` bridge and the docs' training example on a generated and ingested lake (`make test-tf`).

TensorFlow is imported inside the tests, so `make test` (which deselects `-m tf`) collects this file
without it, and these tests fail, not skip, where it is missing.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import subprocess
import sys
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import BinaryType, FixedType, LongType, NestedField

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.lake import Lake
from medlake_assets.lake.settings import load_settings
from medlake_assets.serving.read import read
from medlake_assets.serving.sql import connect
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake
from medlake_dev.generate import write_feeds

pytestmark = pytest.mark.tf

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO_ROOT / "docs" / "examples"
EXAMPLE = EXAMPLE_DIR / "train_lab_model.py"
DOC = REPO_ROOT / "docs" / "ml.md"
LABS = "silver.lab_results"
# About 12k lab results over 3 facilities: enough for the example's model to learn in a few epochs.
GENERATION = {"facilities": 3, "archives": 24, "seed": 5, "bad_rate": 0.0, "day": DAY, "size_scale": 0.1}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """MEDLAKE_HOME of a freshly generated lake, ingested through bronze to silver by the real runs."""
    home = tmp_path_factory.mktemp("tf") / "home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDLAKE_ARCHIVE_PASSWORD", secrets.token_urlsafe(12))
        write_feeds(home, **GENERATION)
        settings = local_settings(home)
        with dg.instance_for_test() as instance:
            summary = ingest_once(
                build_definitions(settings), instance, open_lake(settings), refresh_reports=False
            )
    assert summary.failed_runs == 0
    return home


@pytest.fixture(scope="module")
def lake(home) -> Lake:
    return open_lake(local_settings(home))


@pytest.fixture(scope="module")
def example():
    """The docs' example module, imported from its file the way the docs tell a reader to run it."""
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        import train_lab_model
    finally:
        sys.path.remove(str(EXAMPLE_DIR))
    return train_lab_model


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def test_batches_hold_exactly_the_arrow_rows_with_tensorflow_types(lake):
    import tensorflow as tf

    columns = ["facility_id", "test_code", "result_ts", "_record", "_landing_day", "_deleted"]
    result = read(LABS, columns=columns, where="facility_id = 'F0001'", lake=lake)
    rows = result.num_rows
    assert rows > 250 and rows % 100 != 0  # several full batches and a short last one
    dataset = result.to_tf_dataset(batch_size=100)

    assert dataset.element_spec == {
        "facility_id": tf.TensorSpec((None,), tf.string),
        "test_code": tf.TensorSpec((None,), tf.string),
        "result_ts": tf.TensorSpec((None,), tf.int64),
        "_record": tf.TensorSpec((None,), tf.int64),
        "_landing_day": tf.TensorSpec((None,), tf.int64),
        "_deleted": tf.TensorSpec((None,), tf.bool),
    }
    assert dataset.cardinality().numpy() == math.ceil(rows / 100)
    batches = list(dataset.as_numpy_iterator())
    assert [len(batch["_record"]) for batch in batches] == [100] * (rows // 100) + [rows % 100]
    assert all(len(batch[name]) == len(batch["_record"]) for batch in batches for name in columns)

    got = {name: np.concatenate([batch[name] for batch in batches]).tolist() for name in columns}
    arrow = result.arrow.to_pydict()
    assert got["facility_id"] == [value.encode() for value in arrow["facility_id"]]
    assert got["test_code"] == [value.encode() for value in arrow["test_code"]]
    assert got["result_ts"] == [_micros(moment) for moment in arrow["result_ts"]]
    assert got["_record"] == arrow["_record"]
    assert got["_landing_day"] == [(day - date(1970, 1, 1)).days for day in arrow["_landing_day"]]
    assert got["_deleted"] == arrow["_deleted"]
    assert set(got["facility_id"]) == {b"F0001"}


def test_label_is_split_from_the_features_batch_by_batch(lake, example):
    result = read(LABS, columns=example.COLUMNS, where=example.FLAGGED, lake=lake)
    batches = list(result.to_tf_dataset(batch_size=64, label="abnormal_flag").as_numpy_iterator())
    assert len(batches) == math.ceil(result.num_rows / 64)
    for features, label in batches:
        assert sorted(features) == ["test_code", "value"]
        assert len(features["test_code"]) == len(features["value"]) == len(label)
    arrow = result.arrow.to_pydict()
    labels = np.concatenate([label for _, label in batches]).tolist()
    assert labels == [flag.encode() for flag in arrow["abnormal_flag"]]
    assert set(labels) == {b"H", b"L", b"N"}
    values = np.concatenate([features["value"] for features, _ in batches]).tolist()
    assert values == [value.encode() for value in arrow["value"]]


def test_refusals_name_the_column_and_happen_when_the_dataset_is_made(lake):
    result = read(LABS, columns=["test_code", "abnormal_flag"], lake=lake)
    nulls = result.to_polars()["abnormal_flag"].null_count()
    assert nulls > 0  # preliminary results and some normal ones carry no flag
    with pytest.raises(ValueError, match=rf"^column 'abnormal_flag' has {nulls} nulls: fill or filter"):
        result.to_tf_dataset()
    flagged = read(LABS, columns=["test_code"], where="abnormal_flag = 'H'", lake=lake)
    with pytest.raises(ValueError, match=r"label column 'abnormal_flag' is not among the columns read"):
        flagged.to_tf_dataset(label="abnormal_flag")
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        flagged.to_tf_dataset(batch_size=0)


def test_binary_columns_become_bytes_and_an_empty_read_has_no_batches(tmp_path):
    import tensorflow as tf

    lake = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")}))
    schema = Schema(
        NestedField(1, "n", LongType(), required=True),
        NestedField(2, "blob", BinaryType(), required=True),
        NestedField(3, "digest", FixedType(4), required=True),
    )
    table = lake.catalog.create_table("bronze.tf_binary", schema=schema)
    rows = [{"n": n, "blob": bytes([n]) * n, "digest": bytes([n, 0, 1, 2])} for n in range(5)]
    table.append(pa.Table.from_pylist(rows, schema=schema.as_arrow()))

    dataset = read("bronze.tf_binary", lake=lake).to_tf_dataset(batch_size=2, label="n")
    assert dataset.element_spec == (
        {"blob": tf.TensorSpec((None,), tf.string), "digest": tf.TensorSpec((None,), tf.string)},
        tf.TensorSpec((None,), tf.int64),
    )
    batches = list(dataset.as_numpy_iterator())
    assert [label.tolist() for _, label in batches] == [[0, 1], [2, 3], [4]]
    assert [blob for features, _ in batches for blob in features["blob"]] == [row["blob"] for row in rows]
    assert [d for features, _ in batches for d in features["digest"]] == [row["digest"] for row in rows]

    empty = read("bronze.tf_binary", where="n > 100", lake=lake).to_tf_dataset(batch_size=2)
    assert empty.cardinality().numpy() == 0
    assert list(empty.as_numpy_iterator()) == []


def test_docs_example_trains_a_model_that_beats_always_normal_on_an_unseen_facility(lake, example):
    import tensorflow as tf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = example.train(lake=lake, epochs=8, seed=0)
    # The bridge declares its batch count, so Keras never thinks the input was cut short.
    assert not [warning for warning in caught if "ran out of data" in str(warning.message)]

    # The holdout and its "always normal" baseline, computed independently with DuckDB over the same table.
    con = connect(lake)
    flagged = (
        "result_status IN ('F', 'C') AND abnormal_flag IN ('H', 'L', 'N') AND NOT _deleted "
        f"AND regexp_full_match(value, '{example.NUMBER}')"
    )
    holdout = con.execute(f"SELECT max(facility_id) FROM {LABS} WHERE {flagged}").fetchone()[0]
    holdout_rows, normal = con.execute(
        f"SELECT count(*), count(*) FILTER (abnormal_flag = 'N') FROM {LABS} "
        f"WHERE {flagged} AND facility_id = ?",
        [holdout],
    ).fetchone()
    assert trained.holdout == holdout
    assert trained.holdout_normal_share == pytest.approx(normal / holdout_rows)
    assert 0.6 < trained.holdout_normal_share < 0.9  # the generator flags about a fifth of results H or L

    loss = trained.history["loss"]
    assert len(loss) == 8 and len(trained.history["val_accuracy"]) == 8
    assert loss[-1] < 0.5 * loss[0]

    # Accuracy on the unseen facility, recomputed here from the model's own predictions.
    validation = example.examples(f"facility_id = '{holdout}'", lake=lake)
    predictions = trained.model.predict(validation, verbose=0)
    labels = np.concatenate([label for _, label in validation.as_numpy_iterator()])
    assert predictions.shape == (holdout_rows, 1)
    assert ((predictions >= 0) & (predictions <= 1)).all()
    accuracy = float(np.mean((predictions[:, 0] > 0.5) == (labels == 1.0)))
    assert accuracy >= trained.holdout_normal_share + 0.1
    assert accuracy == pytest.approx(trained.history["val_accuracy"][-1], abs=1e-5)

    # What it learned reads sensibly: glucose (LOINC 2345-7, reference 70-99 mg/dL) at 85 and at 400.
    glucose = {
        "test_code": tf.constant(["2345-7", "2345-7"]),
        "log_value": tf.math.log(tf.constant([[85.0], [400.0]])),
    }
    normal_glucose, high_glucose = trained.model.predict(glucose, verbose=0)[:, 0]
    assert normal_glucose < 0.5 < high_glucose


def test_docs_example_runs_as_a_script(home):
    environment = {**os.environ, "MEDLAKE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "2"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.splitlines()
    assert re.fullmatch(r"epochs: 2, training loss \d\.\d{3} -> \d\.\d{3}", lines[0])
    assert re.fullmatch(r"holdout F0003: accuracy \d\.\d{3} \(always 'normal': 0\.\d{3}\)", lines[1])


def test_docs_quote_the_example_verbatim():
    """Every block in docs/ml.md that names the example file is an exact excerpt of it."""
    source = EXAMPLE.read_text()
    blocks = re.findall(r"```python\n# docs/examples/train_lab_model\.py\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        assert block in source, block
