"""Unpack one landed archive into its members, in memory, with caps that stop zip bombs mid-stream.

Two engines return the same members and raise the same rule codes:
- `libarchive` (default, the ingest path): ZipCrypto and WinZip AES are decrypted and inflated in C;
- `pyzipper`: the pure-Python reference (ZipCrypto decrypts at about 1 MB/s there).

For zip, both engines take member names, types and the member count from the central directory as
`zipfile` parses it (UTF-8 flag, else cp437): libarchive's own names depend on the process locale and are
cut at a NUL, so it is only asked for the bytes, entry by entry in local-header order. gzip goes through
the `gzip` module in both engines, because libarchive 3.6's gzip filter ignores a bad CRC and trailing
garbage. Error reasons name the member, never its contents and never the password.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ctypes import POINTER, byref, c_int, c_longlong, c_size_t, c_void_p, cast, string_at
from dataclasses import dataclass
from typing import Literal

import libarchive.ffi as la_ffi
import pyzipper
from libarchive.exception import ArchiveError
from libarchive.read import new_archive_read

from medlake_assets.ingest.types import ArchiveRejected, Member
from medlake_assets.spec.models import ArchiveLimits

ArchiveKind = Literal["zip", "gzip", "none"]
Engine = Literal["libarchive", "pyzipper"]
# Every zip entry in local-header order, with its member name when it is a file to read, else None.
_Plan = list[tuple[zipfile.ZipInfo, str | None]]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes decompressed between two cap checks
_DRIVE = re.compile(r"^[A-Za-z]:")
# libarchive-c's bindings raise on errors but only log warnings, and libarchive reports a bad CRC or a
# member of the wrong size as a warning: bind these two calls again to see every return code.
_read_next_header = la_ffi.libarchive["archive_read_next_header"]
_read_next_header.argtypes = [c_void_p, POINTER(c_void_p)]
_read_next_header.restype = c_int
_read_data_block = la_ffi.libarchive["archive_read_data_block"]
_read_data_block.argtypes = [c_void_p, POINTER(c_void_p), POINTER(c_size_t), POINTER(c_longlong)]
_read_data_block.restype = c_int
# What zipfile/pyzipper raise on malformed input; in memory there is no real I/O, so OSError is data.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    pyzipper.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    ValueError,
    OSError,
)


def detect_kind(data: bytes) -> ArchiveKind:
    """Tell the archive kind by its magic bytes; anything unrecognised is a plain file (`none`)."""
    if data[:4] in _ZIP_MAGIC:
        return "zip"
    if data[:2] == _GZIP_MAGIC:
        return "gzip"
    return "none"


@dataclass(frozen=True)
class Unpacked:
    """An archive's members, and the names of its files that do not match the member pattern (not read)."""

    members: list[Member]
    unmatched: list[str]


def read_members(
    data: bytes,
    *,
    name: str,
    accepted: Sequence[str],
    password: str | None,
    member_regex: re.Pattern[str],
    limits: ArchiveLimits,
    engine: Engine = "libarchive",
) -> list[Member]:
    """The members of the archive `data` (object key `name`) whose names match `member_regex`."""
    return unpack(
        data,
        name=name,
        accepted=accepted,
        password=password,
        member_regex=member_regex,
        limits=limits,
        engine=engine,
    ).members


