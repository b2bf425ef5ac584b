"""A serve-sql login's DuckDB database on its own, with the statement allow-list bypassed (SQL run straight
on `LoginDatabase.con`): the lock itself keeps files outside the warehouse, extensions and settings out of
reach, and one login's database is not another's."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from medlake_assets.serving.pgwire.config import ServeSettings
from medlake_assets.serving.pgwire.database import open_login_database
from medlake_assets.spec.access import load_access
from medlake_assets_tests.serving.pgwire_helpers import base_environ, raw_login, send_query, serve, stop
from medlake_assets_tests.serving.serving_lake import LABS, build_serving_lake


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    lake = build_serving_lake(tmp_path_factory.mktemp("pgwire-db") / "home").lake
    access = load_access(lake.settings.access_dir)
    serve = ServeSettings(memory_limit="256MiB", threads=1)
    first = open_login_database(lake, access, access.login("medlake"), serve)
    second = open_login_database(lake, access, access.login("medlake"), serve)
    yield lake, first, second
    first.close()
    second.close()


def test_a_bypassed_allow_list_still_reads_no_file_outside_the_warehouse(served, tmp_path):
    lake, database, _ = served
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\n1\n")
    for sql in (
        f"SELECT * FROM read_csv('{outside}')",
        "SELECT * FROM read_text('/etc/hostname')",
        f"ATTACH '{tmp_path}/other.duckdb' AS other",
    ):
        with pytest.raises(duckdb.PermissionException):
            database.con.execute(sql)
    warehouse = lake.settings.warehouse.removeprefix("file://")
    # The warehouse itself stays readable: the lake's views read it.
    assert (
        database.con.execute(f"SELECT count(*) FROM read_parquet('{warehouse}/**/*.parquet')").fetchone()[0]
        > 0
    )


def test_a_bypassed_allow_list_can_neither_load_extensions_nor_change_settings(served):
    _, database, second = served
    for sql in (
        "LOAD spatial",
        "INSTALL spatial",
        "SET lock_configuration = false",
        "SET enable_external_access = true",
        "SET memory_limit = '100GB'",
        "SET GLOBAL threads = 64",
        "PRAGMA memory_limit = '100GB'",
    ):
        with pytest.raises(duckdb.Error):
            database.con.execute(sql)
    for con in (database.con, second.con):
        settings = (
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('memory_limit', 'threads') ORDER BY 1"
        )
        assert con.execute(settings).fetchall() == [("memory_limit", "256.0 MiB"), ("threads", "1")]


def test_each_login_database_is_its_own(served):
    _, first, second = served
    first.con.execute("CREATE TEMP TABLE planted AS SELECT 1 AS x")
    assert first.con.execute("SELECT x FROM planted").fetchone() == (1,)
    with pytest.raises(duckdb.CatalogException):
        second.con.execute("SELECT x FROM planted")
    schema, table = LABS.split(".")
    assert second.con.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0] > 0


def test_stopping_the_server_ends_every_connection_and_its_database(served):
    """server_close returns only once each connection's thread has closed its DuckDB database, even one
    in the middle of a query: a database left open at process exit aborted the process ("terminate
    called without an active exception")."""
    lake, _, _ = served
    running = serve(lake, base_environ())
    idle = running.connect()
    busy = raw_login(running)
    send_query(busy, "SELECT count(*) FROM range(100000000000)")
    time.sleep(0.5)  # the query is running
    stop(running)
    assert [thread for thread in threading.enumerate() if thread.name == "serve-sql"] == []
    busy.close()
    idle.close()
