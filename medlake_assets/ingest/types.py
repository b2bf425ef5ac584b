"""Values passed between unpacking, parsing and loading.

Error messages name the archive member, line and rule, never a record's values (they may hold PHI).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medlake_assets.errors import MedlakeError


@dataclass(frozen=True)
class Member:
    """One file inside an archive, read into memory (never extracted to disk by its name)."""

    name: str
    data: bytes


class Rejected(MedlakeError):
    """Bad input; `rule` is a stable dotted code (e.g. `archive.bad_password`), `reason` a clear sentence."""

    def __init__(self, rule: str, reason: str, *, member: str | None = None, line: int | None = None):
        self.rule = rule
        self.reason = reason
        self.member = member
        self.line = line
        where = "".join(
            [f" member {member!r}" if member is not None else "", f" line {line}" if line is not None else ""]
        )
        super().__init__(f"{rule}:{where} {reason}" if where else f"{rule}: {reason}")


class ArchiveRejected(Rejected):
    """The whole archive is unusable: it goes to quarantine and loads nothing."""


class MemberRejected(Rejected):
    """One member is unusable (e.g. a CSV without a required column); the archive's other members load."""


@dataclass(frozen=True)
class RecordReject:
    """One record that could not be parsed; it goes to `quarantine.<source>` with its raw text."""

    member: str
    record: int | None
    line: int | None
    rule: str
    reason: str
    raw: str | None = None


@dataclass
class ParsedMember:
    """The records of one member, columnar: every declared column name maps to one value per record.

    Values are strings exactly as received (after unescaping and null tokens become None); `ordinals` gives
    each record's 1-based position in the member, counting rejected records, so `_record` is stable.
    """

    columns: dict[str, list[str | None]]
    ordinals: list[int] = field(default_factory=list)
    rejects: list[RecordReject] = field(default_factory=list)

    @property
    def record_count(self) -> int:
        return len(self.ordinals)
