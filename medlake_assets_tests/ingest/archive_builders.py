"""Build real archives in memory: for tests and for the synthetic data generator.

Every zip builder takes members as `{name: data}`; a name ending in `/` becomes a directory entry.
Plain zips are byte-for-byte reproducible (fixed timestamps); encrypted ones are not, because AES salts
and ZipCrypto headers are random by design.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterable, Mapping

import libarchive
import pyzipper
from libarchive.entry import FileType

# 1980-01-01, the earliest DOS timestamp a zip can hold: fixed so plain zips are reproducible.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_EPOCH_SECONDS = 315_532_800
_ZERO_BLOCK = bytes(1 << 20)


def zip_plain(members: Mapping[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """An unencrypted zip (deflate by default)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(_zipinfo(name, compression), data)
    return buffer.getvalue()


def zip_aes(members: Mapping[str, bytes], password: str) -> bytes:
    """A WinZip AES-256 zip, deflated (pyzipper)."""
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(
        buffer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES
    ) as archive:
        archive.setpassword(password.encode())
        archive.setencryption(pyzipper.WZ_AES, nbits=256)
        for name, data in members.items():
            archive.writestr(_zipinfo(name, zipfile.ZIP_DEFLATED, cls=pyzipper.AESZipFile.zipinfo_cls), data)
    return buffer.getvalue()


def zip_zipcrypto(members: Mapping[str, bytes], password: str) -> bytes:
    """A traditional PKWARE (ZipCrypto) zip, deflated, written by libarchive in C.

    pyzipper cannot write ZipCrypto and the standard library cannot encrypt at all.
    """
    chunks: list[bytes] = []

    def write(block: bytes) -> int:
        chunks.append(bytes(block))
        return len(block)

    # libarchive spells the option value `zipcrypt`; hdrcharset keeps names UTF-8 whatever the locale.
    options = "zip:encryption=zipcrypt,zip:hdrcharset=UTF-8"
    with libarchive.custom_writer(write, "zip", options=options, passphrase=password) as archive:
        for name, data in members.items():
            is_dir = name.endswith("/")
            archive.add_file_from_memory(
                name,
                0 if is_dir else len(data),
                b"" if is_dir else data,
                filetype=FileType.DIRECTORY if is_dir else FileType.REGULAR_FILE,
                permission=0o755 if is_dir else 0o644,
                mtime=_EPOCH_SECONDS,
            )
    return b"".join(chunks)


def gzip_bytes(data: bytes) -> bytes:
    """A single-member gzip with a fixed header timestamp (reproducible)."""
    return gzip.compress(data, mtime=0)


def zip_bomb(uncompressed_bytes: int, *, members: int = 1, password: str | None = None) -> bytes:
    """A zip of `members` entries (`bomb-<i>.csv`) of zeros, `uncompressed_bytes` in all, deflated ~1000:1.

    The zeros are streamed in 1 MiB blocks, so building a large bomb never holds it in memory. With a
    password the bomb is AES-256 encrypted, to show that caps apply to encrypted members too.
    """
    buffer = io.BytesIO()
    if password is None:
        archive: zipfile.ZipFile = zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED)
        info_cls = zipfile.ZipInfo
    else:
        archive = pyzipper.AESZipFile(
            buffer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES
        )
        archive.setpassword(password.encode())
        info_cls = pyzipper.AESZipFile.zipinfo_cls
    per_member, remainder = divmod(uncompressed_bytes, members)
    with archive:
        for index in range(members):
            size = per_member + (1 if index < remainder else 0)
            info = _zipinfo(f"bomb-{index}.csv", zipfile.ZIP_DEFLATED, cls=info_cls)
            with archive.open(info, "w", force_zip64=size >= 0xFFFFFFFF) as member:
                for written in range(0, size, len(_ZERO_BLOCK)):
                    member.write(_ZERO_BLOCK[: min(len(_ZERO_BLOCK), size - written)])
    return buffer.getvalue()


def zip_raw_names(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An unencrypted zip whose member names are written exactly as given, NUL bytes included.

    `zipfile` sanitizes names only when extracting (and when a ZipInfo is constructed, it cuts a name at
    NUL), not when writing, so names such as `../evil.txt`, `/etc/x`, `C:\\x` or `a\\x00b` reach the archive
    verbatim; the filename is set after construction to keep a NUL.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = _zipinfo("member", zipfile.ZIP_DEFLATED)
            info.filename = name
            archive.writestr(info, data)
    return buffer.getvalue()


def zip_entries(entries: Iterable[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    """An unencrypted zip of hand-made entries (e.g. a symlink or a DOS directory without a trailing `/`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def _zipinfo(name: str, compression: int, *, cls: type[zipfile.ZipInfo] = zipfile.ZipInfo) -> zipfile.ZipInfo:
    """A ZipInfo with a fixed timestamp and the attributes `ZipFile.writestr(name, ...)` would give."""
    info = cls(name, date_time=_EPOCH)
    if name.endswith("/"):
        info.external_attr = (0o40775 << 16) | 0x10  # Unix drwxrwxr-x plus the MS-DOS directory flag
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = 0o644 << 16
        info.compress_type = compression
    return info