def unpack(
    data: bytes,
    *,
    name: str,
    accepted: Sequence[str],
    password: str | None,
    member_regex: re.Pattern[str],
    limits: ArchiveLimits,
    engine: Engine = "libarchive",
) -> Unpacked:
    """The members of the archive `data` (object key `name`) whose names match `member_regex`, and the names
    of the other files in it (so that nothing in an archive goes unaccounted for).

    Directories and links are skipped. Raises `ArchiveRejected` with a stable rule code when the archive
    cannot be used; decompression stops at the first cap of `limits` crossed, counting real bytes.
    """
    if engine not in ("libarchive", "pyzipper"):
        raise ValueError(f"unknown archive engine {engine!r}")
    archive = posixpath.basename(name)
    if len(data) > limits.max_archive_bytes:
        raise ArchiveRejected(
            "archive.too_large",
            f"Archive {archive!r} is {len(data):,} bytes, "
            f"above max_archive_bytes ({limits.max_archive_bytes:,}).",
        )
    kind = detect_kind(data)
    if kind not in accepted:
        raise ArchiveRejected(
            "archive.kind_not_accepted",
            f"Archive {archive!r} is {kind!r} by its magic bytes; this source accepts {sorted(accepted)}.",
        )
    budget = _Budget(limits, len(data))
    unmatched: list[str] = []
    if kind == "zip":
        # The libarchive engine lists with the standard library, the reference with pyzipper's fork of it.
        opener = zipfile.ZipFile if engine == "libarchive" else pyzipper.AESZipFile
        with _open_zip(opener, data, archive) as listing:
            plan = _zip_plan(listing.infolist(), archive, member_regex, limits)
            unmatched = [
                entry
                for info, member in plan
                if member is None and _is_file(info, entry := info.filename.replace("\\", "/"))
            ]
            if not any(member for _, member in plan):
                members: list[Member] = []
            elif engine == "libarchive":
                members = _libarchive_zip(data, plan, password, budget)
            else:
                members = _pyzipper_zip(listing, plan, password, budget)
    else:
        member = archive[:-3] if kind == "gzip" and archive.lower().endswith(".gz") else archive
        _check_name(member)
        if not member_regex.search(member):
            members = []
        elif kind == "gzip":
            members = [Member(member, _read_gzip(data, member, budget))]
        else:
            members = [Member(member, budget.collect(member, iter((data,))))]
    if not members:
        raise ArchiveRejected(
            "archive.empty", f"Archive {archive!r} has no member matching {member_regex.pattern!r}."
        )
    return Unpacked(members, unmatched)


def decrypt_floor(data: bytes, *, password: str | None) -> int:
    """Decrypt and decompress every member and discard the bytes; the total uncompressed size.

    The benchmark floor: what unpacking costs with no parsing, no caps and no copies into Python bytes.
    """
    kind = detect_kind(data)
    if kind == "none":
        return len(data)
    try:
        with _libarchive_open(data, password, kind) as archive_p:
            return sum(size for _ in _entries(archive_p) for _block, size in _raw_blocks(archive_p))
    except ArchiveError as error:
        raise _libarchive_rejection(error, None, password) from None


class _Budget:
    """Counts the bytes really produced, member and archive, and stops at the first cap crossed."""

    def __init__(self, limits: ArchiveLimits, archive_bytes: int):
        self.limits = limits
        self.archive_bytes = archive_bytes
        self.max_total = min(limits.max_total_uncompressed_bytes, limits.max_ratio * max(archive_bytes, 1))
        self.total = 0

    def collect(self, member: str, blocks: Iterator[bytes]) -> bytes:
        """Join a member's blocks, raising `archive.bomb` as soon as a cap is crossed.

        Into one growing buffer that becomes the member's bytes without a copy: a list of blocks joined at
        the end held the member twice (~920 MB at once for a 40 MB archive's 460 MB CSV)."""
        joined = io.BytesIO()
        size = 0
        limits = self.limits
        for block in blocks:
            size += len(block)
            self.total += len(block)
            if size > limits.max_member_bytes:
                raise _bomb(member, f"inflates past max_member_bytes ({limits.max_member_bytes:,})")
            if self.total > self.max_total:
                if self.total > limits.max_total_uncompressed_bytes:
                    cap = f"max_total_uncompressed_bytes ({limits.max_total_uncompressed_bytes:,})"
                else:
                    cap = f"{limits.max_ratio:g} times the archive's {self.archive_bytes:,} bytes (max_ratio)"
                raise _bomb(member, f"takes the archive's uncompressed total past {cap}")
            joined.write(block)
        return joined.getvalue()


def _bomb(member: str, what: str) -> ArchiveRejected:
    return ArchiveRejected("archive.bomb", f"Member {member!r} {what}; reading stopped there.")


def _check_name(raw: str) -> None:
    """Reject names that could escape a folder if anyone ever extracted them, or that hide a NUL."""
    name = raw.replace("\\", "/")
    if "\x00" in raw:
        problem = "contains a NUL character"
    elif not name:
        problem = "is empty"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif _DRIVE.match(name):
        problem = "starts with a drive letter"
    elif ".." in name.split("/"):
        problem = "has a '..' component"
    else:
        return
    raise ArchiveRejected("archive.unsafe_member_name", f"Member name {raw!r} {problem}.")


