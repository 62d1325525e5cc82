"""A real PostgreSQL server for the tests, started by the tests from Debian's binaries.

The server listens on a Unix socket only (``listen_addresses=''``), in a socket
directory of its own: it takes no TCP port, so it cannot clash with another server
on the machine (a developer's own PostgreSQL, another engineer's test run), and it
never opens a network socket at all. The port is still part of the socket's name
(``.s.PGSQL.<port>``) and of the DSN; since the directory is private, the default
port is always free there.

PostgreSQL refuses to run as root. When the tests run as root (as CI does), every
binary runs through ``runuser -u postgres --`` and the server's directories belong to
``postgres``; the base directory must then be reachable by that user, which pytest's
``tmp_path`` is not (``/tmp/pytest-of-root`` is mode 0700): give it a directory from
``tempfile.mkdtemp()`` instead.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

from tests.helpers import wait_until

DEBIAN_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "install them with `apt-get install postgresql` (Debian's package; no service is needed)"
SUPERUSER = "postgres"  # the role initdb creates (-U), whatever the OS user is
SERVICE_USER = "postgres"  # the OS user Debian's package creates, to run the server as when we are root
# Unix socket paths are limited to 107 bytes (sun_path) on Linux.
_SOCKET_PATH_LIMIT = 107


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run on this machine; the message says what to install or fix."""


class PostgresFailed(RuntimeError):
    """A PostgreSQL command failed or the server did not become ready; the message quotes its log."""


@dataclass(frozen=True)
class PostgresInstall:
    """Where the binaries are, their major version, and the OS user to run them as (None: ourselves)."""

    bin_dir: Path
    version: tuple[int, ...]
    run_as: str | None

    def command(self, name: str, *arguments: str) -> list[str]:
        """The argument list that runs binary ``name`` as the right user."""
        command = [str(self.bin_dir / name), *arguments]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command


def find_postgres(root: Path = DEBIAN_ROOT) -> PostgresInstall:
    """Find the newest ``<root>/<version>/bin`` that has ``pg_ctl``, and who must run it.

    Raises :class:`PostgresUnavailable` when there are no binaries, or when we are root
    and there is no ``postgres`` user to run them as.
    """
    found: list[tuple[tuple[int, ...], Path]] = []
    for pg_ctl in root.glob("*/bin/pg_ctl"):
        version_name = pg_ctl.parent.parent.name
        try:
            found.append((tuple(int(part) for part in version_name.split(".")), pg_ctl.parent))
        except ValueError:
            continue  # not a version directory
    if not found:
        raise PostgresUnavailable(f"No PostgreSQL binaries in {root}/*/bin: {INSTALL_HINT}.")
    version, bin_dir = max(found)
    if os.geteuid() != 0:
        return PostgresInstall(bin_dir, version, None)
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"PostgreSQL is in {bin_dir} but there is no {SERVICE_USER!r} user to run it as root: "
            "reinstall it with `apt-get install --reinstall postgresql-common`, "
            "or run the tests as another user."
        ) from None
    return PostgresInstall(bin_dir, version, SERVICE_USER)


