"""The pieces every benchmark shares: the server, the bare client, the daemon, clocks.

Used by the benchmarks in ``bench/`` (numbers for people, ``bench/run.py``) and by
``tests/integration/test_performance.py`` (a bound that fails the build).

- The emulator runs in its own process (``running_server``); every peer of one
  invocation talks to that same process, and ``Server.clear_received`` deletes what it
  stored between runs so the disk does not fill.
- The bare client (``bare_client``/``send_with_bare_client``) is a plain
  ``httpx.AsyncClient``: its login happens before its clock starts, and it reads files
  that already exist.
- The daemon (``running_daemon``) is ``python -m uploader_daemon run`` as its own
  process, with a config written here; the caller decides when files appear.
- ``alternating`` runs the two sides peer, daemon, daemon, peer against one server.

Where both ends of an interval are points in a file's life (renamed, stored by the
server, archived), they are read from the files' ``st_ctime``: the kernel stamps them
the moment they happen, whoever is looking, so how often a benchmark polls does not
move the result. The kernel stamps from its tick clock, which lags the fine clock by
up to one tick (4 ms at ``CONFIG_HZ=250``); differences of two stamps are good to a
tick.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import httpx

USER = "bench"
PASSWORD = "bench-password"
MIB = 1024 * 1024
_DEADLINE = 120.0
# The emulator stores flow T uploads as envio/<upload id>/<name> under its storage dir.
_RECEIVED_DIR = "envio"
PeerRun = TypeVar("PeerRun")
DaemonRun = TypeVar("DaemonRun")

_CONFIG = """
state_dir: {root}/state
log: {{level: info, format: json}}
targets:
  - name: bench
    folder: {drop}
    settle: {settle}
    concurrency: {concurrency}
    after_upload: {{action: archive, archive_dir: {sent}}}
    failed_dir: {failed}
    api: {{base_url: "{url}", timeout: {api_timeout}}}
    auth:
      type: token
      login: {{username: {user}, password: {password}}}
    upload: {{type: multipart}}
