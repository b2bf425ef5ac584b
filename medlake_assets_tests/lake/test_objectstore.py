"""One behaviour suite for both object stores (local folder and S3 over the loopback endpoint), then the
few behaviours only one of them has."""

from __future__ import annotations

import os
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from medlake_assets.lake.objectstore import (
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
    StoredObject,
    open_store,
    parse_s3_timestamp,
)
from medlake_assets_tests.s3_endpoint import s3_client

S3_PREFIX = "lake"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(bucket, S3_PREFIX, endpoint_url=request.getfixturevalue("s3_endpoint"))


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


LANDED = {
    "landing/lab_results/2024/03/01/fac_b/b1.zip": 11,
    "landing/lab_results/2024/03/01/fac_a/a2.zip": 12,
    "landing/lab_results/2024/03/01/fac_a/a1.zip": 13,
    "landing/lab_results/2024/03/02/fac_a/a3.csv.gz": 14,
    "landing/lab_results/2024/03/02/fac-a/x.zip": 15,
    "landing/lab_results/2024/03/02/fac/y.zip": 16,
    "landing/lab_results/2024/03/02/fac.zip": 17,  # a file beside the folders of the same day
    "landing/lab_results/2024/04/01/fac_a/a4.zip": 18,
    "landing/adt_events/2024/03/01/fac_a/m.zip": 19,
    "README.txt": 20,
}


def fill(store: ObjectStore) -> None:
    for number, (key, size) in enumerate(LANDED.items()):
        store.put(key, payload(number, size))


def test_store_satisfies_the_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_put_get_exists_round_trip(store: ObjectStore) -> None:
    data = payload(1, 4096)
    assert not store.exists("landing/a/b.zip")
    store.put("landing/a/b.zip", data)
    assert store.exists("landing/a/b.zip")
    assert store.get("landing/a/b.zip") == data
    assert not store.exists("landing/a")  # a "folder" is not an object
    store.put("landing/a/b.zip", b"")
    assert store.get("landing/a/b.zip") == b""


def test_get_of_a_missing_object_raises_file_not_found(store: ObjectStore) -> None:
    store.put("landing/a/b.zip", b"x")
    for key in ["landing/a/c.zip", "landing/a", "landing/a/b.zip/c"]:
        with pytest.raises(FileNotFoundError, match=re.escape(f"no object {key!r} in {store.uri}")):
            store.get(key)


def test_list_is_recursive_sorted_by_key_with_exact_sizes(store: ObjectStore) -> None:
    fill(store)
    listed = list(store.list(""))
    assert [info.key for info in listed] == sorted(LANDED)
    assert {info.key: info.size for info in listed} == LANDED
    assert all(isinstance(info, StoredObject) and info.etag for info in listed)
    assert len({info.etag for info in listed}) == len(LANDED)


def test_list_sorts_folders_by_their_full_key(store: ObjectStore) -> None:
    fill(store)
    keys = [info.key for info in store.list("landing/lab_results/2024/03/02/")]
    # Byte order of whole keys: '-' (0x2d) < '.' (0x2e) < '/' (0x2f) < '_' (0x5f).
    assert keys == [
        "landing/lab_results/2024/03/02/fac-a/x.zip",
        "landing/lab_results/2024/03/02/fac.zip",
        "landing/lab_results/2024/03/02/fac/y.zip",
        "landing/lab_results/2024/03/02/fac_a/a3.csv.gz",
    ]


def test_list_prefix_is_a_string_prefix(store: ObjectStore) -> None:
    fill(store)
    assert [info.key for info in store.list("landing/lab_results/2024/03/01/fac_a/")] == [
        "landing/lab_results/2024/03/01/fac_a/a1.zip",
        "landing/lab_results/2024/03/01/fac_a/a2.zip",
    ]
    assert [info.key for info in store.list("landing/lab_results/2024/03/01/fac_a/a2")] == [
        "landing/lab_results/2024/03/01/fac_a/a2.zip"
    ]
    assert [info.key for info in store.list("landing/lab_results/2024/0")] == sorted(
        key for key in LANDED if key.startswith("landing/lab_results/")
    )
    assert list(store.list("landing/nothing/")) == []
    assert list(store.list("landing/lab_results/2024/03/01/fac_a/a1.zip/")) == []


