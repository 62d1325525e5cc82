"""Fixtures shared by every test: clean logging, a real emulator, config files."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.helpers import write_config
from tests.postgres import PostgresServer, PostgresUnavailable, find_postgres
from uploader_daemon.emulator import Emulator, EmulatorSettings

PASSWORD = "s3cret-Passw0rd"  # the emulator account the tests log in with


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults and no handlers left by another test."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may reach AWS or a proxy: dummy credentials, no instance metadata."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "NO_PROXY": "*",
        "no_proxy": "*",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """The project's own API emulator on 127.0.0.1 and a free port."""
    settings = EmulatorSettings(storage_dir=tmp_path / "server", users={"uploader": PASSWORD})
    with Emulator(settings) as running:
        yield running


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """A drop folder (created) and the paths the daemon will create itself."""
    paths = {
        "drop": tmp_path / "drop",
        "sent": tmp_path / "sent",
        "failed": tmp_path / "failed",
        "state": tmp_path / "state",
        "out": tmp_path / "out",
    }
    paths["drop"].mkdir()
    return paths


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on a Unix socket for the session; skipped without the binaries, except in CI."""
    try:
        install = find_postgres()
    except PostgresUnavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{error} CI installs it in .ci/run: PostgreSQL tests never skip in CI.")
        pytest.skip(str(error))
    # Not tmp_path: pytest's base directory is private to root, and the server may run as postgres.
    with (
        tempfile.TemporaryDirectory(prefix="uploader-pg-") as base_dir,
        PostgresServer(Path(base_dir), install) as server,
    ):
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database on the session's server, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.dsn(name)
    postgres_server.drop_database(name)


__all__ = ["PASSWORD", "write_config"]
