"""The Arrow load path: Polars and standard-library CSV agree, archives become per-archive tables in order."""

from __future__ import annotations

import codecs
import csv
import io
import random
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake_assets.ingest import pipeline
from medlake_assets.ingest.bronze import bronze_schema
from medlake_assets.ingest.parsers.csv import ArrowMember, parse_csv, parse_csv_arrow
from medlake_assets.ingest.pipeline import ArchiveContext, ArchiveWork, bronze_rows, process_archive
from medlake_assets.ingest.pool import ingest_workers, process_archives
from medlake_assets.ingest.types import MemberRejected, ParsedMember
from medlake_assets.spec import ColumnSpec, CsvFormat, SourceSpec, load_source
from medlake_assets_tests.ingest.archive_builders import zip_aes
from medlake_assets_tests.ingest.test_xml import SOURCES_DIR, Patient, document

COLUMNS = [
    ColumnSpec(name="record_id", source="record_id", nullable=False),
    ColumnSpec(name="note", source="Note"),
    ColumnSpec(name="flag", source="flag"),
    ColumnSpec(name="absent", source="not_in_file"),
]
FMT = CsvFormat(null_tokens=["", "NULL"])
DEFAULTS = SOURCES_DIR / "_defaults.yaml"
NOTES = ["plain", "Glucose, serum", 'Hb "A1c"', "two\r\nlines", "one\nline", "Müller 5€", "", "NULL", " "]


def seeded_csv(seed: int, rows: int = 300) -> list[list[str]]:
    rng = random.Random(seed)
    return [["record_id", "Note", "flag", "extra"]] + [
        [f"R{index:05d}", rng.choice(NOTES), rng.choice(["H", "L", "", "NULL"]), str(rng.random())]
        for index in range(rows)
    ]


def encode(rows: list[list[str]], *, crlf: bool = True, encoding: str = "utf-8", bom: bool = False) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n" if crlf else "\n").writerows(rows)
    text = buffer.getvalue()
    if encoding == "latin-1":
        text = text.replace("€", "E")  # not in latin-1
    return (codecs.BOM_UTF8 if bom else b"") + text.encode(encoding)


def both(data: bytes, fmt: CsvFormat = FMT) -> tuple[ArrowMember, object]:
    options = {
        "member": "m.csv",
        "columns": COLUMNS,
        "fmt": fmt,
        "encoding": "utf-8",
        "fallbacks": ["latin-1"],
    }
    return parse_csv_arrow(data, **options), parse_csv(data, **options)


def as_lists(member: ArrowMember) -> dict[str, list[str | None]]:
    return {name: array.to_pylist() for name, array in member.columns.items()}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("crlf", "encoding", "bom"),
    [(True, "utf-8", False), (False, "utf-8", True), (True, "latin-1", False)],
    ids=["crlf", "lf-bom", "latin-1"],
)
def test_polars_path_reads_well_formed_csv_exactly_as_the_standard_library(
    seed: int, crlf: bool, encoding: str, bom: bool
) -> None:
    rows = seeded_csv(seed)
    fast, reference = both(encode(rows, crlf=crlf, encoding=encoding, bom=bom))

    assert fast.fast  # quotes, embedded newlines, null tokens and blanks are all well-formed here
    assert as_lists(fast) == reference.columns
    assert fast.ordinals.to_pylist() == reference.ordinals == list(range(1, len(rows)))
    assert fast.rejects == reference.rejects == []
    assert fast.columns["absent"].null_count == len(rows) - 1
    assert all(array.type == pa.large_string() for array in fast.columns.values())


def test_exact_values_through_polars() -> None:
    data = b'record_id,Note,flag,extra\r\nR1,"a, ""b""\r\nc",NULL,x\r\nR2,,"",y\r\nR3, ,L,z\r\n'

    fast, _ = both(data)

    assert fast.fast
    assert as_lists(fast) == {
        "record_id": ["R1", "R2", "R3"],
        "note": ['a, "b"\r\nc', None, " "],
        "flag": [None, None, "L"],
        "absent": [None, None, None],
    }