def test_list_reports_utc_modification_times(store: ObjectStore) -> None:
    before = datetime.now(UTC)
    store.put("k.bin", b"abc")
    (info,) = store.list("")
    assert info.last_modified.tzinfo == UTC
    assert abs(info.last_modified - before) < timedelta(minutes=5)


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-06T03:04:05.000Z",  # a listing's time
        "2026-12-06T03:04:05Z",
        "2026-12-06T05:04:05.250+02:00",
        "Sun, 06 Dec 2026 03:04:05 GMT",  # an HTTP header's
        "2026-12-06T03:04:05",  # no zone: left to botocore (it reads a naive time)
    ],
)
def test_s3_times_read_as_botocore_reads_them(text: str) -> None:
    """The listing's times are parsed by the standard library (botocore's dateutil took 78% of a listing's
    CPU); each gives the instant botocore's own parser gives."""
    from botocore.utils import parse_timestamp

    parsed, expected = parse_s3_timestamp(text), parse_timestamp(text)
    assert (parsed.tzinfo is None) == (expected.tzinfo is None) == text.endswith("05")
    assert parsed == expected


def test_etag_changes_when_an_object_is_rewritten(store: ObjectStore) -> None:
    store.put("k.bin", payload(1, 100))
    (first,) = store.list("")
    store.put("k.bin", payload(2, 150))
    (second,) = store.list("")
    assert (second.size, first.size) == (150, 100)
    assert second.etag != first.etag


def test_list_prefixes_gives_immediate_folders_in_key_order(store: ObjectStore) -> None:
    fill(store)
    assert store.list_prefixes("") == ["landing/"]
    assert store.list_prefixes("landing/") == ["landing/adt_events/", "landing/lab_results/"]
    assert store.list_prefixes("landing/lab_results/2024/") == [
        "landing/lab_results/2024/03/",
        "landing/lab_results/2024/04/",
    ]
    assert store.list_prefixes("landing/lab_results/2024/03/") == [
        "landing/lab_results/2024/03/01/",
        "landing/lab_results/2024/03/02/",
    ]
    # Files (fac.zip) are not folders; folders sort by their full prefix.
    assert store.list_prefixes("landing/lab_results/2024/03/02/") == [
        "landing/lab_results/2024/03/02/fac-a/",
        "landing/lab_results/2024/03/02/fac/",
        "landing/lab_results/2024/03/02/fac_a/",
    ]
    assert store.list_prefixes("landing/lab_results/2024/0") == [
        "landing/lab_results/2024/03/",
        "landing/lab_results/2024/04/",
    ]
    assert store.list_prefixes("landing/nothing/") == []
    assert store.list_prefixes("landing/lab_results/2024/03/01/fac_a/") == []


@pytest.mark.parametrize(
    "key", ["", "/abs/x.zip", "../x.zip", "a/../../x.zip", "a//b.zip", "a/./b.zip", "a/b/"]
)
def test_keys_that_could_escape_the_root_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid object key"):
        store.get(key)
    with pytest.raises(ValueError, match="invalid object key"):
        store.exists(key)
    with pytest.raises(ValueError, match="invalid object key"):
        store.url(key)


@pytest.mark.parametrize("prefix", ["/abs/", "../", "a/../", "a//", "./", ".."])
def test_prefixes_that_could_escape_the_root_are_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid key prefix"):
        list(store.list(prefix))
    with pytest.raises(ValueError, match="invalid key prefix"):
        store.list_prefixes(prefix)