"""


@dataclass(frozen=True)
class Run:
    """How long sending took, and the CPU the sender spent on it."""

    seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class Server:
    """The emulator process every peer of one invocation sends to."""

    url: str
    storage: Path

    @property
    def received_dir(self) -> Path:
        """Where the emulator stores what ``/api/envio`` receives."""
        return self.storage / _RECEIVED_DIR

    def received_files(self) -> list[Path]:
        """Every file stored so far (since the last ``clear_received``)."""
        if not self.received_dir.exists():
            return []
        return [path for path in self.received_dir.glob("*/*") if path.is_file()]

    def clear_received(self) -> None:
        """Delete what the server stored, so that runs do not fill the disk (its records stay)."""
        shutil.rmtree(self.received_dir, ignore_errors=True)


@contextmanager
def running_server(storage: Path) -> Iterator[Server]:
    """The emulator as its own process on a free port, with a login for ``USER``."""
    storage.mkdir(parents=True, exist_ok=True)
    log_path = storage.parent / f"{storage.name}.log"
    with log_path.open("w") as log:
        # A file, not a pipe: nobody reads the emulator's output while it serves, and a
        # full pipe would block it.
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uploader_daemon.emulator",
                "--port",
                "0",
                "--storage-dir",
                str(storage),
                "--user",
                f"{USER}:{PASSWORD}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_until(lambda: "\n" in log_path.read_text() or process.poll() is not None, 30)
            url = log_path.read_text().splitlines()[0].strip()
            if not url.startswith("http://"):
                raise RuntimeError(f"the emulator did not start: {log_path.read_text()}")
            yield Server(url, storage)
        finally:
            process.terminate()
            process.wait(30)


@contextmanager
def running_emulator(storage: Path) -> Iterator[str]:
    """The emulator as its own process on a free port; yields its base URL."""
    with running_server(storage) as server:
        yield server.url


def alternating(
    server: Server, work: Path, peer: Callable[[Path], PeerRun], ours: Callable[[Path], DaemonRun]
) -> tuple[list[PeerRun], list[DaemonRun]]:
    """Each side twice, in the order peer, daemon, daemon, peer; each in a folder of its own.

    Whoever runs second on one server is handicapped by what the first left behind (the
    emulator's records grow, the disk churns); ABBA cancels a steady drift. What the
    server stored is deleted after every pass.
    """
    peers: list[PeerRun] = []
    daemons: list[DaemonRun] = []
    for number, side in enumerate(("bare", "daemon", "daemon", "bare")):
        folder = work / f"{side}-{number}"
        if side == "bare":
            peers.append(peer(folder))
        else:
            daemons.append(ours(folder))
        server.clear_received()
    return peers, daemons


def login(url: str) -> str:
    """A bearer token for ``USER`` (for peers such as curl that do not log in themselves)."""
    answer = httpx.post(f"{url}/auth/login", json={"username": USER, "password": PASSWORD}, timeout=30)
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


def bare_client(url: str, folder: Path, count: int, size: int, concurrency: int) -> Run:
    """Send ``count`` files of ``size`` bytes with a plain AsyncClient, ``concurrency`` at a time."""
    folder.mkdir(parents=True)
    return send_with_bare_client(url, make_files(folder, count, size), concurrency)


def send_with_bare_client(url: str, files: Sequence[Path], concurrency: int) -> Run:
    """POST each of ``files`` to ``/api/envio``, ``concurrency`` at a time; time it after the login.

    Raises:
        httpx.HTTPStatusError: the server refused one of them.
    """

    async def send_all() -> Run:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            answer = await client.post(f"{url}/auth/login", json={"username": USER, "password": PASSWORD})
            headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
            gate = asyncio.Semaphore(concurrency)

            async def send(path: Path) -> None:
                async with gate:
                    with path.open("rb") as handle:
                        answer = await client.post(
                            f"{url}/api/envio", headers=headers, files={"file": (path.name, handle)}
                        )
                    answer.raise_for_status()

            started, cpu = time.monotonic(), time.process_time()
            await asyncio.gather(*(send(path) for path in files))
            return Run(time.monotonic() - started, time.process_time() - cpu)

    return asyncio.run(send_all())


@dataclass(frozen=True)
class DaemonFolders:
    """The folders of one daemon run under ``root``; ``drop`` exists so it can be filled first.

    With ``shared``, the drop folder, the archive and ``failed_dir`` are under ``shared``
    instead, for several daemons on one folder (each keeps its state and log in its ``root``).
    """

    root: Path
    shared: Path | None = None

    @property
    def drop(self) -> Path:
        """The drop folder the daemon watches."""
        return (self.shared or self.root) / "drop"

    @property
    def sent(self) -> Path:
        """Where the daemon archives what it delivered."""
        return (self.shared or self.root) / "sent"

    @property
    def failed(self) -> Path:
        """The daemon's ``failed_dir``."""
        return (self.shared or self.root) / "failed"

    @property
    def log(self) -> Path:
        """The daemon's JSON log (its stdout and stderr)."""
        return self.root / "daemon.log"

    @classmethod
    def create(cls, root: Path, shared: Path | None = None) -> DaemonFolders:
        """Make ``root`` and the drop folder (which another daemon may have made under ``shared``)."""
        folders = cls(root, shared)
        folders.root.mkdir(parents=True, exist_ok=True)
        folders.drop.mkdir(parents=True, exist_ok=shared is not None)
        return folders


class DaemonLog:
    """Reads the daemon's JSON log as it grows, never the same byte twice.

    Only what the benchmarks ask about is kept (counts and first times per event), so
    polling a log of tens of thousands of lines stays cheap.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self._counts: collections.Counter[str] = collections.Counter()
        self._first_times: dict[str, float] = {}

    def count(self, name: str) -> int:
        """How many ``name`` events have been logged."""
        self._read()
        return self._counts[name]

    def first_time(self, name: str) -> float | None:
        """The wall-clock time (epoch seconds) of the first ``name`` event, if there was one."""
        self._read()
        return self._first_times.get(name)

    def _read(self) -> None:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not one of the daemon's JSON lines (a traceback, a warning)
            if not isinstance(event, dict) or "event" not in event:
                continue
            name = str(event["event"])
            self._counts[name] += 1
            if name not in self._first_times and "timestamp" in event:
                self._first_times[name] = datetime.fromisoformat(str(event["timestamp"])).timestamp()


class RunningDaemon:
    """A daemon process started by ``running_daemon``, and what can be read about it."""

    def __init__(self, process: subprocess.Popen[bytes], folders: DaemonFolders, launched_at: float) -> None:
        self.process = process
        self.folders = folders
        self.launched_at = launched_at  # wall clock, just before the process was started
        self.log = DaemonLog(folders.log)

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU the daemon has used so far."""
        return _cpu_seconds(self.pid)

    def peak_rss_mib(self) -> float:
        """The daemon's peak resident memory so far (``VmHWM``), in MiB."""
        return proc_status_kib(self.pid, "VmHWM") / 1024

    def wait_for_event(self, name: str, deadline: float = _DEADLINE) -> None:
        """Wait until the daemon logs ``name``.

        Raises:
            RuntimeError: the daemon exited first.
            TimeoutError: ``deadline`` seconds passed.
        """
        wait_until(lambda: self.log.count(name) > 0 or self.process.poll() is not None, deadline)
        if self.log.count(name) == 0:
            raise RuntimeError(f"the daemon exited before {name}:\n{self.folders.log.read_text()}")

    def wait_delivered(self, count: int, deadline: float = _DEADLINE, pause: float = 0.005) -> None:
        """Wait until the daemon has logged ``count`` deliveries in all.

        Raises:
            RuntimeError: the daemon exited first.
            TimeoutError: ``deadline`` seconds passed.
        """
        wait_until(
            lambda: self.log.count("file_delivered") >= count or self.process.poll() is not None,
            deadline,
            pause,
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited:\n{self.folders.log.read_text()}")


@contextmanager
def running_daemon(
    url: str,
    folders: DaemonFolders,
    *,
    concurrency: int,
    settle: str = "0s",
    api_timeout: str = "30s",
    python_options: Sequence[str] = (),
    journal: str | None = None,
) -> Iterator[RunningDaemon]:
    """Run ``uploader-daemon run`` on ``folders`` against ``url``; yield it once it logged ``daemon_started``.

    Whatever is in ``folders.drop`` before the call is a backlog the daemon finds at
    start. ``python_options`` go before ``-m`` (e.g. ``-m cProfile -o out.prof``).
    ``journal`` is the config's ``journal:`` mapping as YAML (``{backend: postgresql, ...}``);
    None keeps the SQLite default. The daemon is stopped with SIGTERM on the way out.

    Raises:
        RuntimeError: the daemon exited before it started.
    """
    config = folders.root / "config.yaml"
    text = _CONFIG.format(
        root=folders.root,
        drop=folders.drop,
        sent=folders.sent,
        failed=folders.failed,
        url=url,
        concurrency=concurrency,
        settle=settle,
        api_timeout=api_timeout,
        user=USER,
        password=PASSWORD,
    )
    config.write_text(text if journal is None else f"{text}journal: {journal}\n", encoding="utf-8")
    with folders.log.open("w") as log:
        launched_at = time.time()
        process = subprocess.Popen(
            [sys.executable, *python_options, "-m", "uploader_daemon", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            daemon = RunningDaemon(process, folders, launched_at)
            daemon.wait_for_event("daemon_started")
            yield daemon
        finally:
            process.terminate()
            process.wait(30)


def daemon(
    url: str, root: Path, count: int, size: int, concurrency: int, *, python_options: Sequence[str] = ()
) -> Run:
    """Drop ``count`` files into a running ``uploader-daemon run`` and time them until archived.

    The clock starts just before the first rename into the drop folder and stops at the
    last archive move (its ctime), so it includes pickup, the journal and the archive.
    ``python_options`` go before ``-m`` (e.g. ``-m cProfile -o out.prof`` to profile).
    """
    folders = DaemonFolders.create(root)
    staging = root / "staging"
    staging.mkdir()
    files = make_files(staging, count, size)
    with running_daemon(url, folders, concurrency=concurrency, python_options=python_options) as running:
        started, cpu = time.time(), running.cpu_seconds()
        for path in files:
            path.rename(folders.drop / path.name)
        # The figure comes from ctimes, so polling slowly does not move it; polling every
        # 5 ms would take CPU from the daemon (and the server) on a small machine.
        running.wait_delivered(count, pause=0.05)
        used = running.cpu_seconds() - cpu
    return Run(latest_ctime(folders.sent.iterdir()) - started, used)


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    """Write ``count`` files of ``size`` random bytes into ``folder``; return their paths."""
    files = [folder / f"file-{number:05}.dat" for number in range(count)]
    for path in files:
        path.write_bytes(os.urandom(size))
    return files


def make_random_file(path: Path, size: int, chunk: int = 8 * MIB) -> None:
    """Write ``size`` random bytes to ``path`` in ``chunk``-sized writes (nothing to compress or skip)."""
    with path.open("wb") as handle:
        left = size
        while left > 0:
            handle.write(os.urandom(min(chunk, left)))
            left -= chunk


def latest_ctime(paths: Iterator[Path] | Sequence[Path]) -> float:
    """The newest ``st_ctime`` among ``paths`` (the last of the moments they were placed)."""
    return max(path.stat().st_ctime for path in paths)


def earliest_ctime(paths: Iterator[Path] | Sequence[Path]) -> float:
    """The oldest ``st_ctime`` among ``paths``."""
    return min(path.stat().st_ctime for path in paths)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.95 for p95) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def proc_status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` value in kB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_until(
    condition: Callable[[], bool],
    deadline: float = _DEADLINE,
    pause: float = 0.005,
    what: str = "the benchmark to finish",
) -> None:
    """Re-check ``condition`` every ``pause`` seconds until it holds.

    Raises:
        TimeoutError: ``deadline`` seconds passed first (the message names ``what``).
    """
    give_up_at = time.monotonic() + deadline
    pause_event = threading.Event()
    while not condition():
        if time.monotonic() > give_up_at:
            raise TimeoutError(f"the benchmark waited {deadline:.0f} s for {what}")
        pause_event.wait(pause)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
