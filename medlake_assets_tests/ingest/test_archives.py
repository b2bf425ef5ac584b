"""Unpacking archives: both engines give the same members and the same rule codes on every case."""

from __future__ import annotations

import io
import os
import posixpath
import random
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import pyzipper

from medlake_assets.ingest.archives import decrypt_floor, detect_kind, read_members
from medlake_assets.ingest.types import ArchiveRejected, Member
from medlake_assets.spec.models import ArchiveLimits
from medlake_assets_tests.ingest.archive_builders import (
    gzip_bytes,
    zip_aes,
    zip_bomb,
    zip_entries,
    zip_plain,
    zip_raw_names,
    zip_zipcrypto,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "synthetic-Pa55word-7f3c"
KEY = "landing/lab_results/2024/05/17/FAC001/lab_results_20240517.zip"
ALL_KINDS = ("zip", "gzip", "none")
ANY = re.compile(".*")
LIMITS = ArchiveLimits()


@pytest.fixture(params=["libarchive", "pyzipper"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


def csv_text(rows: int, seed: int) -> bytes:
    """Synthetic lab-result rows (seeded), about 60 bytes each."""
    rnd = random.Random(seed)
    lines = ["patient_id,test_code,value,unit,observed_at"]
    lines += [
        f"P{rnd.randrange(10**7):07d},{rnd.choice(['GLU', 'HGB', 'K', 'NA'])},{rnd.uniform(0, 300):.2f},"
        f"mg/dL,2024-05-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00"
        for _ in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


MEMBERS = {
    "results.csv": csv_text(50, seed=1),
    "données/résultats-été.csv": csv_text(20, seed=2),
    "検査/結果.csv": csv_text(5, seed=3),
    "big/lab_results_full.csv": csv_text(25_000, seed=4),
    "empty.csv": b"",
    "notes.txt": "Notes ünïcode\n".encode(),
}
BUILDERS: dict[str, Callable[[dict[str, bytes]], bytes]] = {
    "aes": lambda members: zip_aes(members, PASSWORD),
    "zipcrypto": lambda members: zip_zipcrypto(members, PASSWORD),
    "plain": zip_plain,
}


def read(
    data: bytes,
    engine: str,
    *,
    name: str = KEY,
    password: str | None = PASSWORD,
    member_regex: re.Pattern[str] = ANY,
    limits: ArchiveLimits = LIMITS,
    accepted: tuple[str, ...] = ALL_KINDS,
) -> list[Member]:
    return read_members(
        data,
        name=name,
        accepted=accepted,
        password=password,
        member_regex=member_regex,
        limits=limits,
        engine=engine,  # type: ignore[arg-type]
    )


def rejected(data: bytes, engine: str, **kwargs: object) -> ArchiveRejected:
    """The rejection of `data`, checked never to reveal the password."""
    with pytest.raises(ArchiveRejected) as caught:
        read(data, engine, **kwargs)  # type: ignore[arg-type]
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caught.value.reason
    return caught.value


def as_dict(members: list[Member]) -> dict[str, bytes]:
    return {member.name: member.data for member in members}


def first_entry_check(archive: bytes, password: str) -> bool:
    """Whether `password` passes the ZipCrypto check byte of the archive's first entry (stdlib zipfile)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as listing:
        try:
            listing.open(listing.infolist()[0], pwd=password.encode()).close()
        except RuntimeError:
            return False
    return True


# -- detection -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (zip_plain({"a.csv": b"1"}), "zip"),
        (zip_plain({}), "zip"),  # an empty zip is only its end record, PK\x05\x06
        (gzip_bytes(b"1"), "gzip"),
        (b"patient_id,value\n1,2\n", "none"),
        (b"MSH|^~\\&|LAB", "none"),
        (b"PK", "none"),
        (b"", "none"),
    ],
)
def test_detect_kind_by_magic_bytes(data: bytes, kind: str) -> None:
    assert detect_kind(data) == kind


# -- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", BUILDERS)
def test_zip_round_trip(builder: str, engine: str) -> None:
    assert len(MEMBERS["big/lab_results_full.csv"]) > 1024**2
    archive = BUILDERS[builder]({**MEMBERS, "données/": b""})
    members = read(archive, engine)
    assert [member.name for member in members] == list(MEMBERS)
    assert as_dict(members) == MEMBERS


def test_gzip_member_is_named_after_the_key(engine: str) -> None:
    data = csv_text(300, seed=5)
    members = read(gzip_bytes(data), engine, name="landing/adt/2024/05/17/FAC9/adt_20240517.csv.gz")
    assert members == [Member("adt_20240517.csv", data)]


def test_concatenated_gzip_reads_as_one_member(engine: str) -> None:
    members = read(gzip_bytes(b"a,b\n") + gzip_bytes(b"1,2\n"), engine, name="x/part.csv.gz")
    assert members == [Member("part.csv", b"a,b\n1,2\n")]


def test_empty_gzip_payload_is_one_empty_member(engine: str) -> None:
    assert read(gzip_bytes(b""), engine, name="x/nothing.csv.gz") == [Member("nothing.csv", b"")]


def test_plain_file_is_its_own_member(engine: str) -> None:
    data = b"MSH|^~\\&|LAB|FAC1|||20240517||ORU^R01|1|P|2.5\r"
    members = read(data, engine, name="landing/lab/2024/05/17/FAC1/msg_0001.hl7")
    assert members == [Member("msg_0001.hl7", data)]


# -- member selection ----------------------------------------------------------------------------------


def test_member_regex_filters_and_directories_are_skipped(engine: str) -> None:
    archive = zip_aes(
        {
            "exports/": b"",
            "exports/a.csv": b"a\n",
            "exports/readme.txt": b"r",
            "b.CSV": b"b\n",
            "c.csv": b"c\n",
        },
        PASSWORD,
    )
    members = read(archive, engine, member_regex=re.compile(r"\.csv$"))
    assert as_dict(members) == {"exports/a.csv": b"a\n", "c.csv": b"c\n"}


def test_links_and_dos_directories_are_skipped(engine: str) -> None:
    link = zipfile.ZipInfo("latest.csv")
    link.create_system, link.external_attr = 3, 0o120777 << 16  # a Unix symlink; its data is the target
    dos_dir = zipfile.ZipInfo("EXPORTS")
    dos_dir.create_system, dos_dir.external_attr = 0, 0x10  # MS-DOS directory flag, no trailing slash
    fifo = zipfile.ZipInfo("pipe.csv")
    fifo.create_system, fifo.external_attr = 3, 0o010644 << 16
    archive = zip_entries(
        [(link, b"../x.csv"), (dos_dir, b""), (fifo, b"f"), (zipfile.ZipInfo("x.csv"), b"x")]
    )
    assert read(archive, engine) == [Member("x.csv", b"x")]


def test_backslash_separators_become_slashes(engine: str) -> None:
    info = zipfile.ZipInfo("EXPORT\\2024\\results.csv")
    info.create_system = 0  # written by a Windows tool
    assert read(zip_entries([(info, b"r\n")]), engine) == [Member("EXPORT/2024/results.csv", b"r\n")]


def test_names_do_not_depend_on_the_process_locale() -> None:
    """libarchive's own names follow the C library locale; ours come from the central directory."""
    script = textwrap.dedent(
        f"""
        import re
        from medlake_assets.ingest.archives import read_members
        from medlake_assets.spec.models import ArchiveLimits
        from medlake_assets_tests.ingest.archive_builders import zip_zipcrypto
        archive = zip_zipcrypto({{"données/été.csv": b"1", "検査.csv": b"2"}}, {PASSWORD!r})
        for engine in ("libarchive", "pyzipper"):
            members = read_members(archive, name="k.zip", accepted=["zip"], password={PASSWORD!r},
                                   member_regex=re.compile(".*"), limits=ArchiveLimits(), engine=engine)
            print(engine, [member.name for member in members])
        """
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "1"}
    env.pop("LC_CTYPE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        "libarchive ['données/été.csv', '検査.csv']",
        "pyzipper ['données/été.csv', '検査.csv']",
    ]


# -- passwords -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", ["aes", "zipcrypto"])
def test_wrong_password(builder: str, engine: str) -> None:
    archive = BUILDERS[builder](MEMBERS)
    # ZipCrypto has a one-byte password check: pick a wrong password it catches (see the next test).
    wrong = next(f"wrong-{i}" for i in range(1000) if not first_entry_check(archive, f"wrong-{i}"))
    error = rejected(archive, engine, password=wrong)
    assert error.rule == "archive.bad_password"
    assert error.reason == "Member 'results.csv' cannot be decrypted with the configured password."
    assert wrong not in str(error)


def test_zipcrypto_wrong_password_that_passes_the_check_byte(engine: str) -> None:
    """One wrong password in 256 passes ZipCrypto's check byte and decrypts to garbage."""
    archive = zip_zipcrypto({"results.csv": csv_text(200, seed=6)}, PASSWORD)
    wrong = next(f"wrong-{i}" for i in range(10_000) if first_entry_check(archive, f"wrong-{i}"))
    error = rejected(archive, engine, password=wrong)
    assert error.rule == "archive.corrupt"
    assert error.reason.startswith("Member 'results.csv' is corrupt or truncated or the password is wrong (")
    assert wrong not in str(error)


@pytest.mark.parametrize("builder", ["aes", "zipcrypto"])
def test_missing_password(builder: str, engine: str) -> None:
    error = rejected(BUILDERS[builder](MEMBERS), engine, password=None)
    assert error.rule == "archive.no_password"
    assert error.reason == "Member 'results.csv' is encrypted and no password is configured."


def test_encrypted_members_that_are_not_read_need_no_password(engine: str) -> None:
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(buffer, "w", compression=pyzipper.ZIP_DEFLATED) as archive:
        archive.writestr("results.csv", b"r\n")
        archive.setpassword(PASSWORD.encode())
        archive.setencryption(pyzipper.WZ_AES)
        archive.writestr("secret.txt", b"s")
    data = buffer.getvalue()
    assert read(data, engine, password=None, member_regex=re.compile(r"\.csv$")) == [
        Member("results.csv", b"r\n")
    ]
    assert rejected(data, engine, password=None).rule == "archive.no_password"


# -- corruption ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", BUILDERS)
def test_truncated_zip(builder: str, engine: str) -> None:
    archive = BUILDERS[builder](MEMBERS)
    error = rejected(archive[: len(archive) // 2], engine)
    assert error.rule == "archive.corrupt"
    assert error.reason.startswith("Archive 'lab_results_20240517.zip' is not a readable zip (")


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_corrupt_bytes_in_a_deflate_stream(where: float, engine: str) -> None:
    archive = bytearray(zip_plain({"results.csv": csv_text(20_000, seed=7)}))
    position = int(len(archive) * where)  # inside the one member's deflate data
    archive[position : position + 4] = bytes(byte ^ 0x55 for byte in archive[position : position + 4])
    error = rejected(bytes(archive), engine)
    assert error.rule == "archive.corrupt"
    assert error.reason.startswith("Member 'results.csv' is corrupt or truncated (")


def test_corrupt_bytes_in_an_encrypted_member(engine: str) -> None:
    archive = bytearray(zip_aes({"results.csv": csv_text(20_000, seed=8)}, PASSWORD))
    archive[len(archive) // 2] ^= 0xFF
    error = rejected(bytes(archive), engine)
    assert error.rule == "archive.corrupt"
    assert error.reason.startswith("Member 'results.csv' is corrupt or truncated or the password is wrong (")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(
            lambda data: data[:-8] + bytes(byte ^ 0xFF for byte in data[-8:-4]) + data[-4:], id="bad-crc"
        ),
        pytest.param(lambda data: data + b"trailing garbage", id="trailing-garbage"),
    ],
)
def test_damaged_gzip(damage: Callable[[bytes], bytes], engine: str) -> None:
    error = rejected(damage(gzip_bytes(csv_text(2_000, seed=9))), engine, name="x/results.csv.gz")
    assert error.rule == "archive.corrupt"
    assert error.reason.startswith("Member 'results.csv' is corrupt or truncated (")


def test_header_declaring_a_smaller_size_than_the_data(engine: str) -> None:
    archive = bytearray(zip_plain({"results.csv": b"a" * 100_000}))
    struct.pack_into("<I", archive, 22, 1_000)  # uncompressed size in the local header
    struct.pack_into("<I", archive, archive.rindex(b"PK\x01\x02") + 24, 1_000)  # and in the central directory
    assert rejected(bytes(archive), engine).rule == "archive.corrupt"


def test_entries_sharing_one_local_header(engine: str) -> None:
    archive = zip_plain({"results.csv": csv_text(100, seed=10)})
    start, end = archive.index(b"PK\x01\x02"), archive.index(b"PK\x05\x06")
    entry = archive[start:end]
    doubled = bytearray(archive[:end] + entry + archive[end:])
    struct.pack_into("<HHI", doubled, len(doubled) - 22 + 8, 2, 2, 2 * len(entry))  # counts and size
    error = rejected(bytes(doubled), engine)
    assert error.rule == "archive.corrupt"
    assert error.reason == "Archive 'lab_results_20240517.zip' has entries that share one local header."


# -- bombs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_200mb() -> bytes:
    return zip_bomb(200 * 1024**2)


@pytest.fixture(scope="module")
def aes_bomb_200mb() -> bytes:
    return zip_bomb(200 * 1024**2, members=4, password=PASSWORD)


def test_bomb_stopped_by_the_ratio_cap(bomb_200mb: bytes, engine: str) -> None:
    assert len(bomb_200mb) < 300 * 1024  # ~1000:1; the default caps would allow 256 MB per member
    error = rejected(bomb_200mb, engine)
    assert error.rule == "archive.bomb"
    assert error.reason == (
        f"Member 'bomb-0.csv' takes the archive's uncompressed total past 200 times the archive's "
        f"{len(bomb_200mb):,} bytes (max_ratio); reading stopped there."
    )


def test_encrypted_bomb_stopped_by_the_ratio_cap(aes_bomb_200mb: bytes, engine: str) -> None:
    error = rejected(aes_bomb_200mb, engine)
    assert error.rule == "archive.bomb"
    assert "(max_ratio)" in error.reason


def test_bomb_stopped_by_the_total_cap(engine: str) -> None:
    archive = zip_bomb(8 * 1024**2, members=8, password=PASSWORD)  # eight members of 1 MiB
    limits = ArchiveLimits(max_total_uncompressed_bytes=3 * 1024**2, max_ratio=1e6)
    error = rejected(archive, engine, limits=limits)
    assert error.rule == "archive.bomb"
    assert error.reason == (
        "Member 'bomb-3.csv' takes the archive's uncompressed total past max_total_uncompressed_bytes "
        "(3,145,728); reading stopped there."
    )


def test_bomb_stopped_by_the_member_cap(engine: str) -> None:
    limits = ArchiveLimits(max_member_bytes=1024**2, max_ratio=1e6)
    error = rejected(zip_bomb(2 * 1024**2), engine, limits=limits)
    assert error.rule == "archive.bomb"
    assert (
        error.reason
        == "Member 'bomb-0.csv' inflates past max_member_bytes (1,048,576); reading stopped there."
    )


def test_gzip_bomb(engine: str) -> None:
    data = gzip_bytes(bytes(50 * 1024**2))
    error = rejected(data, engine, name="x/zeros.csv.gz")
    assert error.rule == "archive.bomb"
    assert "(max_ratio)" in error.reason


def test_members_exactly_at_the_caps_are_read(engine: str) -> None:
    data = csv_text(1_000, seed=11)
    archive = zip_plain({"a.csv": data, "b.csv": data})
    limits = ArchiveLimits(
        max_member_bytes=len(data), max_total_uncompressed_bytes=2 * len(data), max_ratio=1e6
    )
    assert as_dict(read(archive, engine, limits=limits)) == {"a.csv": data, "b.csv": data}


# -- unsafe names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.txt", "has a '..' component"),
        ("exports/../../evil.csv", "has a '..' component"),
        ("..\\evil.csv", "has a '..' component"),
        ("/etc/x", "is an absolute path"),
        ("\\windows\\x.csv", "is an absolute path"),
        ("C:/x.csv", "starts with a drive letter"),
        ("c:x.csv", "starts with a drive letter"),
        ("results.csv\x00.txt", "contains a NUL character"),
    ],
)
def test_unsafe_member_names(name: str, problem: str, engine: str) -> None:
    # The whole archive is refused even when the unsafe member would not be read.
    archive = zip_raw_names([("results.csv", b"r\n"), (name, b"x")])
    error = rejected(archive, engine, member_regex=re.compile(r"^results\.csv$"))
    assert error.rule == "archive.unsafe_member_name"
    assert error.reason == f"Member name {name!r} {problem}."


def test_dotted_names_that_stay_inside_are_safe(engine: str) -> None:
    archive = zip_raw_names([("a..b.csv", b"1"), ("..hidden.csv", b"2"), ("x/./y.csv", b"3")])
    assert [member.name for member in read(archive, engine)] == ["a..b.csv", "..hidden.csv", "x/./y.csv"]


# -- counts, sizes, kinds ------------------------------------------------------------------------------


def test_too_many_members(engine: str) -> None:
    archive = zip_zipcrypto({"exports/": b"", **{f"exports/{i}.csv": b"1" for i in range(10)}}, PASSWORD)
    limits = ArchiveLimits(max_members=10)
    error = rejected(archive, engine, limits=limits)
    assert error.rule == "archive.too_many_members"
    assert error.reason == "Archive 'lab_results_20240517.zip' has 11 entries, above max_members (10)."
    assert len(read(archive, engine, limits=ArchiveLimits(max_members=11))) == 10


@pytest.mark.parametrize(
    ("data", "name", "regex"),
    [
        pytest.param(zip_plain({}), KEY, ".*", id="zero-members"),
        pytest.param(zip_plain({"exports/": b""}), KEY, ".*", id="only-a-directory"),
        pytest.param(
            zip_aes({"notes.txt": b"n", "readme.md": b"r"}, PASSWORD), KEY, r"\.csv$", id="no-match"
        ),
        pytest.param(gzip_bytes(b"n"), "x/notes.txt.gz", r"\.csv$", id="gzip-no-match"),
    ],
)
def test_empty(data: bytes, name: str, regex: str, engine: str) -> None:
    error = rejected(data, engine, name=name, member_regex=re.compile(regex))
    assert error.rule == "archive.empty"
    assert error.reason == f"Archive {name.rsplit('/', 1)[-1]!r} has no member matching {regex!r}."


def test_too_large(engine: str) -> None:
    archive = zip_aes(MEMBERS, PASSWORD)
    error = rejected(archive, engine, limits=ArchiveLimits(max_archive_bytes=len(archive) - 1))
    assert error.rule == "archive.too_large"
    assert error.reason == (
        f"Archive 'lab_results_20240517.zip' is {len(archive):,} bytes, "
        f"above max_archive_bytes ({len(archive) - 1:,})."
    )


@pytest.mark.parametrize(
    ("data", "kind", "accepted"),
    [
        (gzip_bytes(b"1"), "gzip", ("zip",)),
        (b"patient_id\n1\n", "none", ("zip", "gzip")),
        (zip_plain({"a.csv": b"1"}), "zip", ("gzip", "none")),
    ],
)
def test_kind_not_accepted(data: bytes, kind: str, accepted: tuple[str, ...], engine: str) -> None:
    error = rejected(data, engine, accepted=accepted)
    assert error.rule == "archive.kind_not_accepted"
    assert error.reason == (
        f"Archive 'lab_results_20240517.zip' is {kind!r} by its magic bytes; "
        f"this source accepts {sorted(accepted)}."
    )


# -- benchmark floor -----------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", BUILDERS)
def test_decrypt_floor_sums_uncompressed_sizes(builder: str) -> None:
    archive = BUILDERS[builder]({**MEMBERS, "données/": b""})
    assert decrypt_floor(archive, password=PASSWORD) == sum(len(data) for data in MEMBERS.values())


def test_decrypt_floor_of_gzip_and_plain_files() -> None:
    data = csv_text(3_000, seed=12)
    assert decrypt_floor(gzip_bytes(data) + gzip_bytes(data), password=None) == 2 * len(data)
    assert decrypt_floor(gzip_bytes(b""), password=None) == 0
    assert decrypt_floor(data, password=None) == len(data)


def test_decrypt_floor_wrong_password() -> None:
    archive = zip_aes({"results.csv": b"r"}, PASSWORD)
    with pytest.raises(ArchiveRejected) as caught:
        decrypt_floor(archive, password="not-the-password")
    assert caught.value.rule == "archive.bad_password"


@pytest.mark.parametrize("kind", ["zip", "gzip"])
def test_a_large_member_is_held_once_while_it_is_read(engine: str, kind: str) -> None:
    """A member's blocks go into one buffer that becomes its bytes: joined from a list at the end, a 40 MB
    archive's 460 MB CSV was held twice at once."""
    text = csv_text(200_000, seed=5)  # ~12 MB
    archive = zip_aes({"big.csv": text}, PASSWORD) if kind == "zip" else gzip_bytes(text)
    key = KEY if kind == "zip" else KEY.replace(".zip", ".csv.gz")
    options = {
        "name": key,
        "accepted": ALL_KINDS,
        "password": PASSWORD,
        "member_regex": ANY,
        "limits": LIMITS,
    }
    read_members(archive, **options, engine=engine)  # type: ignore[arg-type]  # imports and caches out of it
    tracemalloc.start()
    try:
        members = read_members(archive, **options, engine=engine)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert members == [Member("big.csv" if kind == "zip" else posixpath.basename(key)[:-3], text)]
    assert peak < 1.5 * len(text), f"peak {peak:,} bytes of Python objects for a member of {len(text):,}"
