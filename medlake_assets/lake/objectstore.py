"""Object storage behind one small interface: a local folder or an S3 bucket (design.md section 3).

The store is chosen by configuration (`open_store(url)`), never at import time. Keys are '/'-separated and
relative to the store's root (a folder, or a bucket prefix), so one key names the same object on either.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse
from urllib.request import url2pathname

S3_ENDPOINT_ENV = "MEDLAKE_S3_ENDPOINT_URL"


@dataclass(frozen=True)
class StoredObject:
    """One object as listed: its key relative to the store, size in bytes, etag and UTC modification time."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@runtime_checkable
class ObjectStore(Protocol):
    """What ingestion needs from object storage. `uri` identifies the store in the ledger."""

    uri: str

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix` (a plain string prefix), recursively, sorted by key."""
        ...

    def list_prefixes(self, prefix: str = "") -> list[str]:
        """The immediate "folders" below `prefix`, each ending in '/', sorted; only those holding objects."""
        ...

    def list_level(self, prefix: str = "") -> tuple[list[str], list[StoredObject]]:
        """One delimiter listing: the immediate folders below `prefix` (as `list_prefixes`) and the objects
        directly in it, each sorted; what lies deeper is not listed."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is none."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write the object whole: readers see the old bytes or the new ones, never part of them."""
        ...

    def exists(self, key: str) -> bool: ...

    def content_id(self, info: StoredObject) -> str:
        """The identity of the object version's content, the ledger's `etag`: equal for equal bytes, so a
        copied or restored object is recognised. Costs a read where the listed etag is not content-based."""
        ...

    def url(self, key: str) -> str:
        """The object's full URI (`file:///...` or `s3://bucket/prefix/key`)."""
        ...


def check_key(key: str) -> str:
    """Return `key` if it names an object below the store's root; ValueError if empty or able to escape."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"invalid object key {key!r}: it must be a relative path naming a file")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}: empty, '.' and '..' path segments are not allowed")
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` ("" for all, "a/b/" for a folder, "a/b" for keys starting so) or raise ValueError."""
    if not prefix:
        return prefix
    *folders, last = prefix.split("/")
    if prefix.startswith("/") or any(part in ("", ".", "..") for part in folders) or last in (".", ".."):
        raise ValueError(
            f"invalid key prefix {prefix!r}: it must be relative, without empty, '.' or '..' segments"
        )
    return prefix


def _utc_from_ns(nanoseconds: int) -> datetime:
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _holds_file(directory: str) -> bool:
    """Whether a visible file lies anywhere below `directory` (stops at the first one found)."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not _visible(entry.name):
                    continue
                if entry.is_file() or (entry.is_dir(follow_symlinks=False) and _holds_file(entry.path)):
                    return True
    except (FileNotFoundError, NotADirectoryError):
        pass
    return False


def _info(key: str, entry: os.DirEntry) -> StoredObject | None:
    """A listed file's StoredObject; None if it was removed since the scan."""
    try:
        stat = entry.stat()
    except FileNotFoundError:
        return None
    return StoredObject(
        key=key,
        size=stat.st_size,
        etag=f"{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ino}",
        last_modified=_utc_from_ns(stat.st_mtime_ns),
    )


