"""`silver_deid.*`: de-identified DuckDB views over every silver table, for ML and broad analytics.

What each view does with a column is declared in `metadata/sources/*.yaml` (`deid:` on each column,
validated by `spec.models.ColumnSpec`), never guessed from its name:
- `token`: identifiers (patient, visit, and every id unique per message, order or document, which a
  sender fills from a counter or a clock) become keyed tokens: hex HMAC-SHA256 of the value, so joins
  and duplicate checks still work but the value, its order and its neighbours are gone, and it cannot be
  recomputed without the key;
- `shift`: dates and timestamps move by the row's patient offset: a whole number of days in -180..-1 or
  1..180 from a keyed HMAC of the patient id, the same in every table, so sequences and intervals (length
  of stay, age at a visit) hold. A row without a patient has no offset: its dates are null, since a real
  date beside shifted ones would anchor them; a table without `patient_id` has its dates dropped;
- `keep`: as is (never for a date or a pii column: the source model refuses it);
- `drop`, or no `deid` at all: left out. A column the metadata does not describe, lineage (`_archive`,
  `_member`, `_record` ordinals, `_batch`, `_landing_day`, `_ingested_at`) included, is left out too
  (fail closed: a new column is not exposed before someone decides what it is).

Companion columns follow their column, except the `_offset` of a shifted timestamp, which is dropped: the
sender's UTC offset changes with daylight saving time, so beside a shifted date it tells the real season.

Columns the code adds (`_facility`, the merge columns) and `silver.encounters`' own columns are declared
below; encounters' columns named like an ADT column take that column's treatment, and its internal fold
state (`_fold_*`, `silver/encounters.py: FOLD_COLUMNS`) is not declared, so left out.

The key comes from the secret `MEDLAKE_DEID_KEY`; the views are refused without it. It reaches DuckDB
only inside two Python functions (`medlake_deid_token`, `medlake_deid_shift_days`): never in SQL text,
which `duckdb_views()` would show to any SQL user. Two sub-keys are derived from it so that a token
(visible) says nothing about the date offset (secret).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from duckdb import sqltypes

from medlake_assets.errors import MedlakeError
from medlake_assets.lake.columns import DELETED, IS_CURRENT, VALID_FROM, VALID_TO
from medlake_assets.silver.casts import companion_types
from medlake_assets.silver.encounters import ENCOUNTER_COLUMNS
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.models import DeidTreatment

Treatment = DeidTreatment

DEID_KEY_ENV = "MEDLAKE_DEID_KEY"
MIN_KEY_LENGTH = 32
DEID_SCHEMA = "silver_deid"
SOURCE_SCHEMA = "silver"
PATIENT_COLUMN = "patient_id"
MAX_SHIFT_DAYS = 180
TOKEN_FUNCTION = "medlake_deid_token"
SHIFT_FUNCTION = "medlake_deid_shift_days"
ENCOUNTERS = "encounters"
# Encounter columns that are not an ADT column: the visit's facility (the landing facility), its
# status, its latest event time and a count of its messages.
ENCOUNTERS_OWN: dict[str, Treatment] = {
    "facility": "keep",
    "status": "keep",
    "last_event_ts": "shift",
    "event_count": "keep",
}
# Columns the code adds to silver tables: the landing facility and the merge columns.
SYSTEM_COLUMNS: dict[str, Treatment] = {
    "_facility": "keep",
    DELETED: "keep",
    VALID_FROM: "shift",
    VALID_TO: "shift",
    IS_CURRENT: "keep",
}
# Companions of a shifted column, by suffix (any other companion is dropped).
SHIFTED_COMPANIONS: dict[str, Treatment] = {"_precision": "keep", "_offset": "drop"}
_CACHE_SIZE = 200_000


class DeidKeyError(MedlakeError, RuntimeError):
    """`MEDLAKE_DEID_KEY` is missing or too short (the message never shows the key)."""


def deid_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The de-identification key from the secret `MEDLAKE_DEID_KEY`, or a `DeidKeyError` saying why not."""
    env = os.environ if environ is None else environ
    secret = env.get(DEID_KEY_ENV, "")
    if not secret:
        raise DeidKeyError(
            f"the {DEID_SCHEMA}.* views need the secret {DEID_KEY_ENV}, which is not set (at least "
            f"{MIN_KEY_LENGTH} characters, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    if len(secret) < MIN_KEY_LENGTH:
        raise DeidKeyError(
            f"{DEID_KEY_ENV} is {len(secret)} characters long; it needs at least {MIN_KEY_LENGTH}"
        )
    return secret.encode()


def deid_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `MEDLAKE_DEID_KEY` is set (then `sql.connect` builds the views, or fails on a bad key)."""
    env = os.environ if environ is None else environ
    return bool(env.get(DEID_KEY_ENV))


def _subkey(key: bytes, purpose: str) -> bytes:
    return hmac.new(key, f"medlake-deid/{purpose}".encode(), hashlib.sha256).digest()


def token(key: bytes, value: str) -> str:
    """The identifier's token: hex HMAC-SHA256 under the token sub-key of `key`."""
    return hmac.new(_subkey(key, "token"), value.encode(), hashlib.sha256).hexdigest()


def shift_days(key: bytes, patient_id: str) -> int:
    """The patient's date offset in days, -180..-1 or 1..180 (never 0), from the shift sub-key of `key`."""
    digest = hmac.new(_subkey(key, "date-shift"), patient_id.encode(), hashlib.sha256).digest()
    spread = int.from_bytes(digest[:8], "big") % (2 * MAX_SHIFT_DAYS)
    return spread - MAX_SHIFT_DAYS if spread < MAX_SHIFT_DAYS else spread - MAX_SHIFT_DAYS + 1


def _companion_treatment(treatment: Treatment, suffix: str) -> Treatment:
    if treatment == "shift":
        return SHIFTED_COMPANIONS.get(suffix, "drop")
    return "keep" if treatment == "keep" else "drop"


def source_treatments(spec: SourceSpec) -> dict[str, Treatment]:
    """What the deid view does with each column of `silver.<spec.name>` (columns not named: dropped)."""
    treatments: dict[str, Treatment] = dict(SYSTEM_COLUMNS)
    for column in spec.columns:
        treatment: Treatment = column.deid or "drop"
        treatments[column.name] = treatment
        for suffix in companion_types(column.type, column.format):
            treatments[column.name + suffix] = _companion_treatment(treatment, suffix)
    return treatments


def table_treatments(sources: Mapping[str, SourceSpec]) -> dict[str, dict[str, Treatment]]:
    """Treatments per silver table name: one per source, plus `encounters` derived from its source."""
    tables = {name: source_treatments(spec) for name, spec in sources.items()}
    for spec in (spec for spec in sources.values() if ENCOUNTERS in spec.derived):
        events = tables[spec.name]
        derived = {name: ENCOUNTERS_OWN.get(name) or events.get(name, "drop") for name in ENCOUNTER_COLUMNS}
        tables[ENCOUNTERS] = {**SYSTEM_COLUMNS, **derived}
    return tables


def _is_date(duckdb_type: str) -> bool:
    return duckdb_type == "DATE" or duckdb_type.startswith("TIMESTAMP")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def view_sql(table: str, columns: Sequence[tuple[str, str]], treatments: Mapping[str, Treatment]) -> str:
    """`CREATE OR REPLACE VIEW silver_deid.<table>` over `silver.<table>` with its `(name, DuckDB type)`
    columns: identifiers tokenized, dates shifted by the row's patient offset, the rest kept or dropped.

    Fail closed: a column without a treatment, a date not declared `shift`, and every date of a table
    without `patient_id` (no offset to apply) are left out; a row without a patient gets null dates.
    """
    has_patient = any(name == PATIENT_COLUMN for name, _ in columns)
    shift = "__shift_days"
    selected = []
    for name, duckdb_type in columns:
        treatment = treatments.get(name, "drop")
        column = _ident(name)
        is_date = _is_date(duckdb_type)
        if treatment == "token":
            selected.append(f"{TOKEN_FUNCTION}(CAST({column} AS VARCHAR)) AS {column}")
        elif treatment == "keep" and not is_date:
            selected.append(column)
        elif treatment == "shift" and is_date and has_patient:
            if duckdb_type == "DATE":
                selected.append(f"{column} + {shift} AS {column}")
            else:
                # Whole days of elapsed time, not calendar days: intervals survive daylight-saving changes.
                selected.append(f"{column} + to_seconds({shift} * 86400) AS {column}")
    source = f"{SOURCE_SCHEMA}.{_ident(table)}"
    if has_patient:
        patient = _ident(PATIENT_COLUMN)
        source = f"(SELECT *, {SHIFT_FUNCTION}(CAST({patient} AS VARCHAR)) AS {shift} FROM {source})"
    return (
        f"CREATE OR REPLACE VIEW {DEID_SCHEMA}.{_ident(table)} AS SELECT {', '.join(selected)} FROM {source}"
    )


def _per_distinct(
    compute: Callable[[str], object], result_type: pa.DataType
) -> Callable[[pa.Array], pa.Array]:
    """A vectorized DuckDB function: `compute` once per distinct value (cached across chunks), nulls kept."""
    cached = functools.lru_cache(maxsize=_CACHE_SIZE)(compute)

    def apply(values: pa.Array) -> pa.Array:
        distinct = pc.unique(values)
        results = pa.array(
            [None if value is None else cached(value) for value in distinct.to_pylist()], result_type
        )
        return pc.take(results, pc.index_in(values, value_set=distinct))

    return apply


def register_functions(con: duckdb.DuckDBPyConnection, key: bytes) -> None:
    """The token and shift functions, holding the key in Python only (never in any SQL text)."""
    for name, compute, arrow_type, sql_type in [
        (TOKEN_FUNCTION, functools.partial(token, key), pa.string(), sqltypes.VARCHAR),
        (SHIFT_FUNCTION, functools.partial(shift_days, key), pa.int32(), sqltypes.INTEGER),
    ]:
        with_cache = _per_distinct(compute, arrow_type)
        con.create_function(name, with_cache, [sqltypes.VARCHAR], sql_type, type="arrow", side_effects=False)


def register_deid_views(
    con: duckdb.DuckDBPyConnection, sources: Mapping[str, SourceSpec], key: bytes | None = None
) -> list[str]:
    """`silver_deid.<table>` for every `silver.<table>` relation in `con` that the metadata describes.

    `key` defaults to `deid_key()` (the secret `MEDLAKE_DEID_KEY`): without one, nothing is built and
    `DeidKeyError` says why. Returns the views created, as `silver_deid.<table>`.
    """
    key = deid_key() if key is None else key
    treatments = table_treatments(sources)
    present = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = ? GROUP BY table_name",
            [SOURCE_SCHEMA],
        ).fetchall()
    }
    register_functions(con, key)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {DEID_SCHEMA}")
    created = []
    for table in sorted(present & set(treatments)):
        columns = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = ? ORDER BY column_index",
            [SOURCE_SCHEMA, table],
        ).fetchall()
        con.execute(view_sql(table, columns, treatments[table]))
        created.append(f"{DEID_SCHEMA}.{table}")
    return created
