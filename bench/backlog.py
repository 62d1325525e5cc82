"""A backlog already waiting when the daemon starts, vs a bare httpx client sending it.

Both sides send the same files (count and size), ``concurrency`` at a time, to the same
emulator process.

- Peer (bare ``httpx.AsyncClient``): the files exist; the login is done before the
  clock starts; timed from the first request until the last response is in.
- Daemon: the files are written into the drop folder and aged by an hour (their mtime)
  before the daemon starts, as a backlog that waited while the daemon was down; the
  target's ``settle`` is the default (2s). Rate: from the daemon's ``daemon_starting``
  log line (journal open, before the folder scan and the login) until the last archive
  move (the archived file's ctime); the figure from process start is in the details.
- First upload: from ``daemon_starting`` until the server stored the first file (the
  earliest ctime among the received files); the same from process start (``Popen``) is
  in the details, and includes the interpreter and the imports.
- Peak RSS: ``VmHWM`` of the daemon process, read once all files are archived, just
  before it is stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.harness import DaemonFolders, Server, bare_client, earliest_ctime, latest_ctime, running_daemon
from bench.harness import make_files as write_files
from bench.results import Goal, Row

NAME = "backlog"
# Old enough that no settle rule holds a found file back: a backlog from before a restart.
_AGE_SECONDS = 3600.0
# Listing the log is cheap, but 20,000 files take tens of seconds: no need to look often.
_POLL_SECONDS = 0.05
# Sending a big backlog on a loaded 2-core machine takes a while.
_DEADLINE = 600.0


def run(server: Server, work: Path, *, count: int, size: int, concurrency: int) -> list[Row]:
    """Send a ``count``-file backlog of ``size``-byte files from each side; return three rows."""
    bare = bare_client(server.url, work / "bare", count, size, concurrency)
    server.clear_received()

    folders = DaemonFolders.create(work / "daemon")
    aged = time.time() - _AGE_SECONDS
    for path in write_files(folders.drop, count, size):
        os.utime(path, (aged, aged))
    with running_daemon(server.url, folders, concurrency=concurrency, settle="2s") as daemon:
        daemon.wait_delivered(count, deadline=_DEADLINE, pause=_POLL_SECONDS)
        peak_rss_mib = daemon.peak_rss_mib()
        cpu_seconds = daemon.cpu_seconds()
        starting = daemon.log.first_time("daemon_starting")
        launched = daemon.launched_at
    if starting is None:
        raise RuntimeError(f"the daemon never logged daemon_starting: see {folders.log}")
    first_stored = earliest_ctime(server.received_files())
    last_archived = latest_ctime(list(folders.sent.iterdir()))
    server.clear_received()
    seconds = last_archived - starting
    label = f"backlog ({count} x {size} B, c={concurrency})"
    return [
        Row(
            f"{label}: first upload after daemon_starting",
            "s",
            daemon=first_stored - starting,
            goal=Goal.at_most(1.0),
            details={
                "from_process_start_s": round(first_stored - launched, 3),
                "process_start_to_daemon_starting_s": round(starting - launched, 3),
            },
        ),
        Row(
            f"{label}: rate",
            "files/s",
            peer=count / bare.seconds,
            daemon=count / seconds,
            goal=Goal.ratio_at_least(1.0),
            details={
                "peer_seconds": round(bare.seconds, 3),
                "daemon_seconds": round(seconds, 3),
                "daemon_seconds_from_process_start": round(last_archived - launched, 3),
                "peer_cpu_ms_per_file": round(1000 * bare.cpu_seconds / count, 2),
                "daemon_cpu_ms_per_file": round(1000 * cpu_seconds / count, 2),
            },
        ),
        Row(f"{label}: daemon peak RSS", "MiB", daemon=peak_rss_mib, goal=Goal.at_most(150)),
    ]
