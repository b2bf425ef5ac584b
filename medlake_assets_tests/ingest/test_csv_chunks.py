"""A CSV member read in small pieces gives exactly what reading it whole gives: values, ordinals, rejects
(record numbers and physical lines), on both the Polars and the standard library paths."""

from __future__ import annotations

import codecs
import random
import tracemalloc

import pyarrow as pa
import pytest

from medlake_assets.ingest.parsers.csv import ArrowMember, parse_csv_arrow, parse_csv_arrow_chunks
from medlake_assets.ingest.types import MemberRejected
from medlake_assets.spec import ColumnSpec, CsvFormat
from medlake_assets_tests.ingest.test_pipeline import COLUMNS, FMT, encode, seeded_csv

OPTIONS = {"member": "m.csv", "columns": COLUMNS, "encoding": "utf-8", "fallbacks": ["latin-1"]}


def whole_and_pieces(data: bytes, fmt: CsvFormat, chunk_chars: int) -> tuple[ArrowMember, list[ArrowMember]]:
    whole = parse_csv_arrow(data, fmt=fmt, **OPTIONS)  # type: ignore[arg-type]
    pieces = list(parse_csv_arrow_chunks(data, fmt=fmt, chunk_chars=chunk_chars, **OPTIONS))  # type: ignore[arg-type]
    return whole, pieces


def joined(pieces: list[ArrowMember]) -> tuple[dict, list, list]:
    columns = {
        name: pa.chunked_array([piece.columns[name] for piece in pieces]).to_pylist()
        for name in pieces[0].columns
    }
    ordinals = pa.chunked_array([piece.ordinals for piece in pieces]).to_pylist()
    return columns, ordinals, [reject for piece in pieces for reject in piece.rejects]


def assert_same(whole: ArrowMember, pieces: list[ArrowMember]) -> None:
    columns, ordinals, rejects = joined(pieces)
    assert columns == {name: array.to_pylist() for name, array in whole.columns.items()}
    assert ordinals == whole.ordinals.to_pylist()
    assert rejects == whole.rejects


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("crlf", [True, False], ids=["crlf", "lf"])
def test_well_formed_member_in_pieces_equals_whole(seed: int, crlf: bool) -> None:
    """Quoted fields with embedded newlines, quotes, null tokens, non-ASCII text: cut only between records."""
    data = encode(seeded_csv(seed, rows=2000), crlf=crlf, bom=seed == 1)
    whole, pieces = whole_and_pieces(data, FMT, chunk_chars=997)
    assert len(pieces) > 40
    assert whole.fast and all(piece.fast for piece in pieces)
    assert_same(whole, pieces)


def irregular(seed: int) -> bytes:
    """Ragged records, blank lines, a lone carriage return and control characters among regular records."""
    rng = random.Random(seed)
    lines = ["record_id,Note,flag,extra"]
    for index in range(1500):
        roll = rng.random()
        if roll < 0.03:
            lines.append(f"R{index},too,many,fields,here")
        elif roll < 0.06:
            lines.append("")
        elif roll < 0.08:
            lines.append(f"R{index},bell\x07here,H,1")
        elif roll < 0.09:
            lines.append(f'R{index},"quoted\nnote",L,2')
        else:
            lines.append(f"R{index},note {index},{rng.choice(['H', 'L', 'NULL'])},{rng.random()}")
    return ("\n".join(lines) + "\n\n\n" + "R-last,lone\rcr,H,3\n").encode()


@pytest.mark.parametrize("policy", ["reject", "strip"])
@pytest.mark.parametrize("seed", range(3))
def test_irregular_member_in_pieces_equals_whole(seed: int, policy: str) -> None:
    fmt = FMT.model_copy(update={"control_characters": policy})
    whole, pieces = whole_and_pieces(irregular(seed), fmt, chunk_chars=1500)
    assert len(pieces) > 20
    assert not whole.fast and whole.rejects  # the standard library path, with field-count rejects
    assert_same(whole, pieces)


def test_headerless_member_and_pieces_of_blank_lines() -> None:
    columns = [ColumnSpec(name="a", source="1", nullable=False), ColumnSpec(name="b", source="2")]
    fmt = CsvFormat(header=False)
    data = ("x,1\n" * 300 + "\n" * 3000 + "y,2\n" * 300).encode()
    options = {**OPTIONS, "columns": columns}
    whole = parse_csv_arrow(data, fmt=fmt, **options)  # type: ignore[arg-type]
    pieces = list(parse_csv_arrow_chunks(data, fmt=fmt, chunk_chars=500, **options))  # type: ignore[arg-type]
    assert len(pieces) > 10
    assert_same(whole, pieces)
    assert whole.record_count == 600


def test_stray_quote_member_is_one_piece_and_bad_header_raises_first() -> None:
    data = ("record_id,Note,flag\n" + 'R1,5" tall,H\n' * 500).encode()
    whole, pieces = whole_and_pieces(data, FMT, chunk_chars=100)
    assert len(pieces) == 1  # quote parity says nothing here: no cut
    assert_same(whole, pieces)
    with pytest.raises(MemberRejected, match="csv.missing_column"):
        next(parse_csv_arrow_chunks(b"other\n" + b"1\n" * 500, fmt=FMT, chunk_chars=100, **OPTIONS))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("encoding", "fallbacks", "prefix"),
    [
        ("cp1252", [], b""),  # declared single-byte encoding: cut on its bytes
        ("utf-8", ["cp1252"], b""),  # not UTF-8: the fallback decodes it whole
        ("utf-8", [], codecs.BOM_UTF16_LE),  # another encoding's byte-order mark: decoded whole
    ],
    ids=["cp1252", "fallback", "utf16-bom"],
)
def test_member_in_any_encoding_in_pieces_equals_whole(
    encoding: str, fallbacks: list[str], prefix: bytes
) -> None:
    rows = seeded_csv(5, rows=1500)
    if prefix:
        data = prefix + encode(rows, encoding="utf-16-le")
    else:
        data = encode(rows, encoding="cp1252" if encoding == "cp1252" or fallbacks else "utf-8")
    options = {**OPTIONS, "encoding": encoding, "fallbacks": fallbacks}
    whole = parse_csv_arrow(data, fmt=FMT, **options)  # type: ignore[arg-type]
    pieces = list(parse_csv_arrow_chunks(data, fmt=FMT, chunk_chars=2000, **options))  # type: ignore[arg-type]
    assert len(pieces) > 20
    assert_same(whole, pieces)
    assert whole.record_count == 1500
    assert "Müller 5€" in whole.columns["note"].to_pylist()


def test_a_large_member_is_never_decoded_whole() -> None:
    """The text a parse holds is one piece: a member cut on its bytes is decoded a piece at a time (a 40 MB
    lab archive is ~460 MB of CSV, and its text beside its bytes was the bronze run's largest cost)."""
    data = encode(seeded_csv(2, rows=120_000), bom=True)
    list(parse_csv_arrow_chunks(data[:100_000], fmt=FMT, chunk_chars=64 * 1024, **OPTIONS))  # type: ignore[arg-type]  # imports done
    tracemalloc.start()
    try:
        pieces = list(parse_csv_arrow_chunks(data, fmt=FMT, chunk_chars=64 * 1024, **OPTIONS))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pieces) > 20 and sum(piece.record_count for piece in pieces) == 120_000
    assert peak < len(data) / 4, f"peak {peak:,} bytes of Python objects for a member of {len(data):,}"
