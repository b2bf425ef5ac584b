"""Text decoding and the CSV parser, against synthetic feeds built here (seeded, never real data)."""

from __future__ import annotations

import codecs
import csv
import io
import random
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake_assets.ingest.parsers.csv import parse_csv, text_lines
from medlake_assets.ingest.text import CONTROL_CHARACTER, decode_text
from medlake_assets.ingest.types import MemberRejected, ParsedMember, RecordReject
from medlake_assets.spec import ColumnSpec, CsvFormat, SourceSpec, load_source

SOURCES_DIR = Path(__file__).resolve().parents[2] / "metadata" / "sources"
FALLBACKS = ["cp1252", "latin-1"]
LAB_HEADER = (
    "facility_id,patient_id,order_id,test_code,test_name,value,unit,reference_range,abnormal_flag,"
    "result_status,result_ts"
)


@pytest.fixture(scope="module")
def lab() -> SourceSpec:
    defaults = yaml.safe_load((SOURCES_DIR / "_defaults.yaml").read_text(encoding="utf-8"))
    return load_source(SOURCES_DIR / "lab_results.yaml", defaults)


def parse(
    spec: SourceSpec, data: bytes, member: str = "labs/results.csv", **overrides: object
) -> ParsedMember:
    fmt = spec.format
    assert isinstance(fmt, CsvFormat)
    return parse_csv(
        data,
        member=member,
        columns=spec.columns,
        fmt=fmt.model_copy(update=overrides) if overrides else fmt,
        encoding=spec.landing.encoding,
        fallbacks=spec.landing.encoding_fallbacks,
    )


def columns(*specs: tuple[str, str, bool]) -> list[ColumnSpec]:
    return [ColumnSpec(name=name, source=source, nullable=nullable) for name, source, nullable in specs]


# --- decode_text ---


def test_utf8_bom_is_stripped() -> None:
    data = codecs.BOM_UTF8 + "id,name\n1,Zoë\n".encode()

    assert decode_text(data, member="m", encoding="utf-8", fallbacks=[]) == "id,name\n1,Zoë\n"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_boms_decode_whatever_the_declared_encoding(codec: str) -> None:
    text = "id,name\r\n1,Øster\r\n"
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(codec, b"")
    data = bom + text.encode(codec)  # "utf-16" and "utf-32" write their own native-order mark

    assert decode_text(data, member="m", encoding="utf-8", fallbacks=FALLBACKS) == text


def test_declared_encoding_wins_when_it_decodes() -> None:
    assert decode_text("Müller".encode("cp1252"), member="m", encoding="cp1252", fallbacks=[]) == "Müller"


def test_fallbacks_are_tried_in_order() -> None:
    # 0x80 is the euro sign in cp1252 and a C1 control in latin-1: cp1252 comes first, so it wins.
    data = "Müller 5€".encode("cp1252")

    assert decode_text(data, member="m", encoding="utf-8", fallbacks=FALLBACKS) == "Müller 5€"
    assert decode_text(data, member="m", encoding="utf-8", fallbacks=["latin-1"]) == "Müller 5\x80"


def test_latin1_fallback_always_decodes() -> None:
    every_byte = bytes(range(256))

    assert decode_text(every_byte, member="m", encoding="utf-8", fallbacks=["latin-1"]) == every_byte.decode(
        "latin-1"
    )


def test_undecodable_text_is_a_member_reject_without_the_bytes() -> None:
    data = b"id,name\n1,M\xfcller \x81\n"  # \x81 is undefined in cp1252, \xfc is not UTF-8 here

    with pytest.raises(MemberRejected) as caught:
        decode_text(data, member="labs/a.csv", encoding="utf-8", fallbacks=["cp1252"])

    error = caught.value
    assert error.rule == "text.undecodable"
    assert error.member == "labs/a.csv"
    assert error.reason == "not valid text in any of utf-8, cp1252 (first bad byte at offset 11)"
    assert "ller" not in str(error)


def test_unknown_encoding_name_is_a_metadata_error() -> None:
    with pytest.raises(LookupError):
        decode_text(b"\xff", member="m", encoding="utf-8", fallbacks=["no-such-codec"])


