"""Idle CPU: the daemon watching an empty drop folder.

No peer. The daemon is started with an empty folder; from the moment it logged
``daemon_started`` its CPU (user + system, all threads, from ``/proc/PID/stat`` in
clock ticks of 10 ms) is read, and again ``seconds`` later. Nothing is sent, so it has
not logged in either.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.harness import DaemonFolders, Server, running_daemon
from bench.results import Goal, Row

NAME = "idle"


def run(server: Server, work: Path, *, seconds: float) -> list[Row]:
    """Watch the daemon idle for ``seconds``; return the CPU-seconds row."""
    folders = DaemonFolders.create(work / "daemon")
    with running_daemon(server.url, folders, concurrency=8) as daemon:
        before, started = daemon.cpu_seconds(), time.monotonic()
        # The observation window is the measurement itself, not a wait for an event.
        threading.Event().wait(seconds)
        used, observed = daemon.cpu_seconds() - before, time.monotonic() - started
    return [
        Row(
            f"idle CPU over {seconds:g} s",
            "CPU-s",
            daemon=used,
            goal=Goal.at_most(0.05),
            details={"observed_s": round(observed, 2)},
        )
    ]
