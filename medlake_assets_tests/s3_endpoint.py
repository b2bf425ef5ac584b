"""A loopback S3 endpoint for tests: moto's server on 127.0.0.1, with dummy credentials.

`s3_endpoint` (session) yields the endpoint URL and also sets `MEDLAKE_S3_ENDPOINT_URL`, so `open_store`
reaches it: the server CI started (`scripts/start_s3.sh`, exported as `MEDLAKE_TEST_S3_ENDPOINT`) when
set, else one moto server started in this process. `s3_bucket` (per test) yields a fresh, empty bucket and
deletes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from medlake_assets.lake.objectstore import S3_ENDPOINT_ENV

TEST_ENDPOINT_ENV = "MEDLAKE_TEST_S3_ENDPOINT"

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Unset so a developer's own AWS profile or session can never leak into (or be used by) the tests.
CLEARED_ENV = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The loopback S3 endpoint's URL for the whole session, with dummy credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DUMMY_ENV.items():
            patch.setenv(name, value)
        for name in CLEARED_ENV:
            patch.delenv(name, raising=False)
        if given := os.environ.get(TEST_ENDPOINT_ENV, "").strip():
            endpoint = given.rstrip("/")
            patch.setenv(S3_ENDPOINT_ENV, endpoint)
            yield endpoint
            return
        # Imported here so sessions that never touch S3 do not pay for importing moto.
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            patch.setenv(S3_ENDPOINT_ENV, endpoint)
            yield endpoint
        finally:
            server.stop()


def s3_client(endpoint: str):
    """A plain boto3 S3 client for the loopback endpoint (tests use it to look behind the store)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=DUMMY_ENV["AWS_DEFAULT_REGION"])


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    """A fresh, uniquely named, empty bucket; emptied and deleted after the test."""
    client = s3_client(s3_endpoint)
    name = f"medlake-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)