# --- parse_csv: values ---


def test_lab_results_exact_values_with_crlf_quotes_and_null_tokens(lab: SourceSpec) -> None:
    text = (
        f"{LAB_HEADER}\r\n"
        'FAC01,P0000017,O-1,2345-7,"Glucose, serum",98,mg/dL,70-99,,F,2024-05-01T10:11:12\r\n'
        'FAC01,P0000017,O-2,718-7,"Hemoglobin ""Hb""",N/A,g/dL,NULL, ,P,2024-05-01T10:12:00\r\n'
    )

    parsed = parse(lab, text.encode())

    assert parsed.columns == {
        "facility_id": ["FAC01", "FAC01"],
        "patient_id": ["P0000017", "P0000017"],
        "order_id": ["O-1", "O-2"],
        "test_code": ["2345-7", "718-7"],
        "test_name": ["Glucose, serum", 'Hemoglobin "Hb"'],
        "value": ["98", None],
        "unit": ["mg/dL", "g/dL"],
        "reference_range": ["70-99", None],
        "abnormal_flag": [None, " "],  # a blank is not a null token: kept as received
        "result_status": ["F", "P"],
        "result_ts": ["2024-05-01T10:11:12", "2024-05-01T10:12:00"],
    }
    assert parsed.ordinals == [1, 2]
    assert parsed.rejects == []


def test_quoted_newlines_span_lines_and_keep_line_numbers(lab: SourceSpec) -> None:
    text = (
        f"{LAB_HEADER}\r\n"
        'FAC01,P1,O-1,2345-7,"Glucose,\r\nfasting\r\nserum",98,mg/dL,70-99,,F,2024-05-01T10:11:12\r\n'
        "FAC01,P1,O-2,718-7,Hemoglobin,13.5,g/dL,12-16,,F\r\n"
        'FAC01,P1,O-3,4548-4,"HbA1c\nnote",6.1,%,4-5.6,H,F,2024-05-01T10:13:00\r\n'
    )

    parsed = parse(lab, text.encode())

    assert parsed.columns["test_name"] == ["Glucose,\r\nfasting\r\nserum", "HbA1c\nnote"]
    assert parsed.ordinals == [1, 3]
    assert parsed.rejects == [
        RecordReject(
            member="labs/results.csv",
            record=2,
            line=5,  # header 1, first record lines 2-4
            rule="csv.field_count",
            reason="expected 11 fields, got 10",
            raw="FAC01,P1,O-2,718-7,Hemoglobin,13.5,g/dL,12-16,,F",
        )
    ]


def test_header_matches_trimmed_case_insensitive_in_any_order_ignoring_extras(lab: SourceSpec) -> None:
    header = (
        " RESULT_TS ,Extra_Col,Facility_ID,patient_id , Order_Id,test_code,TEST_NAME,value,unit,"
        "reference_range,abnormal_flag,Result_Status"
    )
    text = f"{header}\n2024-05-01T10:11:12,ignored,FAC02,P9,O-9,2345-7,Glucose,101,mg/dL,70-99,H,C\n"

    parsed = parse(lab, text.encode())

    assert {name: values[0] for name, values in parsed.columns.items()} == {
        "facility_id": "FAC02",
        "patient_id": "P9",
        "order_id": "O-9",
        "test_code": "2345-7",
        "test_name": "Glucose",
        "value": "101",
        "unit": "mg/dL",
        "reference_range": "70-99",
        "abnormal_flag": "H",
        "result_status": "C",
        "result_ts": "2024-05-01T10:11:12",
    }
    assert list(parsed.columns) == lab.column_names()


def test_bom_and_cp1252_bytes(lab: SourceSpec) -> None:
    row = "FAC01,P1,O-1,2345-7,Glucose (Müller 5€ kit),98,µg/L,70-99,,F,2024-05-01T10:11:12\r\n"
    cp1252 = f"{LAB_HEADER}\r\n{row}".encode("cp1252")
    utf8_bom = codecs.BOM_UTF8 + f"{LAB_HEADER}\r\n{row}".encode()

    for data in (cp1252, utf8_bom):
        parsed = parse(lab, data)
        assert parsed.columns["facility_id"] == ["FAC01"]  # the BOM is not part of the first header name
        assert parsed.columns["test_name"] == ["Glucose (Müller 5€ kit)"]
        assert parsed.columns["unit"] == ["µg/L"]


