"""The synthetic feed generator: archive writers, reproducibility, exact manifest counts, planned bad files.

Counts are checked against an independent reading of the archives (pyzipper, gzip, the csv module, raw MSH
lines, lxml), never against the generator's own bookkeeping. Silver-level bad records are also run through
the real silver typing and quality gate, which must reject exactly the planted rows with the manifest's rule.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import struct
import zipfile
import zlib
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
import pyzipper
from lxml import etree

from medlake_assets.silver.quality.gate import evaluate
from medlake_assets.silver.typed import apply_types
from medlake_assets.spec import SourceSpec
from medlake_dev.generate import (
    BAD_KINDS,
    MissingPasswordError,
    generate_feeds,
    pick_target_sizes,
    write_feeds,
)
from medlake_dev.generate.writers import (
    gzip_bytes,
    zip_aes,
    zip_bomb,
    zip_plain,
    zip_with_raw_names,
    zip_zipcrypto,
)

DAY = date(2026, 11, 26)
PASSWORD = "synthetic-Pa55"
ENV = {"MEDLAKE_ARCHIVE_PASSWORD": PASSWORD}
MEMBERS = {"a.csv": b"x,y\n" + b"1,2\n" * 2000, "b.csv": "caf\u00e9,\u00e9\n".encode()}

# The rule each bad kind must be reported with (the contract with the pipeline).
EXPECTED_RULES = {
    "wrong_password": "archive.bad_password",
    "corrupt_zip": "archive.corrupt",
    "truncated_zip": "archive.corrupt",
    "truncated_gzip": "archive.corrupt",
    "zip_bomb": "archive.bomb",
    "path_traversal": "archive.unsafe_member_name",
    "absolute_path": "archive.unsafe_member_name",
    "empty_archive": "archive.empty",
    "csv_missing_column": "csv.missing_column",
    "hl7_no_msh": "hl7.no_msh",
    "no_source": "landing.no_source",
    "csv_bad_row": "csv.field_count",
    "hl7_bad_message": "hl7.malformed_msh",
    "xml_entity_bomb": "xml.doctype",
    "xml_external_entity": "xml.doctype",
    "xml_malformed": "xml.malformed",
    "silver_bad_status": "check.allowed:status",
    "silver_bad_result_status": "check.allowed:result_status",
    "silver_bad_test_code": "check.regex:test_code",
    "silver_bad_timestamp": "cast.timestamp",
    "silver_missing_required": "check.not_null:bed_id",
}
RECORD_LEVEL = {"csv_bad_row", "hl7_bad_message", "xml_entity_bomb", "xml_external_entity", "xml_malformed"}
SILVER_KINDS = {name for name in EXPECTED_RULES if name.startswith("silver_")}
# What silver accepts, written out here rather than read from the generator or the metadata.
BED_STATUSES = {"occupied", "available", "cleaning", "blocked"}
LOINC = re.compile(r"\d{1,7}-\d")
HL7_TS = re.compile(rb"\d{4}(\d{2}){0,5}(\.\d{1,4})?([+-]\d{4})?")
LINEAGE = {
    "_archive": pl.String(),
    "_member": pl.String(),
    "_record": pl.Int64(),
    "_facility": pl.String(),
    "_landing_day": pl.Date(),
    "_ingested_at": pl.Datetime("us", "UTC"),
    "_batch": pl.String(),
}


def generate(**kwargs) -> tuple[dict, dict[str, bytes]]:
    store: dict[str, bytes] = {}
    options = {"day": DAY, "environ": ENV, "size_scale": 0.02, **kwargs}
    manifest = generate_feeds(store.__setitem__, **options)
    return manifest, store


def central_directory(data: bytes) -> list[tuple[int, int, bytes]]:
    """(flag bits, compression method, extra field) of each entry, read from the raw central directory."""
    entries, offset = [], data.rfind(b"PK\x05\x06")
    count, _, start = struct.unpack_from("<HII", data, offset + 10)
    for _ in range(count):
        flags, method = struct.unpack_from("<HH", data, start + 8)
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, start + 28)
        extra = data[start + 46 + name_length : start + 46 + name_length + extra_length]
        entries.append((flags, method, extra))
        start += 46 + name_length + extra_length + comment_length
    return entries


def unpack(key: str, data: bytes, password: str = PASSWORD) -> dict[str, bytes]:
    if key.endswith(".gz"):
        return {key.rsplit("/", 1)[1].removesuffix(".gz"): gzip.decompress(data)}
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        archive.setpassword(password.encode())
        return {name: archive.read(name) for name in archive.namelist()}


def decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def count_csv(data: bytes) -> tuple[int, int]:
    """(good, bad) rows: a good row has as many fields as the header."""
    rows = [row for row in csv.reader(io.StringIO(decode(data), newline="")) if row]
    good = sum(len(row) == len(rows[0]) for row in rows[1:])
    return good, len(rows) - 1 - good


def hl7_lines(data: bytes) -> list[bytes]:
    return re.split(rb"\r\n|\r|\n", data)


def count_hl7(data: bytes) -> tuple[int, int]:
    """(good, bad) messages: a good MSH has its encoding characters, MSH-9 and MSH-10."""
    headers = [line.split(b"|") for line in hl7_lines(data) if line.startswith(b"MSH")]
    good = sum(
        len(fields) > 9 and fields[1] == b"^~\\&" and bool(fields[8] and fields[9]) for fields in headers
    )
    return good, len(headers) - good


def parse_xml(data: bytes) -> etree._Element | None:
    """The document root, or None for one a safe pipeline must reject (a DOCTYPE, or not well formed)."""
    if b"<!DOCTYPE" in data:
        return None
    try:
        return etree.fromstring(
            data, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        )
    except etree.XMLSyntaxError:
        return None


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(decode(data), newline="")))


def is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def silver_rejects(row: dict[str, str]) -> bool:
    """Whether silver must reject a well-formed CSV row: the checks, written out independently."""
    if "bed_id" in row:
        return (
            not row["bed_id"]
            or row["status"].strip().lower() not in BED_STATUSES
            or not is_iso(row["updated_at"])
        )
    return (
        row["result_status"].strip().upper() not in {"P", "F", "C"}
        or not LOINC.fullmatch(row["test_code"])
        or not is_iso(row["result_ts"])
    )


def msh_headers(data: bytes) -> list[list[bytes]]:
    return [line.split(b"|") for line in hl7_lines(data) if line.startswith(b"MSH|^~\\&|")]


def count_silver(source: str, members: dict[str, bytes]) -> int:
    """Records bronze loads and silver must reject (bad values in well-formed records)."""
    bad = 0
    for data in members.values():
        if source in {"lab_results", "bed_census"}:
            header = next(csv.reader(io.StringIO(decode(data), newline="")))
            bad += sum(len(row) == len(header) and silver_rejects(row) for row in csv_rows(data))
        elif source == "adt_events":
            bad += sum(not HL7_TS.fullmatch(fields[6]) for fields in msh_headers(data) if len(fields) > 9)
    return bad


def bronze_frame(source: str, members: dict[str, bytes], spec: SourceSpec) -> pl.DataFrame:
    """The well-formed records of an archive as bronze holds them: strings, "" as null, lineage columns."""
    rows: list[dict[str, str | None]] = []
    for name, data in members.items():
        if source == "adt_events":
            records = [
                {
                    "message_control_id": fields[9].decode(),
                    "message_type": fields[8].split(b"^")[0].decode(),
                    "trigger_event": fields[8].split(b"^")[1].decode(),
                    "message_ts": fields[6].decode(),
                    "patient_id": "P",
                }
                for fields in msh_headers(data)
            ]
        else:
            width = len(next(csv.reader(io.StringIO(decode(data), newline=""))))
            records = [row for row in csv_rows(data) if None not in row and len(row) == width]
        for ordinal, record in enumerate(records, start=1):
            rows.append({**record, "_archive": "a", "_member": name, "_record": ordinal, "_facility": "F"})
    schema = dict.fromkeys(spec.column_names(), pl.String()) | LINEAGE
    # Every column built from the rows themselves (no broadcast literals), as a table scan gives them.
    frame = pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=schema)
    return frame.with_columns(pl.col(spec.column_names()).replace("", None))


def silver_rules(frame: pl.DataFrame, spec: SourceSpec) -> list[str]:
    """The rule of every row silver rejects, as silver.load routes them: a failed cast, else the gate."""
    typed = apply_types(frame, spec)
    cast_failed = typed.failures["_row"].unique()
    clean = typed.frame.with_row_index("_row").filter(~pl.col("_row").is_in(cast_failed.implode()))
    gate = evaluate(clean.drop("_row"), spec)
    return sorted([*typed.failures["rule"], *gate.rejected["rule"]])


def count_records(source: str, members: dict[str, bytes]) -> tuple[int, int]:
    good = bad = 0
    for data in members.values():
        if source in {"lab_results", "bed_census"}:
            counted = count_csv(data)
        elif source == "adt_events":
            counted = count_hl7(data)
        else:
            counted = (1, 0) if parse_xml(data) is not None else (0, 1)
        good, bad = good + counted[0], bad + counted[1]
    return good, bad


@pytest.fixture(scope="module")
def clean() -> tuple[dict, dict[str, bytes]]:
    return generate(archives=80, seed=11, size_scale=0.05)


@pytest.fixture(scope="module")
def with_bad_files() -> tuple[dict, dict[str, bytes]]:
    return generate(archives=60, seed=5, bad_rate=0.5)


# ------------------------------------------------------------------------------------------------ writers


def test_zip_aes_is_repeatable_aes256_and_needs_the_password() -> None:
    first = zip_aes(MEMBERS, PASSWORD, salt_seed=b"archive-1")
    assert first == zip_aes(MEMBERS, PASSWORD, salt_seed=b"archive-1")
    assert first != zip_aes(MEMBERS, PASSWORD, salt_seed=b"archive-2")
    entries = central_directory(first)
    # Method 99 with the WinZip AES extra field (0x9901): vendor AE, strength 3 = 256 bits, then deflate.
    assert [(flags & 1, method) for flags, method, _ in entries] == [(1, 99), (1, 99)]
    assert all(extra[:4] == b"\x01\x99\x07\x00" and extra[8:11] == b"\x03\x08\x00" for *_, extra in entries)
    assert unpack("x.zip", first) == MEMBERS
    with pytest.raises(RuntimeError, match="Bad password"):
        unpack("x.zip", first, password="wrong")
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert [info.date_time for info in archive.infolist()] == [(2026, 1, 1, 0, 0, 0)] * 2


def test_zip_zipcrypto_is_traditional_encryption_read_by_pyzipper_and_the_standard_library() -> None:
    data = zip_zipcrypto(MEMBERS, PASSWORD)
    entries = central_directory(data)
    assert [(flags & 1, method) for flags, method, _ in entries] == [(1, 8), (1, 8)]
    assert all(b"\x01\x99" not in extra for *_, extra in entries)
    assert unpack("x.zip", data) == MEMBERS
    # The standard library decrypts ZipCrypto only (it cannot read AES), so this proves the scheme.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {name: archive.read(name, pwd=PASSWORD.encode()) for name in archive.namelist()} == MEMBERS
        # ZipCrypto checks a password against one byte of its (random) header: 1 wrong password in 256 gets
        # past that check, and then fails when the data does not inflate or its CRC does not match.
        with pytest.raises((RuntimeError, zlib.error, zipfile.BadZipFile)):
            archive.read("a.csv", pwd=b"wrong")
    # libarchive draws the encryption headers at random: same size, different ciphertext.
    assert len(zip_zipcrypto(MEMBERS, PASSWORD)) == len(data)


def test_zip_with_raw_names_keeps_unsafe_names_plain_and_encrypted() -> None:
    names = {"../evil.csv": b"a", "/etc/evil.csv": b"b", "ok.csv": b"c"}
    for data in (zip_with_raw_names(names), zip_with_raw_names(names, PASSWORD)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.namelist() == list(names)
    assert unpack("x.zip", zip_with_raw_names(names, PASSWORD)) == names


def test_zip_bomb_has_a_huge_ratio_and_plain_zeros() -> None:
    size = 16 * 1024**2
    data = zip_bomb(PASSWORD, size, name="bomb.csv")
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        (info,) = archive.infolist()
        archive.setpassword(PASSWORD.encode())
        with archive.open(info) as stream:
            head = stream.read(4096)
    assert (info.filename, info.file_size, head) == ("bomb.csv", size, bytes(4096))
    assert size / len(data) > 500
    assert zip_bomb(None, 1024**2) == zip_bomb(None, 1024**2)


def test_gzip_and_plain_zip_are_repeatable() -> None:
    assert gzip_bytes(b"a,b\n1,2\n", name="x.csv") == gzip_bytes(b"a,b\n1,2\n", name="x.csv")
    assert gzip.decompress(gzip_bytes(b"a,b\n1,2\n")) == b"a,b\n1,2\n"
    assert len(zip_plain({})) == 22  # the end-of-central-directory record alone
    assert zip_plain(MEMBERS) == zip_plain(MEMBERS)


# ------------------------------------------------------------------------------------------------ sizes


def test_target_sizes_follow_the_production_shape() -> None:
    sizes = pick_target_sizes(300, random.Random(42))
    small = [size for size in sizes if 20_000 <= size <= 1_500_000]
    large = [size for size in sizes if size > 1_500_000]
    assert (len(small), len(large)) == (297, 3)
    assert all(size <= 40_000_000 for size in large)
    median = sorted(sizes)[150]
    assert 100_000 <= median <= 220_000
    scaled = pick_target_sizes(300, random.Random(42), size_scale=0.02)
    assert all(abs(s - round(f * 0.02)) <= 1 for s, f in zip(scaled, sizes, strict=True))


# ------------------------------------------------------------------------------------------------ generator


def test_same_arguments_give_the_same_archives_and_a_new_seed_does_not() -> None:
    first, first_store = generate(archives=40, seed=3)
    second, second_store = generate(archives=40, seed=3)
    assert first == second
    assert list(first_store) == list(second_store)
    packings = {entry["key"]: entry["packing"] for entry in first["archives"]}
    for key, data in first_store.items():
        if packings[key] == "zipcrypto":
            # Only libarchive's random ZipCrypto headers differ: same size and same decrypted members.
            assert len(data) == len(second_store[key])
            assert unpack(key, data) == unpack(key, second_store[key])
        else:
            assert data == second_store[key], key
    third, third_store = generate(archives=40, seed=4)
    assert third["archives"] != first["archives"]
    assert set(third_store) != set(first_store)


def test_every_clean_archive_opens_and_matches_its_source_metadata(
    clean: tuple[dict, dict[str, bytes]], sources: dict[str, SourceSpec]
) -> None:
    manifest, store = clean
    assert len(store) == 80 and manifest["bad_files"] == []
    control_ids: list[bytes] = []
    for entry in manifest["archives"]:
        key, source = entry["key"], entry["source"]
        spec = sources[source]
        assert spec.landing.key_regex.match(key), key
        assert key.split("/")[5] == entry["facility"]
        members = unpack(key, store[key])
        assert len(members) == entry["members"] >= 1
        assert all(spec.landing.member_regex.search(name) for name in members)
        assert ("gzip" if entry["packing"] == "gzip" else "zip") in spec.landing.archives
        if entry["packing"] != "gzip":
            methods = {method for _, method, _ in central_directory(store[key])}
            assert methods == ({99} if entry["packing"] == "aes" else {8})
        for data in members.values():
            if source in {"lab_results", "bed_census"}:
                header = next(csv.reader(io.StringIO(decode(data), newline="")))
                assert header == [column.source for column in spec.columns]
            elif source == "adt_events":
                control_ids += [line.split(b"|")[9] for line in hl7_lines(data) if line.startswith(b"MSH|")]
            else:
                root = parse_xml(data)
                assert root is not None
                namespaces = spec.format.namespaces
                for column in spec.columns:
                    value = root.xpath(column.source, namespaces=namespaces)
                    assert column.nullable or value not in ("", "^"), column.name
    assert len(control_ids) == len(set(control_ids)) == manifest["sources"]["adt_events"]["records"]


def test_manifest_counts_equal_an_independent_count(with_bad_files: tuple[dict, dict[str, bytes]]) -> None:
    manifest, store = with_bad_files
    expected = {source: Counter() for source in manifest["sources"]}
    for entry in manifest["archives"]:
        if entry["source"] is None:
            continue
        counts = expected[entry["source"]]
        counts["archives"] += 1
        counts["bytes"] += len(store[entry["key"]])
        if entry["expect"] == "quarantined":
            counts["archives_quarantined"] += 1
            continue
        members = unpack(entry["key"], store[entry["key"]])
        good, bad = count_records(entry["source"], members)
        silver = count_silver(entry["source"], members)
        assert (good, bad, silver) == (
            entry["records"],
            entry["rejected_records"],
            entry["silver_rejected_records"],
        ), entry["key"]
        counts.update(
            archives_loaded=1,
            members=len(members),
            records=good,
            rejected_records=bad,
            silver_rejected_records=silver,
        )
    for source, counts in manifest["sources"].items():
        assert counts == {name: expected[source][name] for name in counts}, source
    totals = manifest["totals"]
    assert totals["archives"] == 60 == len(store)
    for name in ("records", "rejected_records", "silver_rejected_records"):
        assert totals[name] == sum(counts[name] for counts in manifest["sources"].values()), name
    silver_files = [item for item in manifest["bad_files"] if item["stage"] == "silver"]
    assert totals["silver_rejected_records"] == len(silver_files) > 0
    assert totals["bytes"] == sum(map(len, store.values()))
    assert json.loads(json.dumps(manifest)) == manifest


def test_clean_counts_are_exact_and_awkward_variations_are_present(
    clean: tuple[dict, dict[str, bytes]],
) -> None:
    manifest, store = clean
    seen: Counter[str] = Counter()
    records: Counter[str] = Counter()
    for entry in manifest["archives"]:
        members = unpack(entry["key"], store[entry["key"]])
        good, bad = count_records(entry["source"], members)
        assert (bad, count_silver(entry["source"], members)) == (0, 0)
        assert entry["silver_rejected_records"] == 0
        records[entry["source"]] += good
        for data in members.values():
            seen["bom"] += data.startswith(b"\xef\xbb\xbf")
            seen["crlf"] += entry["source"] in {"lab_results", "bed_census"} and b"\r\n" in data
            seen["quoted newline"] += entry["source"] == "lab_results" and b"\n(fasting" in data
            seen["latin-1"] += b"\xe9" in data or b"\xfc" in data  # é or ü in a single byte
            seen["8859/1"] += b"|8859/1" in data
            seen["lf messages"] += data.startswith((b"MSH", b"FHS")) and b"\r" not in data
            seen["batch envelope"] += data.startswith(b"FHS|")
            seen["z-segment"] += b"\rZPV|" in data or b"\nZPV|" in data
            seen["escape"] += b"\\T\\" in data
            seen["xml latin-1"] += data.startswith(b'<?xml version="1.0" encoding="ISO-8859-1"?>')
    assert {name: manifest["sources"][name]["records"] for name in records} == dict(records)
    assert {name for name, count in seen.items() if count} == set(seen), seen


def test_every_bad_kind_appears_and_is_really_bad(
    with_bad_files: tuple[dict, dict[str, bytes]], sources: dict[str, SourceSpec]
) -> None:
    manifest, store = with_bad_files
    bad_files = manifest["bad_files"]
    assert len(bad_files) == 30
    assert (
        Counter(item["kind"] for item in bad_files).keys()
        == EXPECTED_RULES.keys()
        == {k.name for k in BAD_KINDS}
    )
    for item in bad_files:
        key, kind, data = item["key"], item["kind"], store[item["key"]]
        assert item["rule"] == EXPECTED_RULES[kind]
        assert item["stage"] == ("silver" if kind in SILVER_KINDS else "bronze")
        assert item["expect"] == ("loaded" if kind in RECORD_LEVEL | SILVER_KINDS else "quarantined")
        assert item["rejected_records"] == (1 if kind in RECORD_LEVEL | SILVER_KINDS else 0)
        if kind in SILVER_KINDS:
            members = unpack(key, data)
            # Bronze loads every record of it; silver rejects exactly one.
            assert count_records(item["source"], members)[1] == 0
            assert count_silver(item["source"], members) == 1
            planted = {
                "silver_bad_status": ("status", "broken"),
                "silver_bad_result_status": ("result_status", "X"),
                "silver_bad_test_code": ("test_code", "GLU"),
                "silver_bad_timestamp": ("result_ts", "2026-13-45T99:00:00"),
                "silver_missing_required": ("bed_id", ""),
            }[kind]
            if item["source"] == "adt_events":
                stamps = [fields[6] for member in members.values() for fields in msh_headers(member)]
                assert stamps.count(b"2026BAD") == 1
            else:
                values = [row[planted[0]] for member in members.values() for row in csv_rows(member)]
                assert values.count(planted[1]) == 1
        elif kind == "no_source":
            assert item["source"] is None
            assert not any(spec.landing.key_regex.match(key) for spec in sources.values())
        elif kind == "wrong_password":
            with pytest.raises(RuntimeError, match="Bad password"):
                unpack(key, data)
        elif kind == "corrupt_zip":
            with pytest.raises((pyzipper.BadZipFile, zlib.error)):
                unpack(key, data)
        elif kind == "truncated_zip":
            with pytest.raises(pyzipper.BadZipFile):
                unpack(key, data)
        elif kind == "truncated_gzip":
            with pytest.raises(EOFError):
                gzip.decompress(data)
        elif kind == "zip_bomb":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                ratio = sum(info.file_size for info in archive.infolist()) / len(data)
            assert ratio > sources[item["source"]].landing.limits.max_ratio
        elif kind in {"path_traversal", "absolute_path"}:
            prefix = "../" if kind == "path_traversal" else "/"
            assert sum(name.startswith(prefix) for name in unpack(key, data)) == 1
        elif kind == "empty_archive":
            assert unpack(key, data) == {}
        elif kind == "csv_missing_column":
            dropped = {"lab_results": "order_id", "bed_census": "bed_id"}[item["source"]]
            for member in unpack(key, data).values():
                header = next(csv.reader(io.StringIO(decode(member), newline="")))
                assert dropped not in header and len(header) == len(sources[item["source"]].columns) - 1
        elif kind == "hl7_no_msh":
            lines = [line for member in unpack(key, data).values() for line in hl7_lines(member) if line]
            assert not any(line.startswith(b"MSH") for line in lines)
            assert any(line.startswith(b"PID|") for line in lines)
        else:
            members = unpack(key, data)
            assert count_records(item["source"], members)[1] == 1
            bad_xml = [member for member in members.values() if parse_xml(member) is None]
            if kind == "xml_entity_bomb":
                assert b'<!ENTITY lol9 "&lol8;' in bad_xml[0]
            elif kind == "xml_external_entity":
                assert b'SYSTEM "file:///etc/passwd"' in bad_xml[0]
            elif kind == "xml_malformed":
                assert b"<!DOCTYPE" not in bad_xml[0] and not bad_xml[0].rstrip().endswith(
                    b"</ClinicalDocument>"
                )
    timestamp_sources = {item["source"] for item in bad_files if item["kind"] == "silver_bad_timestamp"}
    assert timestamp_sources == {"adt_events", "lab_results"}
    no_source_keys = [item["key"] for item in bad_files if item["kind"] == "no_source"]
    assert any(key.startswith("landing/unknown_feed/") for key in no_source_keys)
    assert any(key.startswith("landing/") and key.endswith(".rar") for key in no_source_keys)


def test_silver_rejects_exactly_the_planted_records_with_their_rule(
    with_bad_files: tuple[dict, dict[str, bytes]], sources: dict[str, SourceSpec]
) -> None:
    manifest, store = with_bad_files
    rules: dict[str, list[str]] = {source: [] for source in manifest["sources"]}
    frames: dict[str, list[pl.DataFrame]] = {source: [] for source in manifest["sources"]}
    for entry in manifest["archives"]:
        source = entry["source"]
        if entry["expect"] == "loaded" and source != "patient_documents":
            frame = bronze_frame(source, unpack(entry["key"], store[entry["key"]]), sources[source])
            found = silver_rules(frame, sources[source])
            assert len(found) == entry["silver_rejected_records"], entry["key"]
            assert found == ([EXPECTED_RULES[entry["bad"]]] if found else []), entry["key"]
            rules[source] += found
            frames[source].append(frame.with_columns(pl.lit(entry["key"]).alias("_archive")))
    planted = {source: [] for source in manifest["sources"]}
    for item in manifest["bad_files"]:
        if item["stage"] == "silver":
            planted[item["source"]].append(item["rule"])
    for source in ("adt_events", "lab_results", "bed_census"):
        assert sorted(rules[source]) == sorted(planted[source]), source
        assert len(rules[source]) == manifest["sources"][source]["silver_rejected_records"]
        # The whole day as one batch: no conflicts between archives either (e.g. upsert keys).
        # One chunk, as silver's `pl.from_arrow` scan gives it.
        day = pl.concat(frames[source], how="diagonal_relaxed", rechunk=True)
        assert silver_rules(day, sources[source]) == sorted(planted[source]), source


def test_good_upsert_keys_never_conflict_within_a_day(clean: tuple[dict, dict[str, bytes]]) -> None:
    """Two rows with the same key and version but different values would make an upsert batch ambiguous."""
    manifest, store = clean
    keys = {
        "bed_census": ("facility_id", "bed_id", "updated_at"),
        "lab_results": ("facility_id", "order_id", "test_code", "result_ts", "result_status"),
    }
    seen: dict[tuple, dict[str, str]] = {}
    checked = Counter()
    for entry in manifest["archives"]:
        if entry["source"] not in keys:
            continue
        for data in unpack(entry["key"], store[entry["key"]]).values():
            for row in csv_rows(data):
                key = (entry["source"], *(row[name] for name in keys[entry["source"]]))
                assert seen.setdefault(key, row) == row, key
                checked[entry["source"]] += 1
    assert checked == {source: manifest["sources"][source]["records"] for source in keys}


def test_per_facility_password_overrides_the_shared_one() -> None:
    environ = {"MEDLAKE_ARCHIVE_PASSWORD": "alpha", "MEDLAKE_ARCHIVE_PASSWORD__F0003": "beta"}
    manifest, store = generate(archives=40, facilities=4, seed=9, environ=environ)
    zips = [entry for entry in manifest["archives"] if entry["packing"] in {"aes", "zipcrypto"}]
    assert {entry["facility"] for entry in zips} == {"F0001", "F0002", "F0003", "F0004"}
    for entry in zips:
        right, wrong = ("beta", "alpha") if entry["facility"] == "F0003" else ("alpha", "beta")
        assert len(unpack(entry["key"], store[entry["key"]], password=right)) == entry["members"]
        # ZipCrypto checks a password with one byte: 1 wrong password in 256 passes the check and then
        # fails on the data instead (its encryption header is random, so this varies between runs).
        refused = (
            (RuntimeError,) if entry["packing"] == "aes" else (RuntimeError, zipfile.BadZipFile, zlib.error)
        )
        with pytest.raises(refused):
            unpack(entry["key"], store[entry["key"]], password=wrong)


def test_a_missing_password_is_a_clear_error_before_anything_is_written() -> None:
    store: dict[str, bytes] = {}
    with pytest.raises(
        MissingPasswordError, match=r"set MEDLAKE_ARCHIVE_PASSWORD__F000\d or MEDLAKE_ARCHIVE_PASSWORD$"
    ):
        generate_feeds(store.__setitem__, archives=10, day=DAY, environ={"OTHER": "x"})
    assert store == {}


def test_write_feeds_writes_the_tree_and_the_manifest(tmp_path: Path) -> None:
    manifest = write_feeds(
        tmp_path, archives=12, seed=2, day=DAY, size_scale=0.02, environ=ENV, bad_rate=0.25
    )
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    assert written == sorted([entry["key"] for entry in manifest["archives"]] + ["manifest.json"])
    for entry in manifest["archives"]:
        assert (tmp_path / entry["key"]).stat().st_size == entry["bytes"]
