"""Pickup latency: one file at a time renamed into the drop folder, ``settle: 0s``.

No peer: a bare client has nothing to notice. The daemon is started and sends one
warm-up file first (its login and first connection), which is not counted. Then, one at
a time, a 1 KiB file is renamed from a staging folder (same filesystem) into the drop
folder, and the next one only once the previous one is archived.

Latency, per file, from the rename (the dropped file's ctime, read right after the
rename) until the server stored the file (the ctime of the server's copy, placed once
the body is received, before the answer goes out). For 1 KiB files that is within a
fraction of a millisecond of the upload request's arrival, so this is "rename → upload
request at the server". Both ends are kernel timestamps, good to a tick (4 ms at
``CONFIG_HZ=250``). The details add rename → archived, which includes the answer and
the archive move.
"""

from __future__ import annotations

from pathlib import Path

from bench.harness import DaemonFolders, Server, percentile, running_daemon
from bench.results import Goal, Row

NAME = "pickup"
_SIZE = 1024


def run(server: Server, work: Path, *, count: int) -> list[Row]:
    """Rename ``count`` files in one by one; return the p50 and p95 rows (milliseconds)."""
    folders = DaemonFolders.create(work / "daemon")
    staging = work / "staging"
    staging.mkdir()
    to_server: list[float] = []
    to_archive: list[float] = []
    with running_daemon(server.url, folders, concurrency=1, settle="0s") as daemon:
        _drop(staging / "warm-up.dat", folders)
        daemon.wait_delivered(1)
        for number in range(count):
            name = f"pickup-{number:04}.dat"
            renamed_at = _drop(staging / name, folders)
            daemon.wait_delivered(number + 2, deadline=30)
            (stored,) = server.received_dir.glob(f"*/{name}")
            to_server.append(stored.stat().st_ctime - renamed_at)
            to_archive.append((folders.sent / name).stat().st_ctime - renamed_at)
    server.clear_received()
    label = f"pickup ({count} files, settle 0s): rename → stored by server"
    archive = {
        "rename_to_archived_p50_ms": round(1000 * percentile(to_archive, 0.5), 1),
        "rename_to_archived_p95_ms": round(1000 * percentile(to_archive, 0.95), 1),
        "max_ms": round(1000 * max(to_server), 1),
    }
    return [
        Row(f"{label}, p50", "ms", daemon=1000 * percentile(to_server, 0.5), goal=Goal.at_most(100)),
        Row(
            f"{label}, p95",
            "ms",
            daemon=1000 * percentile(to_server, 0.95),
            goal=Goal.at_most(100),
            details=archive,
        ),
    ]


def _drop(staged: Path, folders: DaemonFolders) -> float:
    """Write ``staged``, rename it into the drop folder, and return the rename's ctime."""
    staged.write_bytes(b"x" * _SIZE)
    dropped = folders.drop / staged.name
    staged.rename(dropped)
    # Right after the rename the daemon is at most reading the file, which leaves the
    # ctime alone; it changes again only with the archive move, after the upload.
    return dropped.stat().st_ctime