# -- zip: one plan from the central directory, two engines for the bytes -------------------------------


def _open_zip(opener: type[zipfile.ZipFile], data: bytes, archive: str) -> zipfile.ZipFile:
    """Parse the central directory only; members are read later."""
    try:
        return opener(io.BytesIO(data))
    except _ZIP_ERRORS as error:
        raise ArchiveRejected(
            "archive.corrupt", f"Archive {archive!r} is not a readable zip ({_detail(error)})."
        ) from None


def _zip_plan(
    infos: list[zipfile.ZipInfo], archive: str, member_regex: re.Pattern[str], limits: ArchiveLimits
) -> _Plan:
    """The plan of what to read, after the whole-archive checks (member count, names)."""
    infos = sorted(infos, key=lambda info: info.header_offset)
    if len(infos) > limits.max_members:
        raise ArchiveRejected(
            "archive.too_many_members",
            f"Archive {archive!r} has {len(infos):,} entries, above max_members ({limits.max_members:,}).",
        )
    if len({info.header_offset for info in infos}) != len(infos):
        # Entries sharing one local header are a known zip-bomb construction, never a real export.
        raise ArchiveRejected(
            "archive.corrupt", f"Archive {archive!r} has entries that share one local header."
        )
    plan: _Plan = []
    for info in infos:
        _check_name(info.orig_filename)
        member = info.filename.replace("\\", "/")
        plan.append((info, member if _is_file(info, member) and member_regex.search(member) else None))
    return plan


def _is_file(info: zipfile.ZipInfo, member: str) -> bool:
    """A regular file: not a directory (trailing `/`, MS-DOS flag, Unix mode) nor a link or device."""
    if member.endswith("/"):
        return False
    if info.create_system == 3:  # Unix: the file type is in the high 16 bits
        return stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFREG)
    return not info.external_attr & 0x10


def _libarchive_zip(data: bytes, plan: _Plan, password: str | None, budget: _Budget) -> list[Member]:
    members: list[Member] = []
    current: tuple[zipfile.ZipInfo, str] | None = None  # the entry being read, to name it in errors
    try:
        with _libarchive_open(data, password) as archive_p:
            count = 0
            for count, _ in enumerate(_entries(archive_p), start=1):
                if count > len(plan):
                    break
                info, member = plan[count - 1]
                if member is not None:
                    current = (info, member)
                    blocks = _as_declared(_blocks(archive_p), info, member)
                    members.append(Member(member, budget.collect(member, blocks)))
                    current = None
            if count != len(plan):
                raise ArchiveRejected(
                    "archive.corrupt",
                    f"libarchive found {count} entries where the central directory lists {len(plan)}.",
                )
    except ArchiveError as error:
        raise _libarchive_rejection(error, current, password) from None
    return members


@contextmanager
def _libarchive_open(data: bytes, password: str | None, kind: ArchiveKind = "zip") -> Iterator[int]:
    """libarchive over `data` in memory; zip_seekable trusts the central directory, as zipfile does."""
    zip_kind = kind == "zip"
    with new_archive_read(
        "zip_seekable" if zip_kind else "raw", "none" if zip_kind else "gzip", password
    ) as archive_p:
        if not zip_kind:
            la_ffi.get_read_format_function("empty")(archive_p)  # `raw` refuses a gzip of zero bytes
        la_ffi.read_open_memory(archive_p, cast(data, c_void_p), len(data))
        yield archive_p


def _entries(archive_p: int) -> Iterator[None]:
    """Advance to each entry in turn.

    A header warning (e.g. a name the locale cannot show) is harmless: names come from the listing.
    """
    entry = c_void_p()
    while (status := _read_next_header(archive_p, byref(entry))) != la_ffi.ARCHIVE_EOF:
        if status < la_ffi.ARCHIVE_WARN:
            raise la_ffi.archive_error(archive_p, status)
        yield None


