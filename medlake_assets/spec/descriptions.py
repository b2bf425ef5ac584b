"""Table and column descriptions, derived from the metadata in one place.

`metadata/sources/*.yaml` describes each source and its columns, report headers describe each gold
table; lineage and merge columns are described here. The SQL endpoint shows these through
`pg_description` (psql `\\d+`, JDBC REMARKS) and the Iceberg tables carry them as column docs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from medlake_assets.spec.models import SourceSpec

LINEAGE = {
    "_archive": "Landing object key of the archive the record came from",
    "_member": "File inside the archive the record came from",
    "_record": "Ordinal of the record within its member (1-based)",
    "_facility": "Facility the archive landed for (from the landing key)",
    "_ingested_at": "When the record was loaded into bronze (UTC)",
    "_batch": "Ingestion batch id (meta.files.batch_id)",
    "_landing_day": "Landing day of the archive (UTC date in the landing key)",
    "_deleted": "True when the source deleted this record (upsert tables keep it as a tombstone)",
    "_valid_from": "Start of this version's validity (SCD2 history)",
    "_valid_to": "End of this version's validity; NULL while current (SCD2 history)",
    "_is_current": "True for the current version of a key (SCD2 history)",
}
QUARANTINE_TABLE = "Rows of {source} rejected at bronze (parse) or silver (rule), with the rule and reason"
ENCOUNTERS_TABLE = "One row per visit, derived from every ADT event of the visit (silver.adt_events)"
ENCOUNTER_COLUMNS = {
    "facility": "Facility of the visit (its landing facility)",
    "status": "Where the visit stands after its latest event (e.g. admitted, discharged)",
    "last_event_ts": "Time of the visit's latest ADT event",
    "event_count": "Number of ADT events of the visit",
}
_FOLD_AT = "Internal fold state: sortable order key of the event that gave the {what} (null: none yet)"
# `silver.encounters`' incremental fold state (`silver/encounters.py`); the deid views leave it out.
ENCOUNTER_FOLD_COLUMNS = {
    "_fold_last_at": _FOLD_AT.format(what="last event (last_event_ts, lineage)"),
    "_fold_status_at": _FOLD_AT.format(what="status and discharge_ts"),
    "_fold_location_at": _FOLD_AT.format(what="location (point_of_care, room, bed)"),
    "_fold_patient_id_at": _FOLD_AT.format(what="patient_id"),
    "_fold_patient_class_at": _FOLD_AT.format(what="patient_class"),
    "_fold_admit_pv1_at": _FOLD_AT.format(what="first PV1-44 admit time"),
    "_fold_admit_message_at": _FOLD_AT.format(what="first A01/A04"),
    "_fold_admit_pv1": "Internal fold state: the visit's first PV1-44 admit time",
    "_fold_admit_message_ts": "Internal fold state: message time of the visit's first A01/A04",
    "_fold_ids": "Internal fold state: the distinct message control ids folded (event_count is their number)",
}
DEID_TABLE = "De-identified {table}: identifiers tokenized, dates shifted per patient, free text dropped"


@dataclass(frozen=True)
class TableDescription:
    text: str
    columns: dict[str, str] = field(default_factory=dict)


def _source_columns(spec: SourceSpec) -> dict[str, str]:
    columns = dict(LINEAGE)
    for column in spec.columns:
        columns[column.name] = column.description or f"{spec.name} field {column.source}"
    return columns


def describe_lake(
    sources: Mapping[str, SourceSpec], reports: Iterable[tuple[str, str]] = ()
) -> dict[str, TableDescription]:
    """Descriptions by `<schema>.<table>` for bronze, silver, silver_deid and quarantine tables of every
    source, and gold tables from `(gold identifier, report description)` pairs."""
    described: dict[str, TableDescription] = {}
    for name, spec in sources.items():
        columns = _source_columns(spec)
        text = spec.description or f"{name} records"
        described[f"bronze.{name}"] = TableDescription(f"{text} (as received: every field a string)", columns)
        described[f"silver.{name}"] = TableDescription(f"{text} (typed, cleaned, checked)", columns)
        described[f"silver_deid.{name}"] = TableDescription(
            DEID_TABLE.format(table=f"silver.{name}"), columns
        )
        described[f"quarantine.{name}"] = TableDescription(
            QUARANTINE_TABLE.format(source=name), dict(LINEAGE)
        )
    if "adt_events" in sources:
        columns = _source_columns(sources["adt_events"]) | ENCOUNTER_COLUMNS
        described["silver.encounters"] = TableDescription(ENCOUNTERS_TABLE, columns | ENCOUNTER_FOLD_COLUMNS)
        described["silver_deid.encounters"] = TableDescription(ENCOUNTERS_TABLE + " (de-identified)", columns)
    for identifier, description in reports:
        described[identifier] = TableDescription(description.strip())
    return described


def table_column_docs(spec: SourceSpec, identifier: str) -> dict[str, str]:
    """Column descriptions of one of a source's tables (`bronze.<name>`, `silver.<name>`,
    `silver.encounters` for adt_events, ...): the docs its Iceberg table carries."""
    description = describe_lake({spec.name: spec}).get(identifier)
    return dict(description.columns) if description is not None else {}


def column_docs(description: TableDescription | None, names: Iterable[str]) -> dict[str, str]:
    """The docs of the given column names (columns without a description are left out)."""
    if description is None:
        return {}
    return {name: description.columns[name] for name in names if name in description.columns}