def test_open_store_of_the_uri_reaches_the_same_objects(store: ObjectStore) -> None:
    store.put("landing/a/b.zip", b"same")
    reopened = open_store(store.uri)
    assert type(reopened) is type(store)
    assert reopened.uri == store.uri
    assert reopened.get("landing/a/b.zip") == b"same"
    assert [info.key for info in reopened.list("")] == ["landing/a/b.zip"]


# Local folder only.


def test_local_uri_and_url_are_file_uris(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "my lake")
    store.put("landing/a b/c.zip", b"x")
    assert store.uri == (tmp_path / "my lake").as_uri()
    assert store.uri.startswith("file:///") and "%20" in store.uri
    url = store.url("landing/a b/c.zip")
    assert url == f"{store.uri}/landing/a%20b/c.zip"
    assert Path(url2pathname(urlparse(url).path)).read_bytes() == b"x"


def test_local_hides_dotfiles_and_dot_folders_of_writes_in_progress(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("landing/s/2024/03/01/f/done.zip", b"done")
    (tmp_path / "landing/s/2024/03/01/f/.upload.zip.part").write_bytes(b"half")
    (tmp_path / "landing/s/2024/03/02/.staging").mkdir(parents=True)
    (tmp_path / "landing/s/2024/03/02/.staging/x.zip").write_bytes(b"half")
    assert [info.key for info in store.list("")] == ["landing/s/2024/03/01/f/done.zip"]
    assert store.list_prefixes("landing/s/2024/03/") == ["landing/s/2024/03/01/"]
    assert store.list_prefixes("landing/s/2024/03/02/") == []
    assert list(store.list("landing/s/2024/03/02/.staging/")) == []
    with pytest.raises(ValueError, match="writes in progress"):
        store.get("landing/s/2024/03/01/f/.upload.zip.part")


def test_local_empty_folders_are_not_prefixes(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("landing/s/2024/03/01/f/a.zip", b"a")
    (tmp_path / "landing/s/2024/03/02/f/empty").mkdir(parents=True)
    assert store.list_prefixes("landing/s/2024/03/") == ["landing/s/2024/03/01/"]


def test_local_put_leaves_no_temp_file_and_keeps_umask_permissions(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("a/b.zip", b"one")
    store.put("a/b.zip", b"two")
    assert sorted(os.listdir(tmp_path / "a")) == ["b.zip"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a/b.zip").stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_etag_changes_on_a_same_size_rewrite_within_one_clock_tick(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("k.bin", payload(1, 64))
    (first,) = store.list("")
    store.put("k.bin", payload(2, 64))
    (second,) = store.list("")
    # File times can be as coarse as a kernel tick; the replaced file's new inode tells them apart anyway.
    assert first.etag != second.etag
    assert first.etag.split("-")[0] == second.etag.split("-")[0] == "64"


def test_local_missing_root_lists_nothing(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "absent")
    assert list(store.list("")) == []
    assert store.list_prefixes("") == []
    assert not store.exists("a.zip")


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("lake")
    assert isinstance(relative, LocalObjectStore)
    assert relative.root == tmp_path.resolve() / "lake"
    assert open_store(str(tmp_path / "x y")).uri == (tmp_path / "x y").as_uri()
    assert open_store((tmp_path / "x y").as_uri()).root == tmp_path / "x y"
    assert open_store(f"file://localhost{tmp_path}/z").root == tmp_path / "z"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "names no bucket"),
        ("file://server/share", "remote host"),
        ("gs://bucket/x", "unsupported object store URL"),
    ],
)
def test_open_store_rejects_unsupported_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url)


# S3 only.


