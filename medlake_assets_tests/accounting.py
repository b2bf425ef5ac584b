"""The accounting invariant of ingestion, checked from outside: every landed object and every member and
record is in bronze, in quarantine, or pending with a reason, and the ledger's counts add up.

- Every object under `landing/` has a ledger row (its latest registration): `loaded`, `quarantined` (rule,
  reason, original bytes kept under `quarantine/`), or `pending` with a rule and a reason (held back).
- A loaded archive: its bronze rows are `records`, its bronze-stage quarantine rows `rejected_records`,
  and the members seen in either are at most `members`; with rejects, its original is kept too.
- A quarantined archive has no bronze rows.
- Within each (archive, member), the record ordinals found in bronze and quarantine together are exactly
  1..N, each once: parsers number every record they find, so a record that vanished leaves a hole.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

import pyarrow as pa
from sqlalchemy import text

from medlake_assets.ingest.pipeline import ArchiveResult
from medlake_assets.lake import Lake
from medlake_assets.lake.ledger import LOADED, PENDING, QUARANTINED


def _table(lake: Lake, identifier: str, columns: list[str]) -> pa.Table | None:
    if not lake.catalog.table_exists(identifier):
        return None
    return lake.catalog.load_table(identifier).scan(selected_fields=tuple(columns)).to_arrow()


def _latest_rows(lake: Lake) -> dict[str, dict]:
    with lake.ledger.engine.connect() as connection:
        rows = connection.execute(
            text(f"SELECT * FROM {lake.ledger.table_name} WHERE store = :store ORDER BY id"),
            {"store": lake.store.uri},
        ).mappings()
        return {row["key"]: dict(row) for row in rows}


def accounting_problems(lake: Lake, *, empty_members: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Every breach of the invariant (module docstring), as readable lines; [] when it holds.

    `empty_members` lists (archive, member) pairs that legitimately hold no record (a CSV header alone).
    """
    problems: list[str] = []
    ledger = _latest_rows(lake)
    landed = [info.key for info in lake.store.list("landing/")]
    bronze_rows: Counter[str] = Counter()
    rejected_rows: Counter[str] = Counter()
    members_seen: dict[str, set[str]] = defaultdict(set)
    ordinals: dict[tuple[str, str], list[int]] = defaultdict(list)
    for source in lake.sources:
        bronze = _table(lake, f"bronze.{source}", ["_archive", "_member", "_record"])
        rejects = _table(lake, f"quarantine.{source}", ["_archive", "_member", "_record", "stage"])
        for rows, is_reject in ((bronze, False), (rejects, True)):
            if rows is None:
                continue
            for row in rows.to_pylist():
                if is_reject and row["stage"] != "bronze":
                    continue
                archive, member, record = row["_archive"], row["_member"], row["_record"]
                (rejected_rows if is_reject else bronze_rows)[archive] += 1
                if member is not None:
                    members_seen[archive].add(member)
                    if record is not None:
                        ordinals[(archive, member)].append(record)

    for key in landed:
        row = ledger.get(key)
        if row is None:
            problems.append(f"{key}: landed but not in the ledger")
            continue
        status = row["status"]
        if status == PENDING:
            if not (row["rule"] and row["reason"]):
                problems.append(f"{key}: pending without a rule and a reason")
            continue
        if status == QUARANTINED:
            if not (row["rule"] and row["reason"] and row["quarantine_key"]):
                problems.append(f"{key}: quarantined without rule, reason or quarantine copy")
            elif lake.store.get(row["quarantine_key"]) != lake.store.get(key):
                problems.append(f"{key}: the quarantine copy differs from the original")
            if bronze_rows[key]:
                problems.append(f"{key}: quarantined, yet {bronze_rows[key]} rows are in bronze")
            continue
        assert status == LOADED, status
        if bronze_rows[key] != row["records"]:
            problems.append(f"{key}: ledger records {row['records']}, bronze rows {bronze_rows[key]}")
        if rejected_rows[key] != row["rejected_records"]:
            problems.append(
                f"{key}: ledger rejected_records {row['rejected_records']}, "
                f"quarantine rows {rejected_rows[key]}"
            )
        seen = members_seen[key] | {member for archive, member in empty_members if archive == key}
        if len(seen) > (row["members"] or 0):
            problems.append(f"{key}: ledger members {row['members']}, yet {len(seen)} members hold rows")
        kept = row["quarantine_key"] and lake.store.exists(row["quarantine_key"])
        if row["rejected_records"] and not kept:
            problems.append(f"{key}: records were rejected but the original is not kept under quarantine/")

    for (archive, member), found in sorted(ordinals.items()):
        expected = list(range(1, max(found) + 1))
        if sorted(found) != expected:
            missing = sorted(set(expected) - set(found))
            doubled = sorted(number for number, count in Counter(found).items() if count > 1)
            problems.append(
                f"{archive} member {member!r}: records missing {missing[:10]}, doubled {doubled[:10]}"
            )
    return problems


def result_problems(result: ArchiveResult, units: Mapping[str, int]) -> list[str]:
    """The invariant for one processed archive (no tables involved): `units[member]` is how many records the
    test put in each member. A member's records are numbered 1..units, each once, across loaded rows and
    rejects; a member with no numbered record was rejected whole (a reject without a record number) or
    holds none. A quarantined archive carries a rule and a reason and loads nothing."""
    if result.quarantined:
        return [] if result.reason and result.table is None else [f"{result.context.key}: quarantined badly"]
    problems = []
    numbered: dict[str, list[int]] = defaultdict(list)
    whole: set[str] = set()
    table = result.table
    if table is not None:
        for member, record in zip(
            table.column("_member").to_pylist(), table.column("_record").to_pylist(), strict=True
        ):
            numbered[member].append(record)
    for reject in result.rejects:
        if not (reject.rule and reject.reason):
            problems.append(f"member {reject.member!r}: a reject without rule or reason")
        if reject.record is None:
            whole.add(reject.member)
        else:
            numbered[reject.member].append(reject.record)
    for member, expected in units.items():
        found = sorted(numbered.get(member, []))
        if found:
            if found != list(range(1, expected + 1)):
                problems.append(f"member {member!r}: records {found[:20]}, expected 1..{expected}")
        elif expected and member not in whole:
            problems.append(f"member {member!r}: {expected} records vanished (no row, no reject)")
    if unknown := set(numbered) - set(units):
        problems.append(f"records of members the archive does not hold: {sorted(unknown)}")
    return problems
