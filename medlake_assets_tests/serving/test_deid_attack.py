"""Attacks on the date shift of `silver_deid.*`: can someone holding only the de-identified views recover
each patient's date offset (and so every real date of the patient)?

The attacker reads every `silver_deid` view (all facilities) and knows what is public: offsets are whole
days, uniform in -180..180 (docs/security.md); the generator's id schemes (MSH-10 is facility, archive
number, member and a 6-digit message ordinal in time order; a lab order id is `ORD`, archive number,
member and a 5-digit order number); and which real days carry data (gold.daily_admissions_discharges
publishes counts per real day to de-identified logins).

The lake is `medlake generate` output for eight landing days 45 days apart (two facilities, so each has data
on most days), loaded with the pipeline's own bronze, silver and encounters loads (`load_landed`). It
spans a year on purpose: a lake covering less than the shift range gives the offsets away by
itself (every real date lies in a short known window; see docs/security.md), whatever the identifiers do.

Each attack runs twice: on the views the metadata declares, and on a control whose metadata keeps the
per-message and per-order identifiers raw (what main did), which must succeed, so the attack is known to
work. "Chance" is the same attack without identifiers: each patient's rows alone against the known days.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Iterable, Mapping
from datetime import date, timedelta

import duckdb
import pytest

from medlake_assets.serving.deid import DEID_KEY_ENV, register_deid_views, shift_days, table_treatments, token
from medlake_assets.serving.sql import connect
from medlake_assets.spec import SourceSpec
from medlake_assets_tests.lake_helpers import load_landed, local_settings, open_lake
from medlake_dev.generate import write_feeds

KEY = "attack-test-synthetic-key-0123456789abcdef"
DAYS = [date(2025, 3, 3) + timedelta(days=45 * number) for number in range(8)]
GENERATION = {"facilities": 2, "archives": 6, "bad_rate": 0.0, "size_scale": 0.1}
# What main exposed raw: unique per message / order / document, and counters of the sender.
IDENTIFIERS = {
    "adt_events": ["message_control_id"],
    "lab_results": ["order_id"],
    "patient_documents": ["document_id"],
}
# (view, facility column, identifier, shifted time, characters of the identifier after the archive part)
SEQUENCES = [
    ("adt_events", "_facility", "message_control_id", "message_ts", 6),
    ("lab_results", "facility_id", "order_id", "result_ts", 5),
]

Row = tuple[str, str, str, float]  # (facility, identifier, patient token, shifted time in days)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    home = tmp_path_factory.mktemp("deid_attack") / "home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDLAKE_ARCHIVE_PASSWORD", "synthetic-attack-archive-password")
        env.setenv("MEDLAKE_INGEST_WORKERS", "1")
        for seed, day in enumerate(DAYS):
            write_feeds(home, seed=seed, day=day, **GENERATION)
        opened = open_lake(local_settings(home))
        assert load_landed(opened) >= 2 * len(DAYS)
    return opened


def _kept(sources: Mapping[str, SourceSpec]) -> dict[str, SourceSpec]:
    """The sources with the identifiers of `IDENTIFIERS` declared `keep`: main's behaviour."""
    kept = {}
    for name, spec in sources.items():
        names = IDENTIFIERS.get(name, [])
        columns = [
            column.model_copy(update={"deid": "keep"}) if column.name in names else column
            for column in spec.columns
        ]
        kept[name] = spec.model_copy(update={"columns": columns})
    return kept


@pytest.fixture(scope="module")
def views(lake):
    """{"declared": the views as the metadata declares them, "kept": the control}."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(DEID_KEY_ENV, KEY)
        declared = connect(lake)
        env.delenv(DEID_KEY_ENV)
        control = connect(lake)  # no views yet: built below from the control's metadata
    register_deid_views(control, _kept(lake.sources), KEY.encode())
    return {"declared": declared, "kept": control}


@pytest.fixture(scope="module")
def truth(views) -> dict[str, int]:
    """Every patient's token -> its real offset in days (what the attacker tries to learn)."""
    con = views["declared"]
    patients = con.sql(
        "SELECT patient_id FROM silver.adt_events UNION SELECT patient_id FROM silver.lab_results "
        "UNION SELECT patient_id FROM silver.patient_documents UNION SELECT patient_id FROM silver.bed_census"
    ).fetchall()
    key = KEY.encode()
    return {token(key, patient): shift_days(key, patient) for (patient,) in patients if patient}


@pytest.fixture(scope="module")
def known_days(views) -> list[int]:
    """Real days that carry data, as days since the epoch (public through gold)."""
    rows = (
        views["declared"]
        .sql(
            "SELECT DISTINCT floor(epoch(message_ts) / 86400)::INTEGER FROM silver.adt_events UNION "
            "SELECT DISTINCT floor(epoch(result_ts) / 86400)::INTEGER FROM silver.lab_results"
        )
        .fetchall()
    )
    return sorted(day for (day,) in rows)