class LocalObjectStore:
    """Objects are the files below `root`.

    Names starting with '.' (files or folders) are invisible and cannot be used as keys: they are writes in
    progress. Anything uploading into a local landing folder must write to a dotfile and rename it when
    complete, as `put` does, so a sensor never reads half an archive. The listed etag is
    `size-mtime_ns-inode`: cheap, and it changes when a file is replaced (a rename brings a new inode, even
    within one clock tick), but also when the same bytes are copied or restored; `content_id` is the
    SHA-256 of the bytes.
    Like S3, folders without any file below them are not listed. Unlike S3, a key cannot be both a file and
    a folder ("a" and "a/b").
    """

    def __init__(self, root: Path | str):
        # resolve() makes `uri` absolute and stable, since it is the store's identity in the ledger.
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        check_key(key)
        if not all(_visible(part) for part in key.split("/")):
            raise ValueError(f"invalid object key {key!r}: names starting with '.' are writes in progress")
        return self.root.joinpath(*key.split("/"))

    def _start(self, prefix: str) -> tuple[str, str, str] | None:
        """(folder path, its key prefix, the start of names in it) for a prefix, None if it is hidden."""
        check_prefix(prefix)
        folder, _, start = prefix.rpartition("/")
        if folder and not all(_visible(part) for part in folder.split("/")):
            return None
        return (
            os.path.join(self.root, folder) if folder else str(self.root),
            f"{folder}/" if folder else "",
            start,
        )

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        start = self._start(prefix)
        if start is not None:
            yield from self._walk(*start)

    def _walk(self, directory: str, base: str, start: str = "") -> Iterator[StoredObject]:
        try:
            with os.scandir(directory) as scan:
                entries = [e for e in scan if e.name.startswith(start) and _visible(e.name)]
        except (FileNotFoundError, NotADirectoryError):
            return
        # Every key below folder "x" starts with "x/", so sorting folders as "x/" yields keys in S3's order.
        entries.sort(key=lambda e: f"{e.name}/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, f"{base}{entry.name}/")
            elif entry.is_file() and (info := _info(f"{base}{entry.name}", entry)) is not None:
                yield info

    def list_level(self, prefix: str = "") -> tuple[list[str], list[StoredObject]]:
        start = self._start(prefix)
        if start is None:
            return [], []
        directory, base, name_start = start
        try:
            with os.scandir(directory) as scan:
                entries = [e for e in scan if e.name.startswith(name_start) and _visible(e.name)]
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        files = sorted((e for e in entries if e.is_file()), key=lambda e: e.name)
        objects = [info for e in files if (info := _info(f"{base}{e.name}", e)) is not None]
        return self.list_prefixes(prefix), objects

    def list_prefixes(self, prefix: str = "") -> list[str]:
        start = self._start(prefix)
        if start is None:
            return []
        directory, base, name_start = start
        try:
            with os.scandir(directory) as scan:
                folders = [
                    f"{base}{e.name}/"
                    for e in scan
                    if e.name.startswith(name_start)
                    and _visible(e.name)
                    and e.is_dir(follow_symlinks=False)
                    and _holds_file(e.path)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(folders)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise FileNotFoundError(f"no object {key!r} in {self.uri}") from error

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A dotfile beside the target, renamed over it: listings skip it, and readers never see half of it.
        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            with open(temp, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # so a crash cannot leave the renamed file empty
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def content_id(self, info: StoredObject) -> str:
        with open(self._path(info.key), "rb") as file:
            return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()

    def url(self, key: str) -> str:
        return self._path(key).as_uri()


def parse_s3_timestamp(value: str) -> datetime:
    """A time in an S3 response. Listings give ISO 8601 (`2026-12-06T03:00:00.000Z`), read by the standard
    library; anything else (an HTTP date in a header, a time without a zone) by botocore's own parser, whose
    dateutil parsing took 78% of the CPU of a landing listing."""
    from botocore.utils import parse_timestamp

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return parse_timestamp(value)
    return parsed if parsed.tzinfo is not None else parse_timestamp(value)


@functools.cache
def _s3_session() -> Any:
    """The boto3 session of every S3 store (as boto3's default one: S3's model loads once), with S3's times
    parsed by `parse_s3_timestamp`."""
    # Imported here so a local-only deployment never pays for boto3.
    import boto3
    import botocore.session

    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_s3_timestamp)
    return boto3.Session(botocore_session=session)


class S3ObjectStore:
    """Objects in an S3 bucket (or any S3-compatible store) below an optional key prefix.

    Credentials come from the standard AWS environment variables / configuration. Keys are relative to
    `prefix`; "folder marker" objects (keys ending in '/') are not listed.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        *,
        page_size: int = 1000,
    ):
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.page_size = page_size
        if client is None:
            from botocore.config import Config

            client = _s3_session().client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=Config(retries={"mode": "standard"}),
            )
        self.client = client

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.uri!r})"

    def _pages(self, prefix: str, **options: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        yield from paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + check_prefix(prefix),
            PaginationConfig={"PageSize": self.page_size},
            **options,
        )

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        for page in self._pages(prefix):
            yield from self._objects(page)

    def _objects(self, page: dict[str, Any]) -> Iterator[StoredObject]:
        skip = len(self.prefix)
        for item in page.get("Contents", ()):
            key = item["Key"][skip:]
            if not key or key.endswith("/"):
                continue
            yield StoredObject(
                key=key,
                size=item["Size"],
                etag=item["ETag"].strip('"'),
                last_modified=item["LastModified"].astimezone(UTC),
            )

    def list_level(self, prefix: str = "") -> tuple[list[str], list[StoredObject]]:
        skip = len(self.prefix)
        folders: list[str] = []
        objects: list[StoredObject] = []
        for page in self._pages(prefix, Delimiter="/"):
            folders += [common["Prefix"][skip:] for common in page.get("CommonPrefixes", ())]
            objects += self._objects(page)
        return folders, objects

    def list_prefixes(self, prefix: str = "") -> list[str]:
        skip = len(self.prefix)
        return [
            common["Prefix"][skip:]
            for page in self._pages(prefix, Delimiter="/")
            for common in page.get("CommonPrefixes", ())
        ]

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except self.client.exceptions.NoSuchKey as error:
            raise FileNotFoundError(f"no object {key!r} in {self.uri}") from error
        return response["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + check_key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{check_key(key)}"

    def content_id(self, info: StoredObject) -> str:
        # S3's ETag is the MD5 of the bytes for a single-part upload; for a multipart upload it is the MD5
        # of the parts' MD5s with `-N`, so the same bytes uploaded with another part size get another ETag
        # and load once more, replacing the key's rows (no duplicates). Hashing the bytes instead would
        # cost a second GET of every new archive.
        return info.etag


def open_store(url: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """The store a URL names: `file:///abs/path` or a plain path (local), or `s3://bucket/prefix`.

    For S3 the endpoint is `endpoint_url`, else `MEDLAKE_S3_ENDPOINT_URL` when set (MinIO, Ceph, a test
    server), else AWS.
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"object store URL {url!r} names no bucket")
        endpoint_url = endpoint_url or os.environ.get(S3_ENDPOINT_ENV) or None
        return S3ObjectStore(parsed.netloc, parsed.path, endpoint_url=endpoint_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(
                f"object store URL {url!r} names a remote host; only local file URLs are supported"
            )
        return LocalObjectStore(Path(url2pathname(parsed.path)))
    if parsed.scheme == "":
        return LocalObjectStore(Path(url))
    raise ValueError(
        f"unsupported object store URL {url!r}: use file:///path, a plain path or s3://bucket/prefix"
    )
