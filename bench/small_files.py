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

The figure is files per second; CPU per file of each side is in the details.
``BENCH_PROFILE="-m cProfile -o out.prof"`` runs the daemon under a profiler.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.harness import Server, bare_client, daemon
from bench.results import Goal, Row

NAME = "small_files"


def run(server: Server, work: Path, *, count: int, size: int, concurrency: int) -> list[Row]:
    """Send ``count`` files of ``size`` bytes from each side; return the files/s row."""
    bare = bare_client(server.url, work / "bare", count, size, concurrency)
    server.clear_received()
    profile = os.environ.get("BENCH_PROFILE", "").split()
    ours = daemon(server.url, work / "daemon", count, size, concurrency, python_options=profile)
    server.clear_received()
    return [
        Row(
            f"small files ({count} x {size} B, c={concurrency}): rate",
            "files/s",
            peer=count / bare.seconds,
            daemon=count / ours.seconds,
            goal=Goal.ratio_at_least(1.0),
            details={
                "peer_seconds": round(bare.seconds, 3),
                "daemon_seconds": round(ours.seconds, 3),
                "peer_cpu_ms_per_file": round(1000 * bare.cpu_seconds / count, 2),
                "daemon_cpu_ms_per_file": round(1000 * ours.cpu_seconds / count, 2),
            },
        )
    ]