@pytest.mark.s3
def test_s3_keys_are_relative_to_the_prefix(s3_endpoint: str, s3_bucket: str) -> None:
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="outside.zip", Body=b"o")
    client.put_object(Bucket=s3_bucket, Key="lakehouse/other.zip", Body=b"o")
    client.put_object(Bucket=s3_bucket, Key="lake/landing/", Body=b"")  # a console's folder marker
    store = S3ObjectStore(s3_bucket, "/lake/", endpoint_url=s3_endpoint)
    store.put("landing/a/b.zip", b"in")
    assert store.uri == f"s3://{s3_bucket}/lake"
    assert store.url("landing/a/b.zip") == f"s3://{s3_bucket}/lake/landing/a/b.zip"
    assert client.get_object(Bucket=s3_bucket, Key="lake/landing/a/b.zip")["Body"].read() == b"in"
    assert [info.key for info in store.list("")] == ["landing/a/b.zip"]
    assert store.list_prefixes("") == ["landing/"]
    head = client.head_object(Bucket=s3_bucket, Key="lake/landing/a/b.zip")
    (info,) = store.list("")
    assert info.etag == head["ETag"].strip('"')
    assert '"' not in info.etag


@pytest.mark.s3
def test_s3_without_prefix_uses_the_whole_bucket(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}")
    assert isinstance(store, S3ObjectStore)
    store.put("a/b.zip", b"x")
    assert store.uri == f"s3://{s3_bucket}"
    assert store.url("a/b.zip") == f"s3://{s3_bucket}/a/b.zip"
    assert s3_client(s3_endpoint).get_object(Bucket=s3_bucket, Key="a/b.zip")["Body"].read() == b"x"


@pytest.mark.s3
def test_s3_listings_follow_every_page(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3ObjectStore(s3_bucket, "lake", endpoint_url=s3_endpoint, page_size=7)
    keys = [f"landing/s/2024/03/{day:02d}/f/{number}.zip" for day in range(1, 6) for number in range(5)]
    for key in keys:
        store.put(key, b"x")
    calls: list[str] = []
    store.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append("list"))
    assert [info.key for info in store.list("landing/")] == sorted(keys)
    assert len(calls) == 4  # 25 objects, 7 per page
    calls.clear()
    small_pages = S3ObjectStore(s3_bucket, "lake", client=store.client, page_size=2)
    assert small_pages.list_prefixes("landing/s/2024/03/") == [
        f"landing/s/2024/03/{day:02d}/" for day in range(1, 6)
    ]
    assert len(calls) == 3  # 5 common prefixes, 2 per page


def test_list_level_gives_folders_and_the_objects_directly_below(store: ObjectStore) -> None:
    fill(store)
    folders, objects = store.list_level("landing/lab_results/2024/03/02/")
    assert folders == store.list_prefixes("landing/lab_results/2024/03/02/")
    assert [(info.key, info.size) for info in objects] == [("landing/lab_results/2024/03/02/fac.zip", 17)]
    assert store.list_level("") == (["landing/"], [next(iter(store.list("README.txt")))])
    assert store.list_level("landing/nothing/") == ([], [])


def test_content_id_is_the_same_for_the_same_bytes_wherever_and_whenever_written(store: ObjectStore) -> None:
    """The ledger's identity of an object version: a copy or a restore of the same bytes keeps it, even
    where the listing's own etag (locally size-mtime-inode) changes."""
    store.put("a/k.bin", payload(1, 100))
    (first,) = store.list("a/")
    store.put("a/k.bin", payload(1, 100))  # rewritten: same bytes, new file
    store.put("b/k.bin", payload(1, 100))
    store.put("c/k.bin", payload(2, 100))
    (again,), (copy,), (other,) = store.list("a/"), store.list("b/"), store.list("c/")
    assert store.content_id(first) == store.content_id(again) == store.content_id(copy)
    assert store.content_id(other) != store.content_id(first)


def test_local_content_id_is_a_sha256_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    store = LocalObjectStore(tmp_path)
    store.put("k.bin", payload(3, 5000))
    (info,) = store.list("")
    assert store.content_id(info) == "sha256:" + hashlib.sha256(payload(3, 5000)).hexdigest()