@pytest.mark.parametrize(
    "text",
    [
        "record_id,Note,flag\nR1,a,b\nR2,c\nR3,d,e,f\n",  # ragged: rejects with line numbers
        "record_id,Note,flag\nR1,a,b\n\nR2,c,d\n",  # a blank line is not a record
        "record_id,Note,flag\nR1,a,\nR2,c,d\n",  # an empty last field, as a short record would read
        'record_id,Note,flag\nR1,5" tube,b\nR2,c"d,e\n',  # stray quotes in unquoted fields
        'record_id,Note,flag\nR1,"ab"c,d\n',  # text after a closing quote
        "record_id,Note,flag\rR1,a,b\rR2,c,d\r",  # old-Mac line ends
        "\n\nrecord_id,Note,flag\nR1,a,b\n",  # blank lines before the header
        'record_id,Note,flag\nR1,"unterminated,b\nR2,c,d\n',
        "record_id,Note,flag\nR1,a,b\nR2,c,d,",  # an extra empty field, and no line end after it
    ],
    ids=[
        "ragged",
        "blank",
        "empty-last",
        "stray-quote",
        "after-quote",
        "cr",
        "leading-blank",
        "unterminated",
        "extra-field-at-end",
    ],
)
def test_anything_polars_might_read_differently_falls_back(text: str) -> None:
    fast, reference = both(text.encode())

    assert not fast.fast
    assert as_lists(fast) == reference.columns
    assert fast.ordinals.to_pylist() == reference.ordinals
    assert fast.rejects == reference.rejects


def test_ragged_records_keep_their_rejects_and_line_numbers() -> None:
    fast, _ = both(b'record_id,Note,flag\nR1,"x\ny",b\nR2,c\nR3,d,e\n')

    assert fast.ordinals.to_pylist() == [1, 3]
    assert [(r.record, r.line, r.rule, r.raw) for r in fast.rejects] == [(2, 4, "csv.field_count", "R2,c")]


def test_an_oversized_field_falls_back_to_the_malformed_reject() -> None:
    text = "record_id,Note,flag\nR1," + "x" * (csv.field_size_limit() + 1) + ",b\nR2,c,d\n"

    fast, reference = both(text.encode())

    assert not fast.fast
    assert [r.rule for r in fast.rejects] == ["csv.malformed"] == [r.rule for r in reference.rejects]
    assert fast.columns["record_id"].to_pylist() == ["R2"]


def test_a_field_under_the_limit_in_characters_but_not_in_bytes_stays_on_polars_path() -> None:
    long_note = "é" * (csv.field_size_limit() // 2 + 1)  # two bytes a character in UTF-8
    text = f"record_id,Note,flag\nR1,{long_note},b\nR2,c,NULL\n"

    fast, reference = both(text.encode())

    assert fast.fast
    assert len(long_note.encode()) > csv.field_size_limit() > len(long_note)
    assert (
        as_lists(fast)
        == reference.columns
        == {
            "record_id": ["R1", "R2"],
            "note": [long_note, "c"],
            "flag": ["b", None],
            "absent": [None, None],
        }
    )
    assert fast.rejects == reference.rejects == []


FIELD = st.text(alphabet='ab ,"\nNUL', max_size=6)
QUOTING = st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])


@st.composite
def csv_members(draw: st.DrawFn) -> bytes:
    """Members of three fields a record, written by `csv.writer` (well formed: Polars' path) and then
    perhaps broken by a stray quote, a lone line end or a cut record (the standard library's path)."""
    # A last field left empty is a short record to Polars: rarely, so that most members take its path.
    last = st.text(alphabet='ab ,"\nNUL', min_size=1, max_size=6) | FIELD
    rows = draw(st.lists(st.tuples(FIELD, FIELD, last), max_size=8))
    buffer = io.StringIO()
    line_end = draw(st.sampled_from(["\n", "\r\n"]))
    csv.writer(buffer, quoting=draw(QUOTING), lineterminator=line_end).writerows(
        [["record_id", "Note", "flag"], *rows]
    )
    text = buffer.getvalue()
    if draw(st.integers(0, 2)) == 0:  # one character anywhere after the header replaced or inserted
        at = draw(st.integers(min_value=len("record_id,Note,flag"), max_value=len(text)))
        stray = draw(st.sampled_from(['"', ",", "\r", "\n", "x"]))
        text = text[:at] + stray + text[at + draw(st.integers(0, 1)) :]
    return text.encode()


