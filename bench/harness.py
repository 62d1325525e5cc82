"""Timing the daemon against a bare async httpx client, against the same local server.

Used by ``bench/throughput.py`` (numbers for people) and by
``tests/integration/test_performance.py`` (a bound that fails the build). The emulator
runs in its own process. The bare client gets its login for free and reads files that
already exist; the daemon's time runs from the moment the files appear in its drop
folder (one rename each) until the last one is archived, so it includes pickup, the
journal and the archive moves.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

USER = "bench"
PASSWORD = "bench-password"
_DEADLINE = 120.0

_CONFIG = """
state_dir: {root}/state
log: {{level: info, format: json}}
targets:
  - name: bench
    folder: {root}/drop
    settle: 0s
    concurrency: {concurrency}
    after_upload: {{action: archive, archive_dir: {root}/sent}}
    failed_dir: {root}/failed
    api: {{base_url: "{url}"}}
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


@contextmanager
def running_emulator(storage: Path) -> Iterator[str]:
    """The emulator as its own process on a free port; yields its base URL."""
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the emulator did not start: {url}")
        yield url
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def bare_client(url: str, folder: Path, count: int, size: int, concurrency: int) -> Run:
    """Send ``count`` files of ``size`` bytes with a plain AsyncClient, ``concurrency`` at a time."""
    folder.mkdir(parents=True)
    files = _make_files(folder, count, size)

    async def send_all() -> Run:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            login = await client.post(f"{url}/auth/login", json={"username": USER, "password": PASSWORD})
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
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


def daemon(
    url: str, root: Path, count: int, size: int, concurrency: int, *, python_options: Sequence[str] = ()
) -> Run:
    """Drop ``count`` files into a running ``uploader-daemon run`` and time them until archived.

    ``python_options`` go before ``-m`` (e.g. ``-m cProfile -o out.prof`` to profile).
    """
    staging, sent = root / "staging", root / "sent"
    (root / "drop").mkdir(parents=True)
    staging.mkdir()
    files = _make_files(staging, count, size)
    config = root / "config.yaml"
    config.write_text(
        _CONFIG.format(root=root, url=url, concurrency=concurrency, user=USER, password=PASSWORD),
        encoding="utf-8",
    )
    log_path = root / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, *python_options, "-m", "uploader_daemon", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(lambda: "daemon_started" in log_path.read_text() or process.poll() is not None)
            if process.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{log_path.read_text()}")
            started, cpu = time.monotonic(), _cpu_seconds(process.pid)
            for path in files:
                path.rename(root / "drop" / path.name)
            _wait(lambda: sent.exists() and len(os.listdir(sent)) >= count)
            return Run(time.monotonic() - started, _cpu_seconds(process.pid) - cpu)
        finally:
            process.terminate()
            process.wait(30)


def _make_files(folder: Path, count: int, size: int) -> list[Path]:
    files = [folder / f"file-{number:05}.dat" for number in range(count)]
    for path in files:
        path.write_bytes(os.urandom(size))
    return files


def _wait(condition: Callable[[], bool]) -> None:
    """Re-check ``condition`` until it holds; fail after a deadline."""
    deadline = time.monotonic() + _DEADLINE
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not finish in time")
        pause.wait(0.005)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