def _raw_blocks(archive_p: int) -> Iterator[tuple[c_void_p, int]]:
    """The current entry's blocks in libarchive's own buffer (no copy), a few hundred KiB at most each."""
    block, size, offset = c_void_p(), c_size_t(), c_longlong()
    while (
        status := _read_data_block(archive_p, byref(block), byref(size), byref(offset))
    ) != la_ffi.ARCHIVE_EOF:
        if status != la_ffi.ARCHIVE_OK:  # a warning here is a bad CRC or a wrong size
            raise la_ffi.archive_error(archive_p, status)
        yield block, size.value


def _blocks(archive_p: int) -> Iterator[bytes]:
    return (string_at(block, size) for block, size in _raw_blocks(archive_p))


def _as_declared(blocks: Iterator[bytes], info: zipfile.ZipInfo, member: str) -> Iterator[bytes]:
    """Stop at the size the header declares, as zipfile does; more or fewer bytes mean corruption.

    The caps never rely on this size (they count the bytes produced); it only makes both engines give the
    same verdict on a header that lies.
    """
    left = info.file_size
    for block in blocks:
        if len(block) > left:
            yield block[:left]
            left = -1
            break
        left -= len(block)
        yield block
    if left:
        raise ArchiveRejected(
            "archive.corrupt",
            f"Member {member!r} does not have the {info.file_size:,} bytes its header declares.",
        )


def _libarchive_rejection(
    error: ArchiveError, current: tuple[zipfile.ZipInfo, str] | None, password: str | None
) -> ArchiveRejected:
    message = (error.msg.decode(errors="replace") if isinstance(error.msg, bytes) else str(error.msg)).strip()
    where = f"Member {current[1]!r}" if current is not None else "The archive"
    # libarchive says "Passphrase required for this entry" or "Incorrect passphrase".
    if "passphrase" in message.lower():
        return _password_rejection(where, password)
    return _corrupt(where, current is not None and bool(current[0].flag_bits & 1), message, password)


def _pyzipper_zip(
    archive: zipfile.ZipFile,
    plan: _Plan,
    password: str | None,
    budget: _Budget,
) -> list[Member]:
    members: list[Member] = []
    secret = password.encode() if password is not None else None
    for info, member in plan:
        if member is None:
            continue
        encrypted = bool(info.flag_bits & 1)
        if encrypted and secret is None:
            raise _password_rejection(f"Member {member!r}", None)
        try:
            with archive.open(info, pwd=secret) as stream:
                blocks = _as_declared(iter(lambda: stream.read(_CHUNK), b""), info, member)
                members.append(Member(member, budget.collect(member, blocks)))
        except RuntimeError as error:
            if "password" in str(error).lower():
                raise _password_rejection(f"Member {member!r}", password) from None
            raise _corrupt(f"Member {member!r}", encrypted, _detail(error), password) from None
        except _ZIP_ERRORS as error:
            raise _corrupt(f"Member {member!r}", encrypted, _detail(error), password) from None
    return members


def _password_rejection(where: str, password: str | None) -> ArchiveRejected:
    if password is None:
        return ArchiveRejected("archive.no_password", f"{where} is encrypted and no password is configured.")
    return ArchiveRejected(
        "archive.bad_password", f"{where} cannot be decrypted with the configured password."
    )


def _corrupt(where: str, encrypted: bool, detail: str, password: str | None) -> ArchiveRejected:
    if password:
        detail = detail.replace(password, "***")  # no library message should hold it; make sure
    # A wrong ZipCrypto password passes its one check byte 1 time in 256 and then reads as garbage.
    maybe = " or the password is wrong" if encrypted else ""
    return ArchiveRejected("archive.corrupt", f"{where} is corrupt or truncated{maybe} ({detail}).")


def _detail(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# -- gzip ----------------------------------------------------------------------------------------------


def _read_gzip(data: bytes, member: str, budget: _Budget) -> bytes:
    """The gzip payload (concatenated gzip members joined, as gunzip does), CRC and length checked."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            return budget.collect(member, iter(lambda: stream.read(_CHUNK), b""))
    except (OSError, EOFError, zlib.error) as error:
        raise ArchiveRejected(
            "archive.corrupt", f"Member {member!r} is corrupt or truncated ({_detail(error)})."
        ) from None
