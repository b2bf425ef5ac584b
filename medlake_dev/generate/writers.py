"""Archive writers for synthetic facility feeds: AES-256 and ZipCrypto zips, gzip, and hostile archives.

Everything is reproducible where the libraries allow it: member timestamps are fixed by the caller, and AES
salts derive from a caller's seed (pyzipper draws them at random). libarchive draws each ZipCrypto member's
12-byte encryption header from the OS random source (`arc4random_buf`, no seed), so ZipCrypto ciphertext
differs between runs even though the archive's size, names, CRCs and plaintext do not.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime

import pyzipper
from Cryptodome.Cipher import AES
from Cryptodome.Hash import HMAC
from Cryptodome.Hash.SHA1 import SHA1Hash
from Cryptodome.Protocol.KDF import PBKDF2
from Cryptodome.Util import Counter
from libarchive.write import custom_writer
from pyzipper.zipfile_aes import AESZipEncrypter, AESZipInfo

__all__ = [
    "DEFAULT_DATE_TIME",
    "gzip_bytes",
    "zip_aes",
    "zip_bomb",
    "zip_plain",
    "zip_with_raw_names",
    "zip_zipcrypto",
]

DateTime = tuple[int, int, int, int, int, int]
DEFAULT_DATE_TIME: DateTime = (2026, 1, 1, 0, 0, 0)
_AES_SALT_BYTES = 16  # WinZip AES-256
_AES_KEY_BYTES = 32


class _SaltedAesEncrypter(AESZipEncrypter):
    """pyzipper's AES-256 encrypter with a given salt instead of a random one, so archives are reproducible.

    Sets the same fields as `AESZipEncrypter(pwd, nbits=256)` (pyzipper is pinned at 0.4.0) without calling
    it, which would spend a second PBKDF2 derivation per member on the discarded random salt.
    """

    def __init__(self, pwd: bytes, salt: bytes):
        self.force_wz_aes_version = None
        self.conditionally_include_crc = None
        self.min_bytes_to_include_crc = None
        self.salt_length = _AES_SALT_BYTES
        self.aes_strength = 3
        self.salt = salt
        material = PBKDF2(pwd, salt, count=1000, dkLen=2 * _AES_KEY_BYTES + 2)
        self.encpwdverify = material[2 * _AES_KEY_BYTES :]
        self.encrypter = AES.new(
            material[:_AES_KEY_BYTES], AES.MODE_CTR, counter=Counter.new(nbits=128, little_endian=True)
        )
        self.hmac = HMAC.new(material[_AES_KEY_BYTES : 2 * _AES_KEY_BYTES], digestmod=SHA1Hash())


class _SeededAesZipFile(pyzipper.AESZipFile):
    """An AES-256 writer whose n-th member's salt is sha256(salt_seed, n): unique per member, repeatable."""

    def __init__(self, file: io.BytesIO, *, password: str, salt_seed: bytes):
        super().__init__(file, "w", compression=zipfile.ZIP_DEFLATED, encryption=pyzipper.WZ_AES)
        self.setpassword(password.encode("utf-8"))
        self._salt_seed = salt_seed
        self._members_encrypted = 0

    def get_encrypter(self) -> AESZipEncrypter:
        self._members_encrypted += 1
        digest = hashlib.sha256(self._salt_seed + b"\0" + str(self._members_encrypted).encode()).digest()
        return _SaltedAesEncrypter(self.pwd, digest[:_AES_SALT_BYTES])


def _aes_info(name: str, date_time: DateTime, size: int | None = None) -> AESZipInfo:
    info = AESZipInfo(name, date_time=date_time)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    if size is not None:
        info.file_size = size
    return info


def _plain_info(name: str, date_time: DateTime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def zip_aes(
    members: Mapping[str, bytes],
    password: str,
    *,
    date_time: DateTime = DEFAULT_DATE_TIME,
    salt_seed: bytes = b"",
) -> bytes:
    """A deflated zip with WinZip AES-256 encryption (pyzipper); same arguments give the same bytes.

    Give each archive its own `salt_seed` (e.g. its key): equal seeds and passwords repeat the key streams.
    """
    buffer = io.BytesIO()
    with _SeededAesZipFile(buffer, password=password, salt_seed=salt_seed) as archive:
        for name, data in members.items():
            archive.writestr(_aes_info(name, date_time), data)
    return buffer.getvalue()


def zip_zipcrypto(members: Mapping[str, bytes], password: str, *, mtime: datetime | None = None) -> bytes:
    """A deflated zip with traditional PKWARE (ZipCrypto) encryption, written by libarchive.

    libarchive rather than pyzipper because pyzipper writes only AES. The encryption headers are random (see
    the module docstring), so only the size and the decrypted contents repeat between runs.
    """
    when = mtime or datetime(*DEFAULT_DATE_TIME, tzinfo=UTC)
    chunks: list[bytes] = []

    def write(data: bytes) -> int:
        chunks.append(bytes(data))
        return len(data)

    with custom_writer(
        write, "zip", options="zip:compression=deflate,zip:encryption=zipcrypt", passphrase=password
    ) as archive:
        for name, data in members.items():
            archive.add_file_from_memory(name, len(data), data, permission=0o644, mtime=int(when.timestamp()))
    return b"".join(chunks)


def zip_plain(members: Mapping[str, bytes], *, date_time: DateTime = DEFAULT_DATE_TIME) -> bytes:
    """An unencrypted deflated zip (standard library); no members gives the 22-byte empty archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(_plain_info(name, date_time), data)
    return buffer.getvalue()


def gzip_bytes(data: bytes, *, name: str | None = None) -> bytes:
    """`data` gzip-compressed with mtime 0 (so repeatable), optionally naming the original file."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buffer, compresslevel=6, mtime=0) as stream:
        stream.write(data)
    return buffer.getvalue()


def zip_with_raw_names(
    members: Mapping[str, bytes],
    password: str | None = None,
    *,
    date_time: DateTime = DEFAULT_DATE_TIME,
    salt_seed: bytes = b"",
) -> bytes:
    """A zip whose member names are written exactly as given, e.g. `../evil.csv` or `/etc/evil.csv`.

    `ZipInfo` keeps such names (only `ZipFile.write` from disk strips them), which is what a hostile sender
    produces. AES-256 encrypted when `password` is given, so a reader gets past the password to the names.
    """
    if password is None:
        return zip_plain(members, date_time=date_time)
    return zip_aes(members, password, date_time=date_time, salt_seed=salt_seed)


def zip_bomb(
    password: str | None,
    total_bytes: int,
    *,
    name: str = "bomb.csv",
    date_time: DateTime = DEFAULT_DATE_TIME,
    salt_seed: bytes = b"",
    chunk_bytes: int = 1 << 20,
) -> bytes:
    """A zip of one member of `total_bytes` zeros (deflate ratio ~1000:1), AES-256 when `password` is set.

    The member is streamed in chunks through the writer, so the payload is never held in memory.
    """
    buffer = io.BytesIO()
    zeros = bytes(chunk_bytes)
    if password is None:
        archive: zipfile.ZipFile = zipfile.ZipFile(buffer, "w")
        info: zipfile.ZipInfo = _plain_info(name, date_time)
        info.file_size = total_bytes
    else:
        archive = _SeededAesZipFile(buffer, password=password, salt_seed=salt_seed)
        info = _aes_info(name, date_time, total_bytes)
    with archive, archive.open(info, "w") as stream:
        remaining = total_bytes
        while remaining > 0:
            stream.write(zeros[: min(chunk_bytes, remaining)])
            remaining -= chunk_bytes
    return buffer.getvalue()
