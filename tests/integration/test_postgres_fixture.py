"""The PostgreSQL fixtures themselves: a real server, a fresh database per test, a restart under us."""

from __future__ import annotations

import os
import pwd
import time

import psycopg
import pytest

from tests.postgres import PostgresServer

# Generous: the server is ready in about a second; a loaded CI machine may be slower.
STARTUP_BOUND_SECONDS = 20.0


def test_a_fresh_database_answers_a_query(postgres_dsn: str) -> None:
    """A connection to the per-test database answers ``SELECT 1``."""
    with psycopg.connect(postgres_dsn) as connection:
        assert (1,) == connection.execute("SELECT 1").fetchone()


def test_two_fresh_databases_do_not_share_tables(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    """A table created in one fresh database does not exist in another."""
    other_name = postgres_server.create_database()
    try:
        with psycopg.connect(postgres_dsn) as connection:
            connection.execute("CREATE TABLE journal (name text PRIMARY KEY)")
            connection.execute("INSERT INTO journal VALUES ('a.bin')")
        with psycopg.connect(postgres_server.dsn(other_name)) as connection:
            found = connection.execute("SELECT to_regclass('public.journal')").fetchone()
            tables = connection.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchone()
        assert (None,) == found
        assert (0,) == tables
    finally:
        postgres_server.drop_database(other_name)


def test_data_and_the_dsn_survive_a_restart(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    """After a stop and a start on the same data directory, the same DSN reaches the same rows."""
    with psycopg.connect(postgres_dsn) as connection:
        connection.execute("CREATE TABLE journal (name text PRIMARY KEY)")
        connection.execute("INSERT INTO journal VALUES ('a.bin'), ('b.bin')")

    postgres_server.stop()
    stopped_ready = postgres_server.is_ready()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_dsn, connect_timeout=2).close()
    postgres_server.start()

    with psycopg.connect(postgres_dsn) as connection:
        rows = connection.execute("SELECT name FROM journal ORDER BY name").fetchall()
    assert False is stopped_ready
    assert [("a.bin",), ("b.bin",)] == rows


def test_the_server_runs_as_postgres_not_root(postgres_server: PostgresServer) -> None:
    """The postmaster's process belongs to ``postgres`` when the tests run as root, else to us."""
    pid = postgres_server.pid()
    assert pid is not None
    owner_uid = os.stat(f"/proc/{pid}").st_uid
    expected = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert expected == pwd.getpwuid(owner_uid).pw_name
    assert 0 != owner_uid


def test_the_server_is_ready_within_seconds_of_a_start(postgres_server: PostgresServer) -> None:
    """From ``pg_ctl start`` to accepting connections takes about a second (bounded generously)."""
    postgres_server.stop()
    started = time.monotonic()
    postgres_server.start()
    elapsed = time.monotonic() - started

    with psycopg.connect(postgres_server.dsn()) as connection:
        assert (1,) == connection.execute("SELECT 1").fetchone()
    assert elapsed < STARTUP_BOUND_SECONDS, f"PostgreSQL took {elapsed:.2f}s to be ready"


def test_the_server_listens_on_its_own_socket_only(postgres_server: PostgresServer) -> None:
    """No TCP address, the socket directory under the temp dir, room for several daemons' pools."""
    with psycopg.connect(postgres_server.dsn()) as connection:
        settings = connection.execute(
            "SELECT current_setting('listen_addresses'), current_setting('unix_socket_directories'),"
            " current_setting('max_connections')::int, current_setting('fsync')"
        ).fetchone()
    assert ("", str(postgres_server.socket_dir), postgres_server.max_connections, "off") == settings