@settings(max_examples=400, deadline=None)
@given(csv_members(), st.sampled_from([[], ["", "NULL"], ["NULL", "N/A"], ['"'], ["a", ""]]))
def test_polars_path_and_the_standard_library_agree_on_any_member(data: bytes, nulls: list[str]) -> None:
    options = {
        "member": "m.csv",
        "columns": COLUMNS,
        "fmt": CsvFormat(null_tokens=nulls),
        "encoding": "utf-8",
    }
    try:
        reference = parse_csv(data, fallbacks=[], **options)
    except MemberRejected as rejected:  # an empty member, or a header without a declared column
        with pytest.raises(MemberRejected) as again:
            parse_csv_arrow(data, fallbacks=[], **options)
        assert again.value.rule == rejected.rule
        return
    fast = parse_csv_arrow(data, fallbacks=[], **options)
    assert as_lists(fast) == reference.columns
    assert fast.ordinals.to_pylist() == reference.ordinals
    assert fast.rejects == reference.rejects


# --- archives to tables ---


def _spec(archives: tuple[str, ...] = ("gzip", "none")) -> SourceSpec:
    return SourceSpec.model_validate(
        {
            "name": "notes",
            "description": "test notes",
            "landing": {
                "key_pattern": r"^landing/notes/(?P<yyyy>\d{4})/(?P<mm>\d{2})/(?P<dd>\d{2})/"
                r"(?P<facility>\w+)/",
                "archives": list(archives),
                "member_pattern": r"\.csv$",
                **({"password": {"env": "NOTES_ZIP_PASSWORD"}} if "zip" in archives else {}),
            },
            "format": {"kind": "csv", "null_tokens": ["", "NULL"]},
            "columns": [column.model_dump() for column in COLUMNS],
        }
    )