class PostgresServer:
    """One PostgreSQL server in ``base_dir``: its data, socket directory and log.

    ``with PostgresServer(base_dir) as server:`` creates the cluster and starts it;
    leaving the block stops it and removes what it created. :meth:`stop` and
    :meth:`start` restart it on the same data directory and port, so a DSN stays valid
    across a restart.
    """

    def __init__(
        self,
        base_dir: Path,
        install: PostgresInstall | None = None,
        port: int = 5432,
        max_connections: int = 200,
        timeout: float = 20.0,
    ) -> None:
        self.install = install or find_postgres()
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "socket"
        self.log_path = base_dir / "postgresql.log"
        self.port = port
        # Several daemons, each with a connection pool, share one server in some tests.
        self.max_connections = max_connections
        self.timeout = timeout
        self.last_start_seconds: float | None = None

    def __enter__(self) -> PostgresServer:
        try:
            self.initialise()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI for ``dbname`` on this server's socket, as the superuser (trust: no password)."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql:///{quote(dbname, safe='')}?host={host}&port={self.port}&user={SUPERUSER}"

    def initialise(self) -> None:
        """Create the cluster: trust authentication, UTF-8, C locale, no fsync of the new files."""
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > _SOCKET_PATH_LIMIT:
            raise PostgresFailed(
                f"The socket path {socket_path} is too long for a Unix socket: use a shorter base_dir."
            )
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.install.run_as:
            self._hand_over(self.base_dir, self.socket_dir)
        self._run(
            "initdb",
            *("-D", str(self.data_dir), "-A", "trust", "-E", "UTF8", "--locale=C"),
            *("-U", SUPERUSER, "--no-sync"),
        )

    def start(self) -> None:
        """Start the server and return once it accepts connections on its socket.

        Raises :class:`PostgresFailed` with the server's log when it does not start or is
        not ready within ``timeout`` seconds.
        """
        settings = {
            "fsync": "off",
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "port": str(self.port),
            "max_connections": str(self.max_connections),
        }
        # pg_ctl hands -o to a shell, hence the quoting.
        options = " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings.items())
        started = time.monotonic()
        # -w: pg_ctl waits (up to -t seconds) for the server to report itself ready, and
        # fails at once if the server exits during start-up.
        self._run(
            "pg_ctl",
            *("start", "-D", str(self.data_dir), "-l", str(self.log_path), "-s"),
            *("-w", "-t", str(round(self.timeout)), "-o", options),
        )
        # pg_isready through the socket of the DSN proves what the tests will use; it
        # normally answers at the first try, since pg_ctl already waited.
        remaining = max(1.0, started + self.timeout - time.monotonic())
        try:
            wait_until(self.is_ready, remaining, "PostgreSQL to accept connections")
        except AssertionError:
            raise PostgresFailed(
                f"PostgreSQL started but does not accept connections:\n{self._log_tail()}"
            ) from None
        self.last_start_seconds = time.monotonic() - started

    def is_ready(self) -> bool:
        """Whether the server accepts connections on its socket now (``pg_isready``)."""
        arguments = ("-q", "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-t", "1")
        command = self.install.command("pg_isready", *arguments)
        return (
            subprocess.run(command, cwd=self.base_dir, env=_clean_environment(), check=False).returncode == 0
        )

    def is_running(self) -> bool:
        """Whether a server is running on the data directory (``pg_ctl status``)."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        command = self.install.command("pg_ctl", "status", "-D", str(self.data_dir))
        result = subprocess.run(
            command, cwd=self.base_dir, env=_clean_environment(), capture_output=True, check=False
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Stop the server (``-m fast``: sessions are ended, data is kept); nothing if it is not running."""
        if self.is_running():
            timeout = str(round(self.timeout))
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-s", "-w", "-t", timeout)

    def pid(self) -> int | None:
        """The postmaster's process id, from ``postmaster.pid``; None when it is not running."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def create_database(self) -> str:
        """Create a fresh, empty database and return its name (from ``template0``: nothing copied in)."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, ending any session still connected to it (a daemon left running)."""
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def close(self) -> None:
        """Stop the server however it can be stopped, then remove its data, socket directory and log."""
        try:
            self.stop()
        except PostgresFailed:
            # A server that does not stop in time is killed, so that no test leaves one behind.
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-s", "-w", check=False)
        finally:
            for path in (self.data_dir, self.socket_dir):
                shutil.rmtree(path, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)

    def _hand_over(self, *paths: Path) -> None:
        """Give ``paths`` to the service user, and check that it can reach them."""
        assert self.install.run_as is not None
        for path in paths:
            shutil.chown(path, self.install.run_as, self.install.run_as)
        reach = ["runuser", "-u", self.install.run_as, "--", "test", "-w", str(self.base_dir)]
        if subprocess.run(reach, env=_clean_environment(), check=False).returncode != 0:
            raise PostgresFailed(
                f"The {self.install.run_as!r} user cannot reach {self.base_dir}: one of its parents is "
                "private (pytest's tmp_path is); give PostgresServer a directory from tempfile.mkdtemp()."
            )

    def _run(self, name: str, *arguments: str, check: bool = True) -> None:
        """Run a PostgreSQL binary; raise :class:`PostgresFailed` with its output and log when it fails."""
        command = self.install.command(name, *arguments)
        # cwd: the service user may not be allowed into ours, and postgres warns about that.
        result = subprocess.run(
            command, cwd=self.base_dir, env=_clean_environment(), capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise PostgresFailed(
                f"`{shlex.join(command)}` exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "server log:\n" + "\n".join(text.splitlines()[-lines:])


def _clean_environment() -> dict[str, str]:
    """Our environment without the PG* variables (PGDATA, PGHOST, ...) that would redirect the binaries."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}