def test_no_carriage_return_artefacts(lab: SourceSpec) -> None:
    # "\r\r\n" (a CRLF file converted twice) and old-Mac "\r" endings.
    rows = [
        "FAC01,P1,O-1,2345-7,Glucose,98,mg/dL,70-99,,F,2024-05-01T10:11:12",
        "FAC01,P1,O-2,718-7,Hemoglobin,13.5,g/dL,12-16,,F,2024-05-01T10:12:00",
    ]
    for ending in ("\r\r\n", "\r", "\n"):
        data = ending.join([LAB_HEADER, *rows, ""]).encode()
        parsed = parse(lab, data)
        assert parsed.columns["result_ts"] == ["2024-05-01T10:11:12", "2024-05-01T10:12:00"], repr(ending)
        assert parsed.rejects == []


def test_custom_delimiter_and_quote() -> None:
    fmt = CsvFormat(delimiter="|", quote="'", null_tokens=["\\N"])
    data = b"id|note|flag\n1|'a|b ''quoted'''|\\N\n2|plain \"double\"|Y\n"

    parsed = parse_csv(
        data,
        member="m.psv",
        columns=columns(("id", "id", False), ("note", "note", True), ("flag", "flag", True)),
        fmt=fmt,
        encoding="utf-8",
        fallbacks=[],
    )

    assert parsed.columns == {
        "id": ["1", "2"],
        "note": ["a|b 'quoted'", 'plain "double"'],
        "flag": [None, "Y"],
    }


# --- parse_csv: records that are rejected or skipped ---


def test_field_count_rejects_keep_ordinals_and_lines(lab: SourceSpec) -> None:
    good = "FAC01,P1,O-{n},2345-7,Glucose,98,mg/dL,70-99,,F,2024-05-01T10:11:12"
    lines = [
        LAB_HEADER,
        good.format(n=1),
        good.format(n=2) + ",extra",
        "",
        good.format(n=3),
        "FAC01,P1,O-4",
        good.format(n=5),
    ]

    parsed = parse(lab, "\n".join(lines).encode())

    assert parsed.columns["order_id"] == ["O-1", "O-3", "O-5"]
    assert parsed.ordinals == [1, 3, 5]
    assert [(r.record, r.line, r.rule, r.reason, r.raw) for r in parsed.rejects] == [
        (2, 3, "csv.field_count", "expected 11 fields, got 12", good.format(n=2) + ",extra"),
        (4, 6, "csv.field_count", "expected 11 fields, got 3", "FAC01,P1,O-4"),
    ]


def test_blank_lines_are_not_records(lab: SourceSpec) -> None:
    row = "FAC01,P1,O-1,2345-7,Glucose,98,mg/dL,70-99,,F,2024-05-01T10:11:12"
    data = f"\r\n\r\n{LAB_HEADER}\r\n\r\n{row}\r\n\r\n\r\n{row}\r\n\r\n".encode()

    parsed = parse(lab, data)

    assert parsed.ordinals == [1, 2]
    assert parsed.rejects == []


def test_an_oversized_field_is_one_malformed_record_and_reading_resumes(lab: SourceSpec) -> None:
    good = "FAC01,P1,O-{n},2345-7,Glucose,98,mg/dL,70-99,,F,2024-05-01T10:11:12"
    runaway = 'FAC01,P1,O-2,2345-7,"unterminated ' + "x" * (csv.field_size_limit() + 10)
    data = "\n".join([LAB_HEADER, good.format(n=1), runaway, good.format(n=3), good.format(n=4)]).encode()

    parsed = parse(lab, data)

    assert parsed.columns["order_id"] == ["O-1", "O-3", "O-4"]
    assert parsed.ordinals == [1, 3, 4]
    assert [(r.record, r.line, r.rule, r.raw) for r in parsed.rejects] == [(2, 3, "csv.malformed", None)]
    assert parsed.rejects[0].reason == "record cannot be split: field larger than field limit (131072)"