def _rows(con: duckdb.DuckDBPyConnection, view: str, facility: str, identifier: str, time: str) -> list[Row]:
    """The view's rows whose identifier belongs to one patient: the generator restarts its counters each
    day, so an id seen with two patients is two messages of different days, which the attacker leaves out."""
    return con.sql(
        f"""
        SELECT {facility}, CAST({identifier} AS VARCHAR), patient_id, epoch({time}) / 86400
        FROM silver_deid.{view}
        QUALIFY count(DISTINCT patient_id) OVER (PARTITION BY {facility}, {identifier}) = 1
        """
    ).fetchall()


def estimate_offsets(groups: Iterable[list[tuple[str, float]]], known_days: list[int]) -> dict[str, int]:
    """Each group's rows happened within about a day (an archive's messages, one patient's visit): the real
    days it can come from are those within 180 days of every shifted time; the middle one is the guess, and
    each patient's offset is its shifted time minus that day."""
    offsets: dict[str, int] = {}
    for rows in groups:
        times = [shifted for _, shifted in rows]
        low, high = max(times) - 181, min(times) + 180
        feasible = [day for day in known_days if low < day <= high]
        day = feasible[len(feasible) // 2] if feasible else round((low + high) / 2)
        guesses: dict[str, list[int]] = {}
        for patient, shifted in rows:
            guesses.setdefault(patient, []).append(math.floor(shifted - day))
        for patient, values in guesses.items():
            offsets.setdefault(patient, statistics.median_low(values))
    return offsets


def recovered(offsets: Mapping[str, int], truth: Mapping[str, int]) -> float:
    """Share of the patients whose offset is right to within a day."""
    assert offsets
    return sum(abs(guess - truth[patient]) <= 1 for patient, guess in offsets.items()) / len(offsets)


def archive_attack(rows: list[Row], suffix: int, known_days: list[int]) -> dict[str, int]:
    """Rows grouped by the archive part of the identifier (all but its last `suffix` characters)."""
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for facility, identifier, patient, shifted in rows:
        groups.setdefault((facility, identifier[:-suffix]), []).append((patient, shifted))
    return estimate_offsets(groups.values(), known_days)


def patient_baseline(rows: list[Row], known_days: list[int]) -> dict[str, int]:
    """The same estimate from each patient's own rows: what the attacker has without identifiers."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for _, _, patient, shifted in rows:
        groups.setdefault(patient, []).append((patient, shifted))
    return estimate_offsets(groups.values(), known_days)


def neighbour_success(ordered: list[Row], truth: Mapping[str, int]) -> float:
    """For consecutive rows of two patients, guess the difference of their offsets as the difference of
    their shifted times (right if the two really happened close together); the share right to a day."""
    pairs = [(a, b) for a, b in itertools.pairwise(ordered) if a[2] != b[2]]
    assert len(pairs) > 100
    right = sum(abs(round(b[3] - a[3]) - (truth[b[2]] - truth[a[2]])) <= 1 for a, b in pairs)
    return right / len(pairs)


@pytest.mark.parametrize(("view", "facility", "identifier", "time", "suffix"), SEQUENCES)
def test_grouping_by_archive_recovers_no_offset_beyond_chance(
    views, truth, known_days, view, facility, identifier, time, suffix
):
    kept = _rows(views["kept"], view, facility, identifier, time)
    declared = _rows(views["declared"], view, facility, identifier, time)
    chance = recovered(patient_baseline(declared, known_days), truth)
    control = recovered(archive_attack(kept, suffix, known_days), truth)
    # The attack works where the identifier is raw: most offsets to within a day.
    assert control >= 0.5 and control >= chance + 0.25, (control, chance)
    attacked = recovered(archive_attack(declared, suffix, known_days), truth)
    assert attacked <= chance + 0.02, (attacked, chance)


@pytest.mark.parametrize(("view", "facility", "identifier", "time", "suffix"), SEQUENCES)
def test_ordering_by_identifier_gives_no_relative_offset_beyond_chance(
    views, truth, view, facility, identifier, time, suffix
):
    kept = sorted(_rows(views["kept"], view, facility, identifier, time))
    declared = sorted(_rows(views["declared"], view, facility, identifier, time))
    # Chance: neighbours in a random order within each facility (facility is kept, and in this small lake
    # a facility's rows fall on a few of the eight days, which alone makes some neighbours close in time).
    rng = random.Random(7)
    chance = neighbour_success(sorted(declared, key=lambda row: (row[0], rng.random())), truth)
    control = neighbour_success(kept, truth)
    assert control >= 0.6 and control >= chance + 0.4, (control, chance)
    attacked = neighbour_success(declared, truth)
    assert attacked <= chance + 0.03, (attacked, chance)


@pytest.mark.parametrize(
    ("view", "identifier", "time", "facility"),
    [
        ("adt_events", "message_control_id", "message_ts", "_facility"),
        ("lab_results", "order_id", "result_ts", "facility_id"),
        ("patient_documents", "document_id", "effective_ts", "_facility"),
    ],
)
def test_joining_the_senders_own_ids_matches_nothing(views, truth, view, identifier, time, facility):
    """A sender (the facility with the most rows) keeps its own messages: real ids and real times. Joined on
    the identifier they give each of its patients' exact offset and token, so every other row of the
    patient in every view. Ids a sender reuses (the generator restarts its counters each day) are
    ambiguous, and the attacker leaves them out."""

    def join(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        matched = con.sql(
            f"""
            WITH sender AS (
                SELECT CAST({identifier} AS VARCHAR) AS id, any_value(epoch({time})) AS real_time
                FROM silver.{view}
                WHERE {facility} = (SELECT mode({facility}) FROM silver.{view})
                GROUP BY ALL HAVING count(DISTINCT {time}) = 1
            ),
            published AS (
                SELECT CAST({identifier} AS VARCHAR) AS id, any_value(patient_id) AS patient_id,
                       any_value(epoch({time})) AS shifted_time
                FROM silver_deid.{view} GROUP BY ALL HAVING count(DISTINCT patient_id) = 1
            )
            SELECT patient_id, round((shifted_time - real_time) / 86400)::INTEGER
            FROM sender JOIN published USING (id)
            """
        ).fetchall()
        return dict(matched)

    control = join(views["kept"])
    assert len(control) >= 5
    assert all(truth[patient] == offset for patient, offset in control.items())
    assert join(views["declared"]) == {}


def test_rows_without_a_patient_give_no_real_clock(views):
    """A row with no patient has no offset; had it kept its real time beside shifted ones (free beds next
    to occupied beds of the same census), each facility's real clock would give every occupied bed's
    offset. And bed census is a current-state table: its real times are all about now, so its shifted
    times would give the offsets away even without that clock."""
    con = views["declared"]
    for (view,) in con.sql(
        "SELECT DISTINCT table_name FROM duckdb_columns() WHERE schema_name = 'silver_deid'"
    ).fetchall():
        columns = con.sql(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'silver_deid' "
            "AND table_name = ?",
            params=[view],
        ).fetchall()
        dates = [name for name, kind in columns if kind == "DATE" or kind.startswith("TIMESTAMP")]
        if not dates:
            continue
        assert "patient_id" in {name for name, _ in columns}, view
        for column in dates:
            (real,) = con.sql(
                f"SELECT count(*) FROM silver_deid.{view} WHERE patient_id IS NULL AND {column} IS NOT NULL"
            ).fetchone()
            assert real == 0, (view, column)
    bed_columns = con.sql("SELECT * FROM silver_deid.bed_census LIMIT 0").columns
    assert "updated_at" not in bed_columns
    (free,) = con.sql("SELECT count(*) FROM silver.bed_census WHERE patient_id IS NULL").fetchone()
    assert free > 0  # the generated census has free beds, so the clock would exist


# Kept columns with many distinct values by design, and why they carry no time: the bed census key.
MANY_VALUES_KEPT = {("bed_census", "bed_id"): "a bed (a place); the view has no time of its own"}


def test_no_kept_column_has_a_value_per_message_or_order(views, lake):
    """A kept column with more distinct values than a tenth of its view's rows is likely an identifier in
    disguise (a message or order counter, a timestamp, a free-text reference): it must be tokenized or
    dropped, or be explained above. Clinical values (lab results) stay well under that."""
    con = views["declared"]
    unique = set()
    for view, treatments in table_treatments(lake.sources).items():
        kept = [name for name, treatment in treatments.items() if treatment == "keep"]
        present = [
            name for name in kept if name in con.sql(f"SELECT * FROM silver_deid.{view} LIMIT 0").columns
        ]
        (rows,) = con.sql(f"SELECT count(*) FROM silver_deid.{view}").fetchone()
        assert rows >= 100, view
        for name in present:
            (distinct,) = con.sql(f'SELECT count(DISTINCT "{name}") FROM silver_deid.{view}').fetchone()
            if distinct > rows / 10:
                unique.add((view, name))
    assert unique == set(MANY_VALUES_KEPT)


def test_a_lake_of_one_day_gives_the_offsets_away_whatever_the_ids(tmp_path, monkeypatch):
    """A limit, pinned so docs/security.md stays true: when every real date lies in one known day, each
    patient's offset is its shifted time minus that day, with no identifier at all. Date shifting protects
    only data spanning much more than the shift range."""
    home = tmp_path / "home"
    monkeypatch.setenv("MEDLAKE_ARCHIVE_PASSWORD", "synthetic-attack-archive-password")
    monkeypatch.setenv("MEDLAKE_INGEST_WORKERS", "1")
    write_feeds(home, seed=3, day=DAYS[0], **{**GENERATION, "archives": 8})
    lake = open_lake(local_settings(home))
    load_landed(lake)
    monkeypatch.setenv(DEID_KEY_ENV, KEY)
    con = connect(lake)
    key = KEY.encode()
    truth = {
        token(key, patient): shift_days(key, patient)
        for (patient,) in con.sql("SELECT DISTINCT patient_id FROM silver.adt_events").fetchall()
    }
    rows = con.sql("SELECT patient_id, epoch(message_ts) / 86400 FROM silver_deid.adt_events").fetchall()
    assert len(truth) >= 20
    # One group, the whole view; the attacker does not even need the day: the 180-day bound finds it.
    assert recovered(estimate_offsets([rows], known_days=[]), truth) >= 0.9
