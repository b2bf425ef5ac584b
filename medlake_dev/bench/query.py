"""`medlake bench query`: the shipped reports and ad-hoc queries over a year of silver history, against
the same data loaded into PostgreSQL (the stand-in for a company's single SQL Server).

The history is written straight into the silver Iceberg tables the reports read (schemas and partition
specs from `metadata/sources/*.yaml`, as the silver loads create them), plus the quarantine tables and the
`meta.files` ledger the scorecard reads. Every value is a pure function of (seed, row index) through a
SplitMix64 hash, so any chunk can be generated on its own: the tables are written in bounded chunks and
the data does not depend on the chunk size. `silver.encounters` is derived from the generated ADT events
by the real derivation (`derive_encounters`), so the two tables agree as they do in production.

PostgreSQL gets the same rows (copied by DuckDB's postgres extension, binary COPY), primary keys and the
indexes a DBA would add for these queries, then VACUUM ANALYZE. Each query runs on medlake as users run
it (DuckDB views over Iceberg from `serving.sql.connect`, result as Arrow) and on PostgreSQL as the same
SQL transpiled by sqlglot (result fetched with psycopg); both results are compared.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import sqlglot
from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text
from sqlglot import exp

from medlake_assets.errors import MedlakeError
from medlake_assets.gold.spec import load_reports
from medlake_assets.ingest.bronze import quarantine_table
from medlake_assets.lake import Lake
from medlake_assets.lake.columns import DELETED
from medlake_assets.lake.settings import Settings, load_settings
from medlake_assets.silver.encounters import derive_encounters
from medlake_assets.silver.encounters_load import ENCOUNTERS
from medlake_assets.silver.encounters_load import PARTITION_BY as ENCOUNTERS_PARTITION_BY
from medlake_assets.silver.load import silver_schema
from medlake_assets.silver.tables import ensure_table
from medlake_dev.generate.feeds import make_facilities
from medlake_dev.generate.values import (
    BED_STATUS_WEIGHTS,
    BED_STATUSES,
    FACILITY_KINDS,
    FAMILY_NAMES,
    GIVEN_NAMES,
    LAB_TESTS,
    SEXES,
)

END = datetime(2026, 1, 1, tzinfo=UTC)
TESTS_PER_ORDER = 5
LAB_RESULTS_PER_ENCOUNTER = 10
PATIENTS_PER_FACILITY = 1_000
CHUNK_ROWS = 2_000_000  # lab results per Iceberg append (a multiple of TESTS_PER_ORDER)
CHUNK_ENCOUNTERS = 250_000
EVENT_WINDOW = timedelta(days=31)  # ADT events are appended one window of message time at a time
MAX_STAY = timedelta(days=45)
# Mean stay by facility kind (exponential, capped at MAX_STAY): hospital, ER, urgent care, nursing home.
MEAN_STAY_HOURS = {"hospital": 96.0, "emergency_room": 6.0, "urgent_care": 1.5, "nursing_home": 500.0}
TRANSFER_SHARE = 0.3  # hospital and nursing-home stays with one A02 halfway through
SENDER_OFFSETS = ("-0500", "-0600", "-0700", "-0800")
LEDGER_SOURCES = ("adt_events", "bed_census", "lab_results")
QUARANTINE_SHARE = 0.001  # rows quarantined per row loaded
TARGET_REPORT_RATIO = 10.0
TARGET_LAST_24H_SECONDS = 0.5
BENCH_DATABASE = "medlake_bench_query"
SCHEMAS = ("silver", "quarantine", "meta")
MARKER = "medlake_bench_history"
_US = 1_000_000
_MASK = (1 << 64) - 1

# Primary keys and indexes a DBA would give these tables for the reports and the ad-hoc queries.
POSTGRES_INDEXES: tuple[str, ...] = (
    "ALTER TABLE silver.lab_results ADD PRIMARY KEY (facility_id, order_id, test_code)",
    "CREATE INDEX ON silver.lab_results (facility_id, result_ts)",
    "CREATE INDEX ON silver.lab_results (patient_id)",
    "CREATE INDEX ON silver.lab_results (result_ts)",
    "ALTER TABLE silver.encounters ADD PRIMARY KEY (facility, visit_number)",
    "CREATE INDEX ON silver.encounters (facility, admit_ts)",
    "CREATE INDEX ON silver.encounters (patient_id)",
    "CREATE INDEX ON silver.adt_events (_facility, message_ts)",
    "CREATE INDEX ON silver.adt_events (trigger_event, message_ts)",
    "CREATE INDEX ON silver.adt_events (visit_number)",
    "ALTER TABLE silver.bed_census ADD PRIMARY KEY (facility_id, bed_id)",
    "CREATE INDEX ON quarantine.lab_results (_facility)",
    "CREATE INDEX ON quarantine.adt_events (_facility)",
)
# Session settings of the PostgreSQL side: memory a dedicated server would give a reporting query.
POSTGRES_SESSION: tuple[str, ...] = ("SET TimeZone = 'UTC'", "SET work_mem = '256MB'")


class BenchQueryError(MedlakeError, RuntimeError):
    """The benchmark cannot run (no PostgreSQL, bad scale); the message says what to do."""


@dataclass(frozen=True)
class Scale:
    """How much history: `lab_results` rows over `days` days ending at `end`, from `facilities` places."""

    lab_results: int = 20_000_000
    facilities: int = 1000
    days: int = 365
    seed: int = 7
    end: datetime = END

    def __post_init__(self) -> None:
        if self.lab_results < TESTS_PER_ORDER * LAB_RESULTS_PER_ENCOUNTER:
            raise BenchQueryError(
                f"lab_results must be at least {TESTS_PER_ORDER * LAB_RESULTS_PER_ENCOUNTER}"
            )
        if self.facilities < 1 or self.days < 2:
            raise BenchQueryError("facilities must be >= 1 and days >= 2")

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)

    @property
    def encounters(self) -> int:
        return self.lab_results // LAB_RESULTS_PER_ENCOUNTER

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "end": self.end.isoformat()}


# ------------------------------------------------------------------------------------------ random values


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(index: np.ndarray, stream: int, seed: int) -> np.ndarray:
    """A uniform [0, 1) value per index (SplitMix64 of seed, stream and index): a pure function of each."""
    key = np.uint64(((seed * 0x9E3779B97F4A7C15) ^ (stream * 0xD1B54A32D192ED03)) & _MASK)
    with np.errstate(over="ignore"):
        z = _mix(index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _choose(u: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    cdf = np.cumsum(weights) / np.sum(weights)
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(weights) - 1)


def _timestamps(us: np.ndarray) -> pl.Series:
    return pl.Series(us.astype(np.int64)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _us(moment: datetime) -> int:
    return int(moment.timestamp() * _US)


@dataclass(frozen=True)
class Facilities:
    """The generator's facilities as arrays: ids, kinds, volume weights and a flat unit list."""

    ids: list[str]
    kinds: list[str]
    weights: np.ndarray
    unit_names: list[str]
    unit_beds: np.ndarray
    unit_offset: np.ndarray
    unit_count: np.ndarray

    @classmethod
    def make(cls, scale: Scale) -> Facilities:
        facilities = make_facilities(scale.facilities, scale.seed)
        names, beds, offsets, counts = [], [], [], []
        for facility in facilities:
            offsets.append(len(names))
            counts.append(len(facility.units))
            for unit, count in facility.units:
                names.append(unit)
                beds.append(count)
        return cls(
            ids=[facility.id for facility in facilities],
            kinds=[facility.kind.name for facility in facilities],
            weights=np.array([facility.kind.volume for facility in facilities]),
            unit_names=names,
            unit_beds=np.array(beds),
            unit_offset=np.array(offsets),
            unit_count=np.array(counts),
        )

    def pick(self, u: np.ndarray) -> np.ndarray:
        return _choose(u, self.weights)