def test_header_only_gives_zero_records(lab: SourceSpec) -> None:
    parsed = parse(lab, f"{LAB_HEADER}\r\n".encode())

    assert parsed.columns == {name: [] for name in lab.column_names()}
    assert parsed.ordinals == []
    assert parsed.rejects == []


@pytest.mark.parametrize(
    "data", [b"", b"\r\n\n\r\n", codecs.BOM_UTF8], ids=["empty", "blank-lines", "bom-only"]
)
def test_empty_member_is_rejected(lab: SourceSpec, data: bytes) -> None:
    with pytest.raises(MemberRejected) as caught:
        parse(lab, data)

    assert (caught.value.rule, caught.value.member, caught.value.reason) == (
        "csv.empty",
        "labs/results.csv",
        "no header and no records",
    )


def test_missing_required_column_names_the_column_not_values(lab: SourceSpec) -> None:
    header = LAB_HEADER.replace("test_code,", "").replace(",result_status", "")
    data = f"{header}\nFAC01,P-SECRET,O-1,Glucose,98,mg/dL,70-99,,2024-05-01T10:11:12\n".encode()

    with pytest.raises(MemberRejected) as caught:
        parse(lab, data)

    error = caught.value
    assert error.rule == "csv.missing_column"
    assert error.member == "labs/results.csv"
    assert error.reason == (
        "header lacks required columns: test_code (header 'test_code'), "
        "result_status (header 'result_status')"
    )
    assert "P-SECRET" not in str(error)


def test_missing_nullable_column_is_all_none(lab: SourceSpec) -> None:
    header = LAB_HEADER.replace(",reference_range", "").replace("test_name,", "")
    data = (
        f"{header}\nFAC01,P1,O-1,2345-7,98,mg/dL,,F,2024-05-01T10:11:12\nFAC01,P1,O-2,718-7,13,g/dL,L,F,x\n"
    )

    parsed = parse(lab, data.encode())

    assert parsed.columns["reference_range"] == [None, None]
    assert parsed.columns["test_name"] == [None, None]
    assert parsed.columns["abnormal_flag"] == [None, "L"]


def test_a_declared_header_present_twice_is_ambiguous(lab: SourceSpec) -> None:
    data = f"{LAB_HEADER},Patient_ID\n".encode()

    with pytest.raises(MemberRejected) as caught:
        parse(lab, data)

    assert caught.value.rule == "csv.duplicate_column"
    assert caught.value.reason == "header repeats declared columns: patient_id (header 'patient_id')"


# --- parse_csv without a header ---


HEADERLESS = CsvFormat(header=False, null_tokens=[""])
POSITIONAL = columns(("bed_id", "3", False), ("unit", "1", False), ("note", "5", True))


def parse_headerless(data: bytes, cols: list[ColumnSpec] = POSITIONAL) -> ParsedMember:
    return parse_csv(data, member="beds.csv", columns=cols, fmt=HEADERLESS, encoding="utf-8", fallbacks=[])


def test_headerless_sources_are_one_based_positions() -> None:
    data = b"ICU,x,B-01,occupied\nICU,x,B-02,available,\nWARD,y,B-07,cleaning\n\n"

    parsed = parse_headerless(data)

    # The first record has 4 fields: the second (5) is rejected, and `note` (field 5) is absent, so None.
    assert parsed.columns == {"bed_id": ["B-01", "B-07"], "unit": ["ICU", "WARD"], "note": [None, None]}
    assert parsed.ordinals == [1, 3]
    assert [(r.record, r.line, r.rule, r.raw) for r in parsed.rejects] == [
        (2, 2, "csv.field_count", "ICU,x,B-02,available,")
    ]


def test_headerless_values_at_a_declared_position() -> None:
    parsed = parse_headerless(b"ICU,x,B-01,occupied,left side\nICU,x,B-02,available,\n")

    assert parsed.columns == {"bed_id": ["B-01", "B-02"], "unit": ["ICU", "ICU"], "note": ["left side", None]}


