"""Fuzzed HL7, CSV and XML archives through the pure ingest core (unpack + parse): whatever the input,
every member and every record is loaded or rejected with a rule and a reason, numbered once each.

A small budget runs in `make test`; `MEDLAKE_FUZZ_EXAMPLES` raises it (the e2e fuzz through real runs is in
`defs/test_accounting.py`).
"""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, date, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlake_assets.ingest.pipeline import ArchiveContext, process_archive
from medlake_assets.spec import load_sources
from medlake_assets_tests.accounting import result_problems
from medlake_assets_tests.conftest import SOURCES_DIR
from medlake_assets_tests.ingest.archive_builders import gzip_bytes, zip_plain

SOURCES = load_sources(SOURCES_DIR)
EXAMPLES = int(os.environ.get("MEDLAKE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Text that hurts: separators of every format, quotes, controls (NUL, MLLP framing), non-ASCII.
NASTY = st.text(
    alphabet=st.sampled_from(list("aZ09 _-.,;\"'|^~\\&$#<>&\t\x00\x01\x0b\x1c\x7fé€ü漢")), max_size=12
)


def run(source: str, archive: bytes, name: str = "fuzz.zip"):
    key = f"landing/{source}/2026/11/20/F1/{name}"
    context = ArchiveContext(key, "F1", date(2026, 11, 20), "b1", datetime.now(UTC))
    return process_archive(archive, context, SOURCES[source], password=None)


# --- HL7 ---------------------------------------------------------------------------------------------


@st.composite
def hl7_messages(draw) -> list[str]:
    """Messages with random separators (declared or not), types, control ids, charsets and segments."""
    messages = []
    for _ in range(draw(st.integers(1, 5))):
        separator = draw(st.sampled_from(["|", "|", "|", "#", "1"]))
        encoding_characters = draw(
            st.sampled_from(["^~\\&", "^~\\&", "$~\\&", "^~\\", "^", "", "^^\\&", "#~\\&"])
        )
        message_type = draw(st.sampled_from(["ADT^A01^ADT_A01", "ADT^A08", "ADT", "ORU^R01", "", "adt^a03"]))
        control_id = draw(st.sampled_from(["C1", "C2", ""]))
        # PUNYCODE and a NUL in the name: codecs that raise beyond UnicodeDecodeError and LookupError.
        charset = draw(
            st.sampled_from(
                ["", "", "UNICODE UTF-8", "8859/1", "BOGUS", "UNICODE UTF-16", "PUNYCODE", "8859/1\x00"]
            )
        )
        fields = ["MSH", encoding_characters, "APP", "F1", "LAKE", "X", "20261120", "", message_type]
        fields += [control_id, "P", "2.5", "", "", "", "", "", charset]
        head = separator.join(fields).rstrip(separator)
        body = draw(
            st.lists(
                st.one_of(
                    st.builds(lambda name: f"PID|1||P1^^^F1^MR||{name}^GIVEN||19700101|F", NASTY),
                    st.just("PV1|1|I|ICU^1^A"),
                    st.just("not a segment"),
                    st.builds(lambda text: f"ZZ1|{text}", NASTY),
                ),
                max_size=4,
            )
        )
        messages.append("\r".join([head, *body]))
    return messages


@st.composite
def hl7_member(draw) -> tuple[bytes, int]:
    messages = draw(hl7_messages())
    newline = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    text = newline.join(messages)
    if draw(st.booleans()):
        text = "FHS|^~\\&|APP\rBHS|^~\\&|APP\r" + text + "\rBTS|1\rFTS|1"
    if draw(st.booleans()):
        text = "orphan line before any MSH\r" + text
    data = text.encode(draw(st.sampled_from(["utf-8", "latin-1"])), errors="replace")
    return data, len(messages)


@FUZZ
@given(st.lists(hl7_member(), min_size=1, max_size=3))
def test_fuzzed_hl7_archives_account_for_every_message(members) -> None:
    named = {f"m{number}.hl7": data for number, (data, _) in enumerate(members)}
    result = run("adt_events", zip_plain(named))
    units = {f"m{number}.hl7": count for number, (_, count) in enumerate(members)}
    assert result_problems(result, units) == []


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_hl7_account_for_every_message(data: bytes) -> None:
    messages = sum(1 for line in data.splitlines() if line.lstrip(b" \t\x0b\x0c\x1c")[:3] == b"MSH")
    result = run("adt_events", zip_plain({"m.hl7": data}))
    assert result_problems(result, {"m.hl7": messages}) == []


# --- CSV ----------------------------------------------------------------------------------------------


@st.composite
def csv_member(draw) -> tuple[bytes, int]:
    """A lab_results CSV written by the csv module (so the record count is known), with ragged rows,
    blank lines, a column sometimes missing, and nasty values."""
    header = [column.source for column in SOURCES["lab_results"].columns]
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    if draw(st.integers(0, 5)) == 0:
        header = header[:-2]
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        width = len(header) + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
        rows.append(draw(st.lists(NASTY, min_size=width, max_size=width)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
        if draw(st.integers(0, 6)) == 0:
            buffer.write("\r\n")  # a blank line is not a record
    encoding = draw(st.sampled_from(["utf-8", "cp1252"]))
    return buffer.getvalue().encode(encoding, errors="replace"), len(rows)


@FUZZ
@given(st.lists(csv_member(), min_size=1, max_size=3), st.booleans())
def test_fuzzed_csv_archives_account_for_every_record(members, as_gzip: bool) -> None:
    if as_gzip:
        data, count = members[0]
        result = run("lab_results", gzip_bytes(data), "fuzz.csv.gz")
        units = {"fuzz.csv": count}  # a gzip's one member is named after the key, without `.gz`
    else:
        result = run("lab_results", zip_plain({f"m{n}.csv": data for n, (data, _) in enumerate(members)}))
        units = {f"m{n}.csv": count for n, (_, count) in enumerate(members)}
    assert result_problems(result, units) == []
    assert result.members == len(units) or result.quarantined


# --- XML ----------------------------------------------------------------------------------------------

_DOCUMENT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<ClinicalDocument xmlns="{namespace}"><id root="1.2" extension="{text}"/>'
    '<effectiveTime value="20261120"/><recordTarget><patientRole><id extension="P1"/>'
    "<patient><name><family>{text}</family></name></patient></patientRole></recordTarget>"
    "</ClinicalDocument>"
)


@st.composite
def xml_member(draw) -> bytes:
    from xml.sax.saxutils import escape, quoteattr

    text = draw(NASTY)
    namespace = draw(st.sampled_from(["urn:hl7-org:v3", "urn:hl7-org:v3", "urn:other"]))
    document = _DOCUMENT.format(namespace=namespace, text=escape(text)).replace(
        f'extension="{escape(text)}"', f"extension={quoteattr(text)}"
    )
    damage = draw(st.sampled_from(["none", "none", "truncate", "doctype", "garbage"]))
    if damage == "truncate":
        document = document[: draw(st.integers(0, len(document) - 1))]
    elif damage == "doctype":
        document = document.replace("\n", '\n<!DOCTYPE x [<!ENTITY a "aaaa">]>\n', 1)
    elif damage == "garbage":
        return draw(st.binary(max_size=200))
    return document.encode("utf-8")


@FUZZ
@given(st.lists(xml_member(), min_size=1, max_size=4))
def test_fuzzed_xml_archives_account_for_every_document(documents) -> None:
    result = run("patient_documents", zip_plain({f"d{n}.xml": data for n, data in enumerate(documents)}))
    assert result_problems(result, {f"d{n}.xml": 1 for n in range(len(documents))}) == []


# --- archives with members the source does not read -------------------------------------------------


def test_members_not_matching_the_member_pattern_are_rejected_by_name_not_dropped() -> None:
    header = ",".join(column.source for column in SOURCES["lab_results"].columns)
    row = ",".join(["x"] * len(SOURCES["lab_results"].columns))
    archive = zip_plain({"labs.csv": f"{header}\n{row}\n".encode(), "notes.pdf": b"%PDF-1.4", "dir/": b""})
    result = run("lab_results", archive)
    assert result.records == 1
    assert [(r.member, r.record, r.rule) for r in result.rejects] == [
        ("notes.pdf", None, "archive.unmatched_member")
    ]
    assert "member_pattern" in result.rejects[0].reason
