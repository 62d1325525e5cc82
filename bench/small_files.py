"""Small files renamed into the drop folder while the daemon runs, vs a bare httpx client.

Both sides send the same number of files of the same size, ``concurrency`` at a time,
to the same emulator process.

- Peer (bare ``httpx.AsyncClient``): the files already exist; the login is done before
  the clock starts; timed from the first request until the last response is in.
- Daemon: started and idle (not yet logged in: its first file triggers the login, which
  is inside its time). Timed from just before the first rename into the drop folder
  until the last archive move (the archived file's ctime), so it includes the renames
  themselves, noticing the files (inotify), the journal, the uploads and the archive
  moves.

Whoever goes second on one server is handicapped by what the first left behind: with
the emulator storing on this machine's ext4, its CPU per request grew from 1.1 ms in a
first pass of 3,000 requests to 2.6 ms in a fourth (file creation on a churned disk);
storing in RAM, as it does now, from 0.73 to 0.82 ms over four passes of 8,000 (its
records grow). So the sides run in the order peer, daemon, daemon, peer
(``harness.alternating``) and each figure is over both of its passes.

The figure is files per second; CPU per file of each side is in the details.
``BENCH_PROFILE="-m cProfile -o out.prof"`` runs the daemon under a profiler.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.harness import Run, Server, alternating, bare_client, daemon
from bench.results import Goal, Row

NAME = "small_files"


def run(server: Server, work: Path, *, count: int, size: int, concurrency: int) -> list[Row]:
    """Send ``count`` files of ``size`` bytes from each side; return the files/s row."""
    profile = os.environ.get("BENCH_PROFILE", "").split()
    peers, daemons = alternating(
        server,
        work,
        lambda folder: bare_client(server.url, folder, count, size, concurrency),
        lambda folder: daemon(server.url, folder, count, size, concurrency, python_options=profile),
    )
    bare, ours = _total(peers), _total(daemons)
    sent = 2 * count  # each side sent count files twice
    return [
        Row(
            f"small files ({count} x {size} B x 2 passes, c={concurrency}): rate",
            "files/s",
            peer=sent / bare.seconds,
            daemon=sent / ours.seconds,
            goal=Goal.ratio_at_least(1.0),
            details={
                "peer_seconds": round(bare.seconds, 3),
                "daemon_seconds": round(ours.seconds, 3),
                "peer_cpu_ms_per_file": round(1000 * bare.cpu_seconds / sent, 2),
                "daemon_cpu_ms_per_file": round(1000 * ours.cpu_seconds / sent, 2),
            },
        )
    ]


def _total(runs: list[Run]) -> Run:
    return Run(sum(run.seconds for run in runs), sum(run.cpu_seconds for run in runs))