def _lineage(
    source: str, member: str, facility: pl.Expr, ingested: pl.Expr, record: pl.Expr
) -> list[pl.Expr]:
    """The lineage columns of rows that arrived in hourly archives of their facility."""
    return [
        pl.concat_str(
            ingested.dt.strftime(f"landing/{source}/%Y/%m/%d/"),
            facility,
            ingested.dt.strftime(f"/{source}_%H.zip"),
        ).alias("_archive"),
        pl.lit(member).alias("_member"),
        record.cast(pl.Int64).alias("_record"),
        facility.alias("_facility"),
        ingested.dt.date().alias("_landing_day"),
        ingested.alias("_ingested_at"),
        pl.concat_str(pl.lit(f"{source}-"), ingested.dt.strftime("%Y%m%d-%H")).alias("_batch"),
    ]


# ------------------------------------------------------------------------------------------- lab results


def lab_results_chunk(scale: Scale, facilities: Facilities, start: int, stop: int) -> pl.DataFrame:
    """Rows [start, stop) of `silver.lab_results`: orders of TESTS_PER_ORDER distinct tests, spread evenly
    over the year (result time grows with the row index), one row per key, a few tombstones."""
    seed = scale.seed
    index = np.arange(start, stop, dtype=np.int64)
    order = index // TESTS_PER_ORDER
    orders = -(-scale.lab_results // TESTS_PER_ORDER)
    facility = facilities.pick(uniform(order, 1, seed))
    patient = (uniform(order, 2, seed) * PATIENTS_PER_FACILITY).astype(np.int64)
    span = _us(scale.end) - _us(scale.start)
    order_us = _us(scale.start) + ((order + uniform(order, 3, seed)) * (span / orders)).astype(np.int64)
    test = ((uniform(order, 4, seed) * len(LAB_TESTS)).astype(np.int64) + index % TESTS_PER_ORDER) % len(
        LAB_TESTS
    )
    result_us = np.minimum(order_us + (index % TESTS_PER_ORDER) * 60 * _US, _us(scale.end) - 1)
    low = np.array([lab.low for lab in LAB_TESTS])[test]
    high = np.array([lab.high for lab in LAB_TESTS])[test]
    decimals = np.array([lab.decimals for lab in LAB_TESTS])[test]
    draw = uniform(index, 5, seed)
    flag = np.select([draw < 0.02, draw < 0.09, draw < 0.16], ["", "L", "H"], "N")
    width = high - low
    value = np.where(
        flag == "L", low - width * uniform(index, 6, seed) * 0.5, low + width * uniform(index, 6, seed)
    )
    value = np.where(flag == "H", high + width * uniform(index, 6, seed), value)
    value = np.round(value * 10.0**decimals) / 10.0**decimals
    draw_status = uniform(index, 7, seed)
    status = np.select([draw_status < 0.05, draw_status < 0.08], ["P", "C"], "F")
    frame = pl.DataFrame(
        {
            "facility": facility,
            "patient": patient,
            "order": order,
            "test": test,
            "value": value,
            "decimals": decimals,
            "flag": flag,
            "status": status,
            "deleted": uniform(index, 8, seed) < 0.002,
            "record": index,
        }
    ).with_columns(result_ts=_timestamps(result_us))
    facility_id = pl.col("facility_id")
    ingested = pl.col("result_ts") + pl.duration(minutes=7)
    value_text = (
        pl.when(pl.col("decimals") == 0)
        .then(pl.col("value").round(0).cast(pl.Int64).cast(pl.String))
        .otherwise(pl.col("value").round(3).cast(pl.String))
    )
    rows = frame.with_columns(
        pl.Series(facilities.ids).gather(frame["facility"]).alias("facility_id"),
        pl.Series([lab.code for lab in LAB_TESTS]).gather(frame["test"]).alias("test_code"),
        pl.Series([lab.name for lab in LAB_TESTS]).gather(frame["test"]).alias("test_name"),
        pl.Series([lab.unit for lab in LAB_TESTS]).gather(frame["test"]).alias("unit"),
        pl.Series([f"{lab.low:g}-{lab.high:g}" for lab in LAB_TESTS])
        .gather(frame["test"])
        .alias("reference_range"),
        pl.Series(SENDER_OFFSETS).gather(frame["facility"] % len(SENDER_OFFSETS)).alias("result_ts_offset"),
    ).select(
        facility_id,
        pl.concat_str(facility_id, pl.lit("-"), pl.col("patient").cast(pl.String).str.zfill(7)).alias(
            "patient_id"
        ),
        pl.concat_str(facility_id, pl.lit("-O"), pl.col("order").cast(pl.String).str.zfill(9)).alias(
            "order_id"
        ),
        "test_code",
        "test_name",
        value_text.alias("value"),
        "unit",
        "reference_range",
        pl.when(pl.col("flag") == "").then(None).otherwise(pl.col("flag")).alias("abnormal_flag"),
        pl.col("status").alias("result_status"),
        "result_ts",
        "result_ts_offset",
        *_lineage("lab_results", "results.csv", facility_id, ingested, pl.col("record")),
        pl.col("deleted").alias(DELETED),
    )
    # Clustered like a compacted silver table: a facility's rows together, in time order.
    return rows.sort("facility_id", "result_ts")


# ------------------------------------------------------------------------------- ADT events and encounters


def _encounter_range(scale: Scale, since: datetime, until: datetime) -> tuple[int, int]:
    """Encounters admitted in [since, until) (admit time grows with the encounter index), widened by one."""
    span = (scale.end - scale.start).total_seconds()
    first = math.floor((since - scale.start).total_seconds() / span * scale.encounters) - 1
    last = math.ceil((until - scale.start).total_seconds() / span * scale.encounters) + 1
    return max(first, 0), min(max(last, 0), scale.encounters)


def adt_events_for(scale: Scale, facilities: Facilities, start: int, stop: int) -> pl.DataFrame:
    """Every `silver.adt_events` row of encounters [start, stop) sent before `scale.end`: an A01 admit
    (A04 register where the facility kind does not admit), an A02 transfer halfway through some stays,
    and an A03 discharge when the stay ended; PV1-44 (admit time) on every message."""
    seed = scale.seed
    encounter = np.arange(start, stop, dtype=np.int64)
    facility = facilities.pick(uniform(encounter, 11, seed))
    kinds = np.array(facilities.kinds)[facility]
    patient = (uniform(encounter, 12, seed) * PATIENTS_PER_FACILITY).astype(np.int64)
    span = _us(scale.end) - _us(scale.start)
    admit_us = _us(scale.start) + (
        (encounter + uniform(encounter, 13, seed)) * (span / scale.encounters)
    ).astype(np.int64)
    mean_hours = np.array([MEAN_STAY_HOURS[kind] for kind in kinds])
    stay_hours = np.minimum(
        -np.log1p(-uniform(encounter, 14, seed)) * mean_hours, MAX_STAY.total_seconds() / 3600
    )
    stay_us = (stay_hours * 3600 * _US).astype(np.int64) + 60 * _US
    transfers = np.isin(kinds, ["hospital", "nursing_home"]) & (uniform(encounter, 15, seed) < TRANSFER_SHARE)
    unit_position = (uniform(encounter, 16, seed) * facilities.unit_count[facility]).astype(np.int64)
    first_unit = facilities.unit_offset[facility] + unit_position
    second_unit = facilities.unit_offset[facility] + (unit_position + 1) % facilities.unit_count[facility]
    room = 100 + (uniform(encounter, 17, seed) * 60).astype(np.int64)
    admits = {kind.name: kind.admits for kind in FACILITY_KINDS}
    classes = {kind.name: kind.patient_class for kind in FACILITY_KINDS}
    events = []
    for number, (trigger, at_us, unit, present) in enumerate(
        [
            (
                np.where([admits[kind] for kind in kinds], "A01", "A04"),
                admit_us,
                first_unit,
                np.ones_like(transfers),
            ),
            ("A02", admit_us + stay_us // 2, second_unit, transfers),
            (
                "A03",
                admit_us + stay_us,
                np.where(transfers, second_unit, first_unit),
                np.ones_like(transfers),
            ),
        ]
    ):
        keep = present & (at_us < _us(scale.end))
        events.append(
            pl.DataFrame(
                {
                    "encounter": encounter[keep],
                    "event": np.full(int(keep.sum()), number, dtype=np.int64),
                    "facility": facility[keep],
                    "patient": patient[keep],
                    "trigger_event": np.broadcast_to(trigger, encounter.shape)[keep],
                    "at": np.broadcast_to(at_us, encounter.shape)[keep],
                    "admit": admit_us[keep],
                    "unit": np.broadcast_to(unit, encounter.shape)[keep],
                    "room": room[keep],
                    "patient_class": np.array([classes[kind] for kind in kinds])[keep]
                    if len(kinds)
                    else np.array([], dtype=str),
                }
            )
        )
    frame = pl.concat(events).sort("encounter", "event")
    person = frame["facility"].cast(pl.Int64) * PATIENTS_PER_FACILITY + frame["patient"]
    person_index = person.to_numpy()
    facility_id = pl.col("_facility_id")
    message_ts = pl.col("message_ts")
    offset = pl.Series(SENDER_OFFSETS).gather(frame["facility"] % len(SENDER_OFFSETS))
    born = _us(datetime(1930, 1, 1, tzinfo=UTC)) + (
        uniform(person_index, 21, seed) * 90 * 365.25 * 86400 * _US
    )
    return frame.with_columns(
        pl.Series(facilities.ids).gather(frame["facility"]).alias("_facility_id"),
        _timestamps(frame["at"].to_numpy()).alias("message_ts"),
        _timestamps(frame["admit"].to_numpy()).alias("admit_ts"),
        offset.alias("offset"),
        pl.Series(facilities.unit_names).gather(frame["unit"]).alias("point_of_care"),
        pl.Series(GIVEN_NAMES)
        .gather((uniform(person_index, 22, seed) * len(GIVEN_NAMES)).astype(np.int64))
        .alias("given_name"),
        pl.Series(FAMILY_NAMES)
        .gather((uniform(person_index, 23, seed) * len(FAMILY_NAMES)).astype(np.int64))
        .alias("family_name"),
        pl.Series(SEXES).gather((uniform(person_index, 24, seed) * len(SEXES)).astype(np.int64)).alias("sex"),
        _timestamps(born).dt.date().alias("birth_date"),
    ).select(
        pl.concat_str(
            facility_id,
            pl.lit("-M"),
            pl.col("encounter").cast(pl.String).str.zfill(9),
            pl.col("event").cast(pl.String),
        ).alias("message_control_id"),
        pl.lit("ADT").alias("message_type"),
        "trigger_event",
        message_ts,
        pl.col("offset").alias("message_ts_offset"),
        pl.lit("second").alias("message_ts_precision"),
        facility_id.alias("sending_facility"),
        pl.lit("UNICODE UTF-8").alias("charset"),
        pl.concat_str(facility_id, pl.lit("-"), pl.col("patient").cast(pl.String).str.zfill(7)).alias(
            "patient_id"
        ),
        "family_name",
        "given_name",
        "birth_date",
        pl.lit("day").alias("birth_date_precision"),
        "sex",
        "patient_class",
        "point_of_care",
        pl.col("room").cast(pl.String).alias("room"),
        pl.when(pl.col("encounter") % 2 == 0).then(pl.lit("A")).otherwise(pl.lit("B")).alias("bed"),
        pl.concat_str(facility_id, pl.lit("-V"), pl.col("encounter").cast(pl.String).str.zfill(9)).alias(
            "visit_number"
        ),
        "admit_ts",
        pl.col("offset").alias("admit_ts_offset"),
        pl.lit("second").alias("admit_ts_precision"),
        pl.when(pl.col("trigger_event") == "A03").then(message_ts).alias("discharge_ts"),
        pl.when(pl.col("trigger_event") == "A03").then(pl.col("offset")).alias("discharge_ts_offset"),
        pl.when(pl.col("trigger_event") == "A03").then(pl.lit("second")).alias("discharge_ts_precision"),
        *_lineage(
            "adt_events",
            "messages.hl7",
            facility_id,
            message_ts + pl.duration(minutes=5),
            pl.col("encounter") * 3 + pl.col("event"),
        ),
    )


def encounters_chunk(scale: Scale, facilities: Facilities, start: int, stop: int) -> pl.DataFrame:
    """`silver.encounters` rows of encounters [start, stop): folded from their events by the real fold."""
    events = adt_events_for(scale, facilities, start, stop)
    return derive_encounters(events).with_columns(pl.lit(False).alias(DELETED))


def adt_events_window(scale: Scale, facilities: Facilities, since: datetime, until: datetime) -> pl.DataFrame:
    """The `silver.adt_events` rows whose message time falls in [since, until)."""
    first, last = _encounter_range(scale, since - MAX_STAY - timedelta(days=1), until)
    events = adt_events_for(scale, facilities, first, last)
    return events.filter(pl.col("message_ts").is_between(since, until, closed="left"))


# ---------------------------------------------------------------------------------- census and quarantine


def bed_census(scale: Scale, facilities: Facilities) -> pl.DataFrame:
    """`silver.bed_census`: the current row of every bed (an upsert table), updated in the last 6 hours."""
    unit = np.repeat(np.arange(len(facilities.unit_names)), facilities.unit_beds)
    facility = np.repeat(np.arange(len(facilities.ids)), facilities.unit_count)[unit]
    bed = np.arange(len(unit)) - np.repeat(
        np.cumsum(facilities.unit_beds) - facilities.unit_beds, facilities.unit_beds
    )
    index = np.arange(len(unit), dtype=np.int64)
    seed = scale.seed
    status = np.array(BED_STATUSES)[_choose(uniform(index, 31, seed), BED_STATUS_WEIGHTS)]
    updated_us = _us(scale.end) - 1 - (uniform(index, 32, seed) * 6 * 3600 * _US).astype(np.int64)
    frame = pl.DataFrame({"facility": facility, "unit": unit, "bed": bed, "status": status, "index": index})
    facility_id = pl.col("facility_id")
    patient = (uniform(index, 33, seed) * PATIENTS_PER_FACILITY).astype(np.int64)
    return frame.with_columns(
        pl.Series(facilities.ids).gather(frame["facility"]).alias("facility_id"),
        pl.Series(facilities.unit_names).gather(frame["unit"]).alias("unit_name"),
        _timestamps(updated_us).alias("updated_at"),
        pl.Series(patient).cast(pl.String).str.zfill(7).alias("patient"),
        pl.Series(SENDER_OFFSETS).gather(frame["facility"] % len(SENDER_OFFSETS)).alias("offset"),
    ).select(
        facility_id,
        pl.col("unit_name").alias("unit"),
        pl.concat_str(pl.col("unit_name"), pl.lit("-"), pl.col("bed").cast(pl.String).str.zfill(3)).alias(
            "bed_id"
        ),
        "status",
        pl.when(pl.col("status") == "occupied")
        .then(pl.concat_str(facility_id, pl.lit("-"), pl.col("patient")))
        .alias("patient_id"),
        "updated_at",
        pl.col("offset").alias("updated_at_offset"),
        *_lineage(
            "bed_census",
            "census.csv",
            facility_id,
            pl.col("updated_at") + pl.duration(minutes=2),
            pl.col("index"),
        ),
        pl.Series(uniform(index, 34, seed) < 0.005).alias(DELETED),
    )


def quarantine_rows(
    scale: Scale, facilities: Facilities, source: str, rows: int, rules: Sequence[str]
) -> pl.DataFrame:
    """`quarantine.<source>` rows: rejected records spread over facilities, days and the source's rules."""
    stream = 40 + 5 * sorted([*LEDGER_SOURCES, "patient_documents"]).index(source)
    index = np.arange(rows, dtype=np.int64)
    facility = facilities.pick(uniform(index, stream, scale.seed))
    at_us = _us(scale.start) + (
        uniform(index, stream + 1, scale.seed) * (_us(scale.end) - _us(scale.start))
    ).astype(np.int64)
    rule = (uniform(index, stream + 2, scale.seed) * len(rules)).astype(np.int64)
    frame = pl.DataFrame({"facility": facility, "index": index, "rule_index": rule})
    facility_id = pl.col("facility_id")
    return frame.with_columns(
        pl.Series(facilities.ids).gather(frame["facility"]).alias("facility_id"),
        _timestamps(at_us).alias("at"),
        pl.Series(list(rules)).gather(frame["rule_index"]).alias("rule"),
    ).select(
        pl.concat_str(
            pl.col("at").dt.strftime(f"quarantine/landing/{source}/%Y/%m/%d/"), facility_id, pl.lit(".zip")
        ).alias("_archive"),
        pl.lit("member").alias("_member"),
        pl.col("index").alias("_record"),
        (pl.col("index") + 2).alias("_line"),
        facility_id.alias("_facility"),
        pl.col("at").dt.date().alias("_landing_day"),
        pl.col("at").alias("_ingested_at"),
        pl.concat_str(pl.lit(f"{source}-"), pl.col("at").dt.strftime("%Y%m%d-%H")).alias("_batch"),
        pl.when(pl.col("rule").str.starts_with("check."))
        .then(pl.lit("silver"))
        .otherwise(pl.lit("bronze"))
        .alias("stage"),
        "rule",
        pl.lit("synthetic reject").alias("reason"),
        pl.lit("{}").alias("raw"),
    )


def ledger_rows(scale: Scale, facilities: Facilities, records: dict[str, int]) -> pl.DataFrame:
    """`meta.files` rows: one archive per facility, source and day (a daily extract), mostly loaded, a few
    quarantined or pending; `records` splits each source's total over facilities by their volume."""
    days = np.arange(scale.days, dtype=np.int64)
    facility = np.arange(len(facilities.ids), dtype=np.int64)
    share = facilities.weights / facilities.weights.sum()
    frames = []
    for number, source in enumerate(LEDGER_SOURCES):
        grid_facility = np.repeat(facility, len(days))
        grid_day = np.tile(days, len(facility))
        index = (number * len(facility) + grid_facility) * scale.days + grid_day
        mean = records.get(source, 0) * share[grid_facility] / scale.days
        draw = uniform(index, 60, scale.seed)
        status = np.select([draw < 0.01, draw < 0.015], ["quarantined", "pending"], "loaded")
        seen_us = (
            _us(scale.start)
            + grid_day * 86400 * _US
            + (uniform(index, 61, scale.seed) * 86400 * _US).astype(np.int64)
        )
        frames.append(
            pl.DataFrame(
                {
                    "facility": grid_facility,
                    "source": source,
                    "status": status,
                    "records": np.round(mean * (0.5 + uniform(index, 62, scale.seed))).astype(np.int64),
                    "size": (20_000 + uniform(index, 63, scale.seed) * 1_500_000).astype(np.int64),
                    "index": index,
                }
            ).with_columns(_timestamps(seen_us).alias("first_seen_at"))
        )
    frame = pl.concat(frames)
    facility_id = pl.Series(facilities.ids).gather(frame["facility"])
    loaded = pl.col("status") == "loaded"
    quarantined = pl.col("status") == "quarantined"
    done = pl.col("first_seen_at") + pl.duration(seconds=45)
    return frame.with_columns(facility_id.alias("facility_id")).select(
        pl.lit("file:///bench").alias("store"),
        pl.concat_str(
            pl.col("first_seen_at").dt.strftime("landing/"),
            pl.col("source"),
            pl.col("first_seen_at").dt.strftime("/%Y/%m/%d/"),
            pl.col("facility_id"),
            pl.lit("/"),
            pl.col("source"),
            pl.col("first_seen_at").dt.strftime("_%Y%m%d.zip"),
        ).alias("key"),
        pl.col("index").cast(pl.String).alias("etag"),
        "size",
        "source",
        pl.col("facility_id").alias("facility"),
        pl.col("first_seen_at").dt.date().alias("landing_day"),
        pl.when(pl.col("status") != "pending")
        .then(pl.concat_str(pl.col("source"), pl.col("first_seen_at").dt.strftime("-%Y%m%d")))
        .alias("batch_id"),
        "status",
        pl.when(loaded).then(pl.lit(1)).alias("members"),
        pl.when(loaded).then(pl.col("records")).alias("records"),
        pl.when(loaded).then(pl.lit(0)).alias("rejected_records"),
        pl.when(quarantined).then(pl.lit("archive.bad_password")).alias("rule"),
        pl.when(quarantined).then(pl.lit("wrong or missing archive password")).alias("reason"),
        pl.when(quarantined)
        .then(pl.concat_str(pl.lit("quarantine/"), pl.col("index").cast(pl.String)))
        .alias("quarantine_key"),
        "first_seen_at",
        pl.when(pl.col("status") == "pending")
        .then(pl.col("first_seen_at"))
        .otherwise(done)
        .alias("updated_at"),
        pl.when(loaded).then(done).alias("loaded_at"),
    )


# ------------------------------------------------------------------------------------------ build the lake


def bench_settings(work: Path) -> Settings:
    """A lake of its own under `work` (SQLite catalog and ledger, local warehouse), shipped metadata."""
    return load_settings({"MEDLAKE_HOME": str(work)})


def _append(table, frame: pl.DataFrame) -> None:
    schema = table.schema().as_arrow()
    table.append(frame.select(schema.names).to_arrow().cast(schema))


def _insert_ledger(lake: Lake, rows: pl.DataFrame) -> None:
    """Bulk insert through the DB-API (executemany), in the text form SQLAlchemy gives SQLite timestamps."""
    from medlake_assets.lake.ledger import files

    text = rows.with_columns(
        pl.col(name).dt.strftime("%Y-%m-%d %H:%M:%S%.6f")
        for name in ("first_seen_at", "updated_at", "loaded_at")
    )
    columns = ", ".join(f'"{name}"' for name in text.columns)
    marks = ", ".join("?" for _ in text.columns)
    statement = f"INSERT INTO {files.name} ({columns}) VALUES ({marks})"
    with lake.ledger.engine.begin() as connection:
        for chunk in text.iter_slices(200_000):
            connection.exec_driver_sql(statement, list(chunk.iter_rows()))


def build_history(lake: Lake, scale: Scale, status: Callable[[str], Any]) -> dict[str, int]:
    """Write the year of silver history, the quarantine tables and the ledger; rows written per table."""
    from medlake_assets.silver.quality.gate import build_schema, rules

    facilities = Facilities.make(scale)
    catalog, sources = lake.catalog, lake.sources
    catalog.create_namespace_if_not_exists("silver")
    counts: dict[str, int] = {}

    def silver(name: str):
        spec = sources[name]
        return ensure_table(catalog, f"silver.{name}", silver_schema(spec), spec.write.partition_by)

    table = silver("lab_results")
    counts["silver.lab_results"] = 0
    for start in range(0, scale.lab_results, CHUNK_ROWS):
        with status(f"silver.lab_results: rows {start:,} of {scale.lab_results:,}"):
            chunk = lab_results_chunk(scale, facilities, start, min(start + CHUNK_ROWS, scale.lab_results))
            _append(table, chunk)
            counts["silver.lab_results"] += chunk.height

    table = silver("adt_events")
    counts["silver.adt_events"] = 0
    since = scale.start
    while since < scale.end:
        until = min(since + EVENT_WINDOW, scale.end)
        with status(f"silver.adt_events: {since:%Y-%m-%d} to {until:%Y-%m-%d}"):
            chunk = adt_events_window(scale, facilities, since, until)
            _append(table, chunk.sort("_landing_day", "_facility", "message_ts"))
            counts["silver.adt_events"] += chunk.height
        since = until

    counts[ENCOUNTERS] = 0
    table = None
    for start in range(0, scale.encounters, CHUNK_ENCOUNTERS):
        with status(f"{ENCOUNTERS}: {start:,} of {scale.encounters:,}"):
            chunk = encounters_chunk(
                scale, facilities, start, min(start + CHUNK_ENCOUNTERS, scale.encounters)
            )
            if table is None:
                table = ensure_table(catalog, ENCOUNTERS, chunk.to_arrow().schema, ENCOUNTERS_PARTITION_BY)
            _append(table, chunk.sort("facility", "admit_ts"))
            counts[ENCOUNTERS] += chunk.height

    with status("silver.bed_census"):
        census = bed_census(scale, facilities)
        _append(silver("bed_census"), census)
        counts["silver.bed_census"] = census.height

    with status("quarantine tables"):
        loaded = {name.split(".")[1]: rows for name, rows in counts.items() if name != ENCOUNTERS}
        for name, spec in sources.items():
            codes = [code for code, rule in rules(build_schema(spec)).items() if rule.severity == "error"]
            rows = quarantine_rows(
                scale, facilities, name, max(1, round(loaded.get(name, 100_000) * QUARANTINE_SHARE)), codes
            )
            _append(quarantine_table(catalog, spec), rows)
            counts[f"quarantine.{name}"] = rows.height

    with status("meta.files (the ledger)"):
        ledger = ledger_rows(scale, facilities, loaded)
        _insert_ledger(lake, ledger)
        counts["meta.files"] = ledger.height
    return counts


# ---------------------------------------------------------------------------------------------- PostgreSQL


def postgres_conninfo(url: str, database: str) -> str:
    """A libpq URI for `database` on the server of `url` (a SQLAlchemy or libpq URL)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


def ensure_database(url: str, database: str) -> str:
    """Create `database` on the server of `url` if absent; its libpq URI."""
    import psycopg

    with psycopg.connect(postgres_conninfo(url, _url_database(url)), autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{database}"')
    return postgres_conninfo(url, database)


def _url_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).database or "postgres"


def _loaded_scale(conninfo: str) -> dict | None:
    import psycopg

    with psycopg.connect(conninfo) as connection:
        if connection.execute("SELECT to_regclass(%s)", [f"public.{MARKER}"]).fetchone()[0] is None:
            return None
        row = connection.execute(f"SELECT scale FROM public.{MARKER}").fetchone()
        return json.loads(row[0]) if row else None


def load_postgres(lake: Lake, conninfo: str, scale: Scale, status: Callable[[str], Any]) -> None:
    """The lake's silver, quarantine and ledger rows into PostgreSQL with the same schema and table names,
    then primary keys, indexes and VACUUM ANALYZE."""
    import psycopg

    from medlake_assets.lake.ledger import files
    from medlake_assets.serving.sql import connect

    with psycopg.connect(conninfo, autocommit=True) as pg:
        pg.execute(f"DROP TABLE IF EXISTS public.{MARKER}")
        for schema in SCHEMAS:
            pg.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            pg.execute(f"CREATE SCHEMA {schema}")
    _postgres_ledger(conninfo)

    con = connect(lake)
    con.execute(f"ATTACH '{conninfo}' AS pg (TYPE postgres)")
    for (name,) in con.execute(
        "SELECT schema_name || '.' || view_name FROM duckdb_views() "
        "WHERE schema_name IN ('silver', 'quarantine') AND NOT internal ORDER BY 1"
    ).fetchall():
        with status(f"PostgreSQL: copying {name}"):
            con.execute(f"CREATE TABLE pg.{name} AS SELECT * FROM {name}")
    with status("PostgreSQL: copying meta.files"):
        columns = [column.name for column in files.columns]
        timestamps = {"first_seen_at", "updated_at", "loaded_at"}
        select = ", ".join(f"timezone('UTC', {c})" if c in timestamps else c for c in columns)
        con.execute(
            f"INSERT INTO pg.meta.{files.name} ({', '.join(columns)}) SELECT {select} FROM meta.files"
        )
    con.close()
    with psycopg.connect(conninfo, autocommit=True) as pg:
        pg.execute(f"CREATE VIEW meta.files AS SELECT * FROM meta.{files.name}")
        for statement in POSTGRES_INDEXES:
            with status(f"PostgreSQL: {statement}"):
                pg.execute(statement)
        with status("PostgreSQL: VACUUM ANALYZE"):
            pg.execute("VACUUM ANALYZE")
        pg.execute(f"CREATE TABLE public.{MARKER} (scale text)")
        pg.execute(f"INSERT INTO public.{MARKER} VALUES (%s)", [json.dumps(scale.describe(), sort_keys=True)])


def _postgres_ledger(conninfo: str) -> None:
    """The ledger's own PostgreSQL tables (types, constraints and indexes of production) in schema meta,
    created where missing."""
    from sqlalchemy.engine import make_url

    from medlake_assets.lake.ledger import Ledger

    url = make_url(conninfo).set(drivername="postgresql+psycopg2")
    ledger = Ledger(
        url.update_query_dict({"options": "-csearch_path=meta"}).render_as_string(hide_password=False)
    )
    ledger.engine.dispose()


def postgres_meta_views(pg: Any, conninfo: str, lake: Lake, as_of: datetime) -> None:
    """The other `meta.*` views the reports read, over the ledger tables in schema meta: `meta.processed`,
    `meta.held`, and `meta.freshness` (its DuckDB query transpiled, clocked at `as_of`). Made at every run,
    so a copy loaded by an earlier version gets them too."""
    from medlake_assets.lake.ledger import held, processed
    from medlake_assets.silver.quality.freshness import freshness_query

    _postgres_ledger(conninfo)
    pg.execute(f"CREATE OR REPLACE VIEW meta.processed AS SELECT * FROM meta.{processed.name}")
    pg.execute(f"CREATE OR REPLACE VIEW meta.held AS SELECT * FROM meta.{held.name}")
    pg.execute(
        f"CREATE OR REPLACE VIEW meta.freshness AS {to_postgres(freshness_query(lake.sources), as_of)}"
    )


# ------------------------------------------------------------------------------------------------ queries


@dataclass(frozen=True)
class BenchQuery:
    name: str
    kind: str  # "report" (a shipped report's SQL, unchanged) or "ad hoc"
    sql: str  # DuckDB dialect, as a user writes it for medlake
    target: str | None = None


def _timestamp(moment: datetime) -> str:
    return f"TIMESTAMPTZ '{moment.astimezone(UTC).isoformat(sep=' ')}'"


def lookup_patient(scale: Scale, facilities: Facilities) -> tuple[str, str]:
    """The facility and patient of the first lab result: the subject of the point lookup."""
    first = lab_results_chunk(scale, facilities, 0, TESTS_PER_ORDER).filter(pl.col("_record") == 0)
    return first["facility_id"][0], first["patient_id"][0]


def bench_queries(settings: Settings, scale: Scale, reports_dir: Path | None = None) -> list[BenchQuery]:
    """The shipped reports, then the ad-hoc queries: a patient's year, a facility's last 24 hours, and a
    full-year aggregate."""
    facilities = Facilities.make(scale)
    facility, patient = lookup_patient(scale, facilities)
    busiest = facilities.ids[int(np.argmax(facilities.weights))]
    queries = [
        BenchQuery(report.name, "report", report.sql, f"ratio >= {TARGET_REPORT_RATIO:g}")
        for report in load_reports(reports_dir or settings.reports_dir)
    ]
    queries += [
        BenchQuery(
            "patient_lookup",
            "ad hoc",
            f"SELECT * FROM silver.lab_results WHERE facility_id = '{facility}' AND patient_id = '{patient}' "
            "AND NOT _deleted ORDER BY result_ts, order_id, test_code",
        ),
        BenchQuery(
            "facility_last_24h",
            "ad hoc",
            f"SELECT * FROM silver.lab_results WHERE facility_id = '{busiest}' "
            f"AND result_ts >= {_timestamp(scale.end - timedelta(hours=24))} AND NOT _deleted "
            "ORDER BY result_ts, order_id, test_code",
            f"medlake < {TARGET_LAST_24H_SECONDS:g} s",
        ),
        BenchQuery(
            "full_year_aggregate",
            "ad hoc",
            "SELECT date_trunc('month', result_ts) AS month, test_code, count(*) AS results, "
            "count(*) FILTER (WHERE abnormal_flag IS NOT NULL AND abnormal_flag <> 'N') AS abnormal, "
            "count(DISTINCT facility_id) AS facilities FROM silver.lab_results "
            f"WHERE NOT _deleted AND result_ts >= {_timestamp(scale.start)} "
            f"AND result_ts < {_timestamp(scale.end)} "
            "GROUP BY ALL ORDER BY month, test_code",
        ),
    ]
    return queries


def _is_getvariable(node: exp.Expression) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.this).lower() == "getvariable"


def _map_to_json_object(node: exp.Expression) -> exp.Expression:
    """DuckDB's `map(list(k ORDER BY o), list(v ORDER BY o))` as `json_object_agg(k, v ORDER BY o)`."""
    if not isinstance(node, exp.Map):
        return node
    keys, values = node.args.get("keys"), node.args.get("values")
    if not (isinstance(keys, exp.ArrayAgg) and isinstance(values, exp.ArrayAgg)):
        return node
    key, value = keys.this, values.this
    order = ""
    if isinstance(key, exp.Order):
        order = " ORDER BY " + ", ".join(ordered.sql("postgres") for ordered in key.expressions)
        key, value = key.this, value.this if isinstance(value, exp.Order) else value
    return sqlglot.parse_one(
        f"json_object_agg({key.sql('postgres')}, {value.sql('postgres')}{order})", read="postgres"
    )


def to_postgres(sql: str, as_of: datetime) -> str:
    """DuckDB SQL as PostgreSQL: sqlglot's transpiler, plus what it leaves DuckDB-only: `getvariable('as_of')`
    becomes the run's timestamp, `GROUP BY ALL` the positions of the non-aggregate columns, and a map of two
    ordered lists a `json_object_agg`."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    moment = exp.cast(
        exp.Literal.string(as_of.astimezone(UTC).isoformat()), exp.DataType.build("TIMESTAMPTZ")
    )
    tree = tree.transform(lambda node: moment.copy() if _is_getvariable(node) else node)
    tree = tree.transform(_map_to_json_object)
    for select in tree.find_all(exp.Select):
        group = select.args.get("group")
        if group is not None and group.args.get("all"):
            positions = [
                exp.Literal.number(position)
                for position, projection in enumerate(select.expressions, 1)
                if not projection.find(exp.AggFunc)
            ]
            select.set("group", exp.Group(expressions=positions))
    return tree.sql(dialect="postgres")


# ----------------------------------------------------------------------------------------------- compare


def _normal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        # Naive timestamps are UTC by medlake's convention (the SQLite ledger keeps them without offset).
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.dumps(json.loads(value), sort_keys=True)
        except ValueError:
            return value
    return value


def _sort_key(row: tuple) -> tuple:
    return tuple((value is None, f"{value:.3f}" if isinstance(value, float) else str(value)) for value in row)


def normalize_rows(rows: Iterable[Sequence[Any]]) -> list[tuple]:
    """Rows as both engines can agree on them (numbers as float, timestamps aware in UTC, JSON text
    re-encoded), sorted."""
    return sorted((tuple(_normal(value) for value in row) for row in rows), key=_sort_key)


def _decimals(number: float) -> int:
    text = repr(number)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def _same(a: Any, b: Any) -> bool:
    numbers = (float, int)
    if isinstance(a, numbers) and isinstance(b, numbers) and (isinstance(a, float) or isinstance(b, float)):
        # Within one unit of the last printed decimal: the engines round halves differently.
        places = min(max(_decimals(float(a)), _decimals(float(b))), 6)
        return abs(float(a) - float(b)) <= 10.0**-places + 1e-9
    return a == b


def first_difference(columns: Sequence[str], medlake: list[tuple], postgres: list[tuple]) -> str | None:
    """Where two normalized results differ, by row number and column name (never a value); None if equal."""
    if len(medlake) != len(postgres):
        return f"{len(medlake):,} rows on medlake, {len(postgres):,} on PostgreSQL"
    for number, (left, right) in enumerate(zip(medlake, postgres, strict=True)):
        if len(left) != len(right):
            return f"{len(left)} columns on medlake, {len(right)} on PostgreSQL"
        for name, a, b in zip(columns, left, right, strict=True):
            if not _same(a, b):
                return f"sorted row {number + 1}, column {name!r} differs"
    return None


def arrow_rows(table: pa.Table) -> list[tuple]:
    return (
        list(zip(*(column.to_pylist() for column in table.columns), strict=True)) if table.num_columns else []
    )


# ------------------------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class QueryTiming:
    name: str
    kind: str
    rows: int
    medlake_seconds: float
    postgres_seconds: float
    difference: str | None  # None: both engines returned the same rows
    target: str | None

    @property
    def ratio(self) -> float:
        return self.postgres_seconds / self.medlake_seconds

    @property
    def target_met(self) -> bool | None:
        if self.kind == "report":
            return self.ratio >= TARGET_REPORT_RATIO
        if self.name == "facility_last_24h":
            return self.medlake_seconds < TARGET_LAST_24H_SECONDS
        return None


@dataclass
class QueryBenchmark:
    scale: Scale
    counts: dict[str, int]
    lake_bytes: int
    postgres_bytes: int
    build_seconds: float | None  # None: the lake of an earlier run was reused
    load_seconds: float | None
    repeats: int
    timings: list[QueryTiming] = field(default_factory=list)

    @property
    def mismatches(self) -> list[QueryTiming]:
        return [timing for timing in self.timings if timing.difference is not None]

    def __rich__(self) -> Group:
        sizes = RichTable(title="medlake bench query: data", show_header=True)
        sizes.add_column("measure")
        sizes.add_column("value", justify="right")
        sizes.add_row(
            "history",
            f"{self.scale.days} days to {self.scale.end:%Y-%m-%d}, {self.scale.facilities:,} facilities",
        )
        for name, rows in self.counts.items():
            sizes.add_row(name, f"{rows:,} rows")
        sizes.add_row("lake on disk (Parquet + metadata)", f"{self.lake_bytes / 2**20:,.0f} MB")
        sizes.add_row("PostgreSQL database (tables + indexes)", f"{self.postgres_bytes / 2**20:,.0f} MB")
        if self.build_seconds is not None:
            sizes.add_row("build the lake", f"{self.build_seconds:,.1f} s")
        if self.load_seconds is not None:
            sizes.add_row("load PostgreSQL (copy, indexes, VACUUM ANALYZE)", f"{self.load_seconds:,.1f} s")
        table = RichTable(
            title=f"warm timings: median of {self.repeats} runs after one warm-up", show_header=True
        )
        for column, justify in [
            ("query", "left"),
            ("kind", "left"),
            ("rows", "right"),
            ("medlake s", "right"),
            ("PostgreSQL s", "right"),
            ("PostgreSQL / medlake", "right"),
            ("same result", "left"),
            ("target", "left"),
            ("met", "left"),
        ]:
            table.add_column(column, justify=justify)
        for timing in self.timings:
            met = timing.target_met
            verdict = "" if met is None else ("met" if met else "not met")
            table.add_row(
                timing.name,
                timing.kind,
                f"{timing.rows:,}",
                f"{timing.medlake_seconds:.4f}",
                f"{timing.postgres_seconds:.4f}",
                f"{timing.ratio:.2f}x" if timing.ratio < 1 else f"{timing.ratio:.1f}x",
                Text("yes", style="green") if timing.difference is None else Text("NO", style="bold red"),
                timing.target or "",
                Text(verdict, style="green" if met else "red"),
            )
        parts: list[Any] = [sizes, table]
        for timing in self.mismatches:
            parts.append(Text(f"MISMATCH in {timing.name}: {timing.difference}", style="bold red"))
        return Group(*parts)


def _median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """One warm-up, then the median of `repeats` timed runs; the last run's result."""
    result = run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def _bytes_under(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def run_query_bench(
    scale: Scale | None = None,
    postgres_url: str | None = None,
    work_dir: Path | None = None,
    *,
    database: str = BENCH_DATABASE,
    repeats: int = 3,
    reports_dir: Path | None = None,
    console=None,
) -> QueryBenchmark:
    """Build (or reuse) the history in `work_dir` and in PostgreSQL database `database`, time every query
    on both engines and compare their results. `reports_dir` (default: the shipped reports) lets a
    candidate version of a report's SQL be measured before it ships."""
    import psycopg

    from medlake_assets.serving.sql import connect

    scale = scale or Scale()
    if not postgres_url:
        raise BenchQueryError(
            "no PostgreSQL to compare with: pass --postgres-url or set MEDLAKE_TEST_POSTGRES_URL "
            "(scripts/start_postgres.sh starts one and prints its URL)"
        )

    def status(message: str):
        return console.status(message) if console is not None else _Quiet()

    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    lake = Lake(bench_settings(work))
    described = json.dumps(scale.describe(), sort_keys=True)
    marker = work / f"{MARKER}.json"
    build_seconds = load_seconds = None
    if marker.exists() and json.loads(marker.read_text())["scale"] == described:
        counts = json.loads(marker.read_text())["counts"]
    else:
        if any(work.iterdir()):
            raise BenchQueryError(
                f"{work} holds something other than this scale's history: use an empty folder"
            )
        started = time.perf_counter()
        counts = build_history(lake, scale, status)
        build_seconds = time.perf_counter() - started
        marker.write_text(json.dumps({"scale": described, "counts": counts}))
    conninfo = ensure_database(postgres_url, database)
    if build_seconds is not None or _loaded_scale(conninfo) != scale.describe():
        started = time.perf_counter()
        load_postgres(lake, conninfo, scale, status)
        load_seconds = time.perf_counter() - started

    con = connect(lake)
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET VARIABLE as_of = ?::TIMESTAMPTZ", [scale.end])
    timings = []
    with psycopg.connect(conninfo, autocommit=True) as pg:
        for statement in POSTGRES_SESSION:
            pg.execute(statement)
        postgres_meta_views(pg, conninfo, lake, scale.end)
        postgres_bytes = pg.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        for query in bench_queries(lake.settings, scale, reports_dir):
            postgres_sql = to_postgres(query.sql, scale.end)
            with status(f"{query.name} on medlake"):
                medlake_seconds, arrow = _median_seconds(
                    lambda sql=query.sql: con.execute(sql).to_arrow_table(), repeats
                )
            with status(f"{query.name} on PostgreSQL"):
                postgres_seconds, rows = _median_seconds(
                    lambda sql=postgres_sql: pg.execute(sql).fetchall(), repeats
                )
            difference = first_difference(
                arrow.column_names, normalize_rows(arrow_rows(arrow)), normalize_rows(rows)
            )
            timings.append(
                QueryTiming(
                    name=query.name,
                    kind=query.kind,
                    rows=arrow.num_rows,
                    medlake_seconds=medlake_seconds,
                    postgres_seconds=postgres_seconds,
                    difference=difference,
                    target=query.target,
                )
            )
    con.close()
    return QueryBenchmark(
        scale=scale,
        counts=counts,
        lake_bytes=_bytes_under(work / "warehouse"),
        postgres_bytes=int(postgres_bytes),
        build_seconds=build_seconds,
        load_seconds=load_seconds,
        repeats=repeats,
        timings=timings,
    )


class _Quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