def test_headerless_required_position_past_the_width() -> None:
    with pytest.raises(MemberRejected) as caught:
        parse_headerless(b"ICU,x\nWARD,y\n")

    assert caught.value.rule == "csv.missing_column"
    assert caught.value.reason == "records have 2 fields, too few for required columns: bed_id (field 3)"


def test_headerless_source_must_be_a_position() -> None:
    with pytest.raises(ValueError, match="^column bed_id: source must be a 1-based field position"):
        parse_headerless(b"a,b\n", columns(("bed_id", "bed_id", False)))


# --- round trip against the standard library's writer ---


VALUE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=2, max_value=5).flatmap(
        lambda width: st.lists(st.lists(VALUE, min_size=width, max_size=width), min_size=0, max_size=20)
    ),
    st.sampled_from([",", ";", "|", "\t"]),
)
def test_round_trip_with_csv_writer(rows: list[list[str]], delimiter: str) -> None:
    width = len(rows[0]) if rows else 2
    header = [f"c{index}" for index in range(width)]
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerows([header, *rows])
    nulls = ["", "NULL"]

    parsed = parse_csv(
        buffer.getvalue().encode(),
        member="m.csv",
        columns=columns(*[(name, name.upper(), True) for name in header]),
        fmt=CsvFormat(delimiter=delimiter, null_tokens=nulls),
        encoding="utf-8",
        fallbacks=[],
    )

    # Records holding a control character are rejected (the default policy); all others round-trip.
    bad = [number for number, row in enumerate(rows, 1) if CONTROL_CHARACTER.search("".join(row))]
    assert [(reject.record, reject.rule) for reject in parsed.rejects] == [
        (number, "csv.control_character") for number in bad
    ]
    kept = [row for number, row in enumerate(rows, 1) if number not in bad]
    assert parsed.ordinals == [number for number in range(1, len(rows) + 1) if number not in bad]
    assert parsed.columns == {
        name: [None if row[index] in nulls else row[index] for row in kept]
        for index, name in enumerate(header)
    }


# --- throughput (not asserted: measured and reported) ---


def lab_feed(rows: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(LAB_HEADER.split(","))
    for index in range(rows):
        writer.writerow(
            [
                f"FAC{rng.randint(1, 99):02d}",
                f"P{rng.randint(1, 10**6):07d}",
                f"O{index:08d}",
                f"{rng.randint(1000, 99999)}-{rng.randint(0, 9)}",
                rng.choice(["Glucose, serum", "Hemoglobin", "Sodium"]),
                f"{rng.uniform(1, 200):.1f}",
                "mg/dL",
                "70-99",
                rng.choice(["", "H", "L", "NULL"]),
                rng.choice("PFC"),
                f"2024-05-01T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00",
            ]
        )
    return buffer.getvalue().encode()


@pytest.mark.e2e
def test_throughput_200k_rows(lab: SourceSpec, capsys: pytest.CaptureFixture[str]) -> None:
    data = lab_feed(200_000)

    started = time.perf_counter()
    parsed = parse(lab, data)
    elapsed = time.perf_counter() - started

    assert parsed.record_count == 200_000
    assert parsed.rejects == []
    assert parsed.columns["order_id"][-1] == "O00199999"
    with capsys.disabled():
        print(
            f"\nparse_csv: 200,000 lab rows ({len(data) / 1e6:.1f} MB) in {elapsed:.2f} s "
            f"= {200_000 / elapsed:,.0f} rows/s"
        )


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab,"\r\n\x00 ', max_size=40))
def test_the_first_record_reader_sees_the_lines_a_string_buffer_gives(text: str) -> None:
    """`text_lines` replaces `io.StringIO(text, newline="")` under the csv module's reader: the same lines,
    endings kept (\r\n, a lone \r, \n), so the same records, line numbers and errors."""
    assert list(text_lines(text)) == io.StringIO(text, newline="").readlines()

    def records(lines) -> tuple[list[list[str]], str | None, int]:
        reader = csv.reader(lines)
        rows: list[list[str]] = []
        try:
            rows.extend(reader)
        except csv.Error as error:
            return rows, str(error), reader.line_num
        return rows, None, reader.line_num

    assert records(text_lines(text)) == records(io.StringIO(text, newline=""))
