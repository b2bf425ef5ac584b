"""Train a small Keras model on `silver.lab_results`: is a lab result abnormal, given its test and value?

The facilities flag each final result high (H), low (L) or normal (N). The model learns, per LOINC test,
which values they flag, from three columns read with the filter pushed down to Iceberg and streamed to
Keras through `to_tf_dataset`. One facility is held out of training and used to evaluate the model.

Needs the `tf` extra (`make test-tf` builds `.venv-tf` with it). After `make run`:

    MEDLAKE_HOME=.medlake .venv-tf/bin/python docs/examples/train_lab_model.py --epochs 8

`medlake_assets_tests/serving/test_tf.py` runs this module end to end, so it stays in step with the docs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

import medlake_assets
from medlake_assets.lake import Lake

TABLE = "silver.lab_results"
COLUMNS = ["test_code", "value", "abnormal_flag"]  # no PII column is read
# Final and corrected results the facility flagged; deleted rows (upsert tombstones) left out.
FLAGGED = "result_status in ('F', 'C') and abnormal_flag in ('H', 'L', 'N') and _deleted = false"
# `value` is text as the lab reported it ("5.1", but also "<5" or "positive"): only plain numbers are used.
NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)"


def encode(features: dict[str, tf.Tensor], flag: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """One batch as model inputs (test code, log of the value) and label (1.0 for H or L, 0.0 for N)."""
    numeric = tf.strings.regex_full_match(features["value"], NUMBER)
    value = tf.strings.to_number(tf.boolean_mask(features["value"], numeric), tf.float32)
    inputs = {
        "test_code": tf.boolean_mask(features["test_code"], numeric),
        # Values span about 0.001 (troponin) to 720 (platelets): on a log scale the tests sit side by side.
        "log_value": tf.expand_dims(tf.math.log(tf.maximum(value, 1e-3)), axis=1),
    }
    return inputs, tf.cast(tf.boolean_mask(flag, numeric) != "N", tf.float32)


def examples(where: str, batch_size: int = 32, lake: Lake | None = None) -> tf.data.Dataset:
    """Flagged results matching `where`, as (inputs, label) batches."""
    result = medlake_assets.read(TABLE, columns=COLUMNS, where=f"{FLAGGED} and {where}", lake=lake)
    return result.to_tf_dataset(batch_size=batch_size, label="abnormal_flag").map(encode)


def build_model(test_codes: list[str], training: tf.data.Dataset) -> keras.Model:
    """One-hot test code and the normalized log value, two small hidden layers, P(abnormal)."""
    test_code = keras.Input(shape=(), dtype="string", name="test_code")
    log_value = keras.Input(shape=(1,), dtype="float32", name="log_value")
    normalize = keras.layers.Normalization()
    normalize.adapt(training.map(lambda inputs, _: inputs["log_value"]))
    hidden = keras.layers.Concatenate()(
        [
            keras.layers.StringLookup(vocabulary=test_codes, output_mode="one_hot")(test_code),
            normalize(log_value),
        ]
    )
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    abnormal = keras.layers.Dense(1, activation="sigmoid", name="abnormal")(hidden)
    model = keras.Model({"test_code": test_code, "log_value": log_value}, abnormal)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy", metrics=["accuracy"]
    )
    return model


@dataclass(frozen=True)
class Trained:
    model: keras.Model
    history: dict[str, list[float]]  # loss, accuracy, val_loss, val_accuracy per epoch
    holdout: str  # the facility the model never saw
    holdout_normal_share: float  # accuracy of always answering "normal" on the holdout


def train(lake: Lake | None = None, holdout: str | None = None, epochs: int = 8, seed: int = 0) -> Trained:
    """Train on every facility but `holdout` (default: the highest facility id), validate on it."""
    keras.utils.set_random_seed(seed)
    flagged = medlake_assets.read(TABLE, columns=["facility_id", "test_code"], where=FLAGGED, lake=lake)
    seen = flagged.to_polars()
    holdout = holdout or seen["facility_id"].max()
    training = examples(f"facility_id != '{holdout}'", lake=lake)
    validation = examples(f"facility_id = '{holdout}'", lake=lake)
    model = build_model(sorted(seen["test_code"].unique()), training)
    # The dataset reshuffles the order of its batches every epoch (rows within a batch stay together);
    # Keras's own `shuffle` does not apply to a tf.data input.
    fitted = model.fit(
        training.shuffle(buffer_size=1024),
        validation_data=validation,
        epochs=epochs,
        shuffle=False,
        verbose=0,
    )
    labels = np.concatenate([label.numpy() for _, label in validation])
    return Trained(model, fitted.history, holdout, float(1.0 - labels.mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--holdout", help="facility id kept out of training (default: the highest)")
    args = parser.parse_args()
    trained = train(holdout=args.holdout, epochs=args.epochs)
    history = trained.history
    print(
        f"epochs: {len(history['loss'])}, training loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}"
    )
    print(
        f"holdout {trained.holdout}: accuracy {history['val_accuracy'][-1]:.3f} "
        f"(always 'normal': {trained.holdout_normal_share:.3f})"
    )


if __name__ == "__main__":
    main()