def _context(key: str) -> ArchiveContext:
    return ArchiveContext(key, "F1", date(2026, 1, 2), "b-1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


def _faulty_parser(monkeypatch: pytest.MonkeyPatch, member: str, *, after_pieces: int) -> None:
    """Fault injection: the parser raises on `member` after sending `after_pieces` of its pieces, with a
    message quoting a value (as Python's codec errors do)."""
    real = pipeline.parse_member_pieces

    def parse(item, spec):
        pieces = real(item, spec)
        if item.name == member:
            for _ in range(after_pieces):
                yield next(pieces)
            raise UnicodeError("invalid code point in 'SYNTHETIC-VALUE'")
        yield from pieces

    monkeypatch.setattr(pipeline, "parse_member_pieces", parse)


def test_a_parser_fault_quarantines_its_member_only_and_names_no_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 103628d fixed two such faults (found by fuzzing) that failed the whole batch's run.
    _faulty_parser(monkeypatch, "b.csv", after_pieces=0)
    members = {
        name: encode(seeded_csv(seed, rows=3)) for seed, name in enumerate(["a.csv", "b.csv", "c.csv"])
    }
    context = _context("landing/notes/2026/01/02/F1/docs.zip")
    result = process_archive(zip_aes(members, "pw"), context, _spec(("zip",)), password="pw")

    assert (result.quarantined, result.records, result.members) == (False, 6, 3)
    assert result.table.column("_member").to_pylist() == ["a.csv"] * 3 + ["c.csv"] * 3
    [reject] = result.rejects
    assert (reject.member, reject.record, reject.line, reject.rule, reject.raw) == (
        "b.csv",
        None,
        None,
        "member.parse_failed",
        None,
    )
    assert reject.reason.startswith("the parser failed on this member (UnicodeError at test_pipeline.py:")
    assert "SYNTHETIC-VALUE" not in reject.reason


def test_a_parser_fault_after_part_of_a_member_was_sent_fails_the_archive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Half a member must not load: the run fails, and its retry or an operator takes the batch up again.
    _faulty_parser(monkeypatch, "a.csv", after_pieces=1)
    context = _context("landing/notes/2026/01/02/F1/docs.zip")
    data = zip_aes({"a.csv": encode(seeded_csv(1, rows=3))}, "pw")
    with pytest.raises(UnicodeError):
        process_archive(data, context, _spec(("zip",)), password="pw")


def test_bronze_rows_add_lineage_in_schema_order_and_skip_quarantined_archives() -> None:
    spec = _spec()
    good = process_archive(
        encode(seeded_csv(1, rows=3)), _context("landing/notes/2026/01/02/F1/a.csv"), spec, password=None
    )
    empty = process_archive(b"", _context("landing/notes/2026/01/02/F1/b.csv"), spec, password=None)
    ragged = process_archive(
        b"record_id,Note,flag\nR1,a,b\nR2\n",
        _context("landing/notes/2026/01/02/F1/c.csv"),
        spec,
        password=None,
    )

    assert (good.records, good.quarantined) == (3, False)
    assert (empty.rule, empty.table) == ("csv.empty", None)
    assert ragged.records == 1 and [r.rule for r in ragged.rejects] == ["csv.field_count"]
    schema = bronze_schema(spec).as_arrow()
    rows = bronze_rows([good, empty, ragged], schema, spec)
    assert rows.schema == schema
    assert rows.column("_archive").to_pylist() == ["landing/notes/2026/01/02/F1/a.csv"] * 3 + [
        "landing/notes/2026/01/02/F1/c.csv"
    ]
    assert rows.column("_member").to_pylist() == ["a.csv"] * 3 + ["c.csv"]
    assert rows.column("_record").to_pylist() == [1, 2, 3, 1]
    assert set(rows.column("_landing_day").to_pylist()) == {date(2026, 1, 2)}
    assert set(rows.column("_batch").to_pylist()) == {"b-1"}
    assert rows.column("record_id").to_pylist() == ["R00000", "R00001", "R00002", "R1"]


def streamed_and_whole(
    data: bytes, context: ArchiveContext, spec: SourceSpec
) -> tuple[pipeline.ArchiveResult, pipeline.ArchiveResult, list[pa.Table]]:
    """An archive processed twice: its records sent to a sink piece by piece (and those pieces), and kept."""
    received: list[pa.Table] = []
    streamed = process_archive(data, context, spec, password="pw", sink=received.append)
    return streamed, process_archive(data, context, spec, password="pw"), received


@pytest.mark.parametrize(("piece_bytes", "tables"), [(2**20, 1), (1, 12)])
def test_small_members_reach_the_sink_together_in_archive_order(
    monkeypatch: pytest.MonkeyPatch, piece_bytes: int, tables: int
) -> None:
    # 12 members of 2 records (one of them ragged: a reject) and a member with no record at all: like an
    # XML archive's one-record documents, they go on as one table, not one per member (unless each is
    # large enough to go alone).
    monkeypatch.setattr(pipeline, "PIECE_BYTES", piece_bytes)
    members = {f"m{n:02d}.csv": encode(seeded_csv(n, rows=2)) for n in range(12)}
    members["m05.csv"] = b"record_id,Note,flag\nR1,a,b\nR2\n"
    members["m13.csv"] = b""
    spec, context = _spec(("zip",)), _context("landing/notes/2026/01/02/F1/docs.zip")
    streamed, whole, received = streamed_and_whole(zip_aes(members, "pw"), context, spec)

    assert (streamed.records, whole.records) == (23, 23)
    assert len(received) == tables
    assert pa.concat_tables(received).equals(whole.table)
    assert whole.table.column("_member").to_pylist() == [
        f"m{n:02d}.csv" for n in range(12) for _ in range(1 if n == 5 else 2)
    ]
    assert [(r.member, r.rule) for r in streamed.rejects] == [
        ("m05.csv", "csv.field_count"),
        ("m13.csv", "csv.empty"),
    ]
    assert streamed.rejects == whole.rejects


@pytest.mark.parametrize(
    ("listed_records", "piece_bytes", "tables"), [(8192, 2**20, 1), (2, 2**20, 1), (2, 1, 3)]
)
def test_documents_parsed_into_lists_reach_the_sink_in_archive_order(
    monkeypatch: pytest.MonkeyPatch, listed_records: int, piece_bytes: int, tables: int
) -> None:
    # One-record C-CDA documents are converted to Arrow `LISTED_RECORDS` at a time, a malformed one among
    # them rejected alone: the same table, in archive order, however they are grouped.
    monkeypatch.setattr(pipeline, "LISTED_RECORDS", listed_records)
    monkeypatch.setattr(pipeline, "PIECE_BYTES", piece_bytes)
    spec = load_source(SOURCES_DIR / "patient_documents.yaml", yaml.safe_load(DEFAULTS.read_text()))
    members = {f"ccd_{n:02d}.xml": document(Patient(family=f"Family{n}")) for n in range(7)}
    members["ccd_03.xml"] = b"<ClinicalDocument"
    context = _context("landing/patient_documents/2026/01/02/F1/docs.zip")
    streamed, whole, received = streamed_and_whole(zip_aes(members, "pw"), context, spec)

    assert (streamed.records, whole.records) == (6, 6)
    assert len(received) == tables
    assert pa.concat_tables(received).equals(whole.table)
    kept = [n for n in range(7) if n != 3]
    assert whole.table.column("_member").to_pylist() == [f"ccd_{n:02d}.xml" for n in kept]
    assert whole.table.column("family_name").to_pylist() == [f"Family{n}" for n in kept]
    assert whole.table.column("_record").to_pylist() == [1] * 6
    assert [(r.member, r.rule) for r in streamed.rejects] == [("ccd_03.xml", "xml.malformed")]


def test_listed_and_arrow_records_keep_their_order_in_one_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small listed members are held, a large one goes alone after them, an Arrow piece after those (a
    # source's members are all of one kind today; were they mixed, the order would hold).
    monkeypatch.setattr(pipeline, "LISTED_RECORDS", 2)
    received: list[pa.Table] = []
    pieces = pipeline._Pieces(["v"], received.append, 2**20)
    pieces.add(ParsedMember(columns={"v": ["a"]}, ordinals=[1]), "m0.hl7")
    pieces.add(ParsedMember(columns={"v": ["b", None]}, ordinals=[1, 2]), "m1.hl7")
    arrow = ArrowMember(columns={"v": pa.array(["c"], pa.large_string())}, ordinals=pa.array([1]), rejects=[])
    pieces.add(arrow, "m2.csv")
    pieces.add(ParsedMember(columns={"v": ["d"]}, ordinals=[3]), "m3.hl7")
    pieces.send()

    assert len(received) == 1
    assert received[0].to_pylist() == [
        {"v": "a", "_member": "m0.hl7", "_record": 1},
        {"v": "b", "_member": "m1.hl7", "_record": 1},
        {"v": None, "_member": "m1.hl7", "_record": 2},
        {"v": "c", "_member": "m2.csv", "_record": 1},
        {"v": "d", "_member": "m3.hl7", "_record": 3},
    ]
    assert all(column.num_chunks == 1 for column in received[0].columns)


def test_worker_processes_return_the_in_process_results_in_input_order() -> None:
    spec = _spec()
    work = [
        ArchiveWork(
            encode(seeded_csv(seed, rows=20 + seed)),
            _context(f"landing/notes/2026/01/02/F1/{seed}.csv"),
            spec,
            None,
        )
        for seed in range(7)
    ]

    local = [result for _, result in process_archives(work, workers=1)]
    pooled = list(process_archives(iter(work), workers=2))

    assert [item.context.key for item, _ in pooled] == [item.context.key for item in work]
    assert [result.records for _, result in pooled] == [20 + seed for seed in range(7)]
    for (_, result), reference in zip(pooled, local, strict=True):
        assert result.table.equals(reference.table)


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("3", 3)])
def test_worker_count_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    monkeypatch.setenv("MEDLAKE_INGEST_WORKERS", value)

    assert ingest_workers() == expected


def test_worker_count_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLAKE_INGEST_WORKERS", "0")

    with pytest.raises(ValueError, match="MEDLAKE_INGEST_WORKERS must be at least 1"):
        ingest_workers()


def test_archive_work_repr_shows_neither_bytes_nor_password() -> None:
    work = ArchiveWork(b"MRN-4471 SMITH", _context("landing/notes/x.zip"), _spec(), password="s3cret-pw")
    shown = repr(work)
    assert "landing/notes/x.zip" in shown
    assert "MRN-4471" not in shown and "s3cret-pw" not in shown
