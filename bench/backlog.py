"""A backlog already waiting when the daemon starts, vs a bare httpx client sending it.

Both sides send the same files (count and size), ``concurrency`` at a time, to the same
emulator process, twice each, in the order peer, daemon, daemon, peer
(``harness.alternating``): whatever slows the machine or the server run by run then
weighs on both sides alike.

- Peer (bare ``httpx.AsyncClient``): the files exist; the login is done before the
  clock starts; timed from the first request until the last response is in.
- Daemon: the files are written into the drop folder and aged by an hour (their mtime)
  before the daemon starts, as a backlog that waited while the daemon was down; the
  target's ``settle`` is the default (2s). Rate: from the daemon's ``daemon_starting``
  log line (journal open, before the folder scan and the login) until the last archive
  move (the archived file's ctime).
  The rate of each side is over both of its passes; each pass's is in the details.
- First upload: from ``daemon_starting`` until the server stored the first file (the
  earliest ctime among the received files), the slower of the two passes; the same from
  process start (``Popen``) is in the details, and includes the interpreter and the
  imports.
- Peak RSS: ``VmHWM`` of the daemon process, read once all files are archived, just
  before it is stopped; the larger of the two passes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    DaemonFolders,
    Server,
    alternating,
    bare_client,
    earliest_ctime,
    latest_ctime,
    running_daemon,
)
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
    """Send a ``count``-file backlog of ``size``-byte files twice from each side; return three rows."""
    bare, ours = alternating(
        server,
        work,
        lambda folder: bare_client(server.url, folder, count, size, concurrency),
        lambda folder: _daemon_pass(server, folder, count, size, concurrency),
    )
    sent = 2 * count
    peer_seconds = sum(run.seconds for run in bare)
    daemon_seconds = sum(one.seconds for one in ours)
    label = f"backlog ({count} x {size} B x 2 passes, c={concurrency})"
    return [
        Row(
            f"{label}: first upload after daemon_starting, slower pass",
            "s",
            daemon=max(one.first_upload for one in ours),
            goal=Goal.at_most(1.0),
            details={
                "passes_s": " ".join(f"{one.first_upload:.3f}" for one in ours),
                "from_process_start_s": " ".join(f"{one.start_up + one.first_upload:.3f}" for one in ours),
                "process_start_to_daemon_starting_s": " ".join(f"{one.start_up:.3f}" for one in ours),
            },
        ),
        Row(
            f"{label}: rate",
            "files/s",
            peer=sent / peer_seconds,
            daemon=sent / daemon_seconds,
            goal=Goal.ratio_at_least(1.0),
            details={
                "peer_passes_files_per_s": " ".join(f"{count / run.seconds:.0f}" for run in bare),
                "daemon_passes_files_per_s": " ".join(f"{count / one.seconds:.0f}" for one in ours),
                "peer_cpu_ms_per_file": round(1000 * sum(run.cpu_seconds for run in bare) / sent, 2),
                "daemon_cpu_ms_per_file": round(1000 * sum(one.cpu_seconds for one in ours) / sent, 2),
            },
        ),
        Row(
            f"{label}: daemon peak RSS, larger pass",
            "MiB",
            daemon=max(one.peak_rss_mib for one in ours),
            goal=Goal.at_most(150),
        ),
    ]


@dataclass(frozen=True)
class _DaemonPass:
    """One daemon run through the backlog: its times (s) and what it used."""

    seconds: float  # daemon_starting to the last archive move
    first_upload: float  # daemon_starting to the first file stored
    start_up: float  # Popen to daemon_starting
    cpu_seconds: float
    peak_rss_mib: float


def _daemon_pass(server: Server, root: Path, count: int, size: int, concurrency: int) -> _DaemonPass:
    folders = DaemonFolders.create(root)
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
    return _DaemonPass(
        seconds=last_archived - starting,
        first_upload=first_stored - starting,
        start_up=starting - launched,
        cpu_seconds=cpu_seconds,
        peak_rss_mib=peak_rss_mib,
    )
