"""One large file: the daemon vs ``curl -F``, the same file to the same emulator process.

The file is random bytes (nothing for a transport to compress or skip), written once
to the temporary directory and sent by both sides; it was just written, so both read
it from the page cache.

- Peer (curl): ``curl -sS --fail -o /dev/null -F file=@PATH -H "Authorization: Bearer
  TOKEN" URL/api/envio``, the token fetched before (one POST to ``/auth/login``). Timed
  from just before the curl process starts until it exits; curl's own ``time_total``
  is in the details.
- Daemon: started and idle, not yet logged in (the login is inside its time). Timed
  from just before the rename into the drop folder until the archive move (the
  archived file's ctime), so it includes the pickup, the journal and the archive move.
- Peak RSS: ``VmHWM`` of the daemon process after the upload, just before it is stopped
  (the whole process's peak since it started, not the growth).

MB/s are 10^6 bytes per second. What the server stored is deleted after each side, and
the file itself at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.harness import MIB, DaemonFolders, Server, latest_ctime, login, make_random_file, running_daemon
from bench.results import Goal, Row

NAME = "large_file"
# A 1 GiB upload at a few tens of MB/s on a loaded machine.
_DEADLINE = 600.0
_FILE_NAME = "large.bin"


def run(server: Server, work: Path, *, mebibytes: int) -> list[Row]:
    """Send one ``mebibytes`` MiB file with curl, then with the daemon; return two rows.

    Raises:
        RuntimeError: curl is missing or failed, or the disk has no room for the run.
    """
    size = mebibytes * MIB
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is not installed; the large-file benchmark compares against it")
    # The file, the server's copy and the daemon's archived copy (a hard link: free).
    work.mkdir(parents=True)
    needed = 2 * size + 512 * MIB
    if shutil.disk_usage(work).free < needed:
        raise RuntimeError(f"{work} has less than {needed // MIB} MiB free for a {mebibytes} MiB run")
    source = work / _FILE_NAME
    make_random_file(source, size)
    try:
        curl_seconds, curl_total = _send_with_curl(curl, server, source, size)
        server.clear_received()
        daemon_seconds, peak_rss_mib = _send_with_daemon(server, work / "daemon", source, size)
        server.clear_received()
    finally:
        source.unlink(missing_ok=True)
        shutil.rmtree(work / "daemon" / "sent", ignore_errors=True)
    label = f"large file ({mebibytes} MiB)"
    return [
        Row(
            f"{label}: rate vs curl -F",
            "MB/s",
            peer=size / curl_seconds / 1e6,
            daemon=size / daemon_seconds / 1e6,
            goal=Goal.ratio_at_least(1.0),
            details={
                "peer_seconds": round(curl_seconds, 3),
                "peer_curl_time_total_s": round(curl_total, 3),
                "daemon_seconds": round(daemon_seconds, 3),
            },
        ),
        Row(f"{label}: daemon peak RSS", "MiB", daemon=peak_rss_mib, goal=Goal.at_most(100)),
    ]


def _send_with_curl(curl: str, server: Server, source: Path, size: int) -> tuple[float, float]:
    """Wall seconds of the curl process, and curl's own ``time_total``."""
    token = login(server.url)
    command = [
        curl,
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total}",
        "-F",
        f"file=@{source}",
        "-H",
        f"Authorization: Bearer {token}",
        f"{server.url}/api/envio",
    ]
    started = time.monotonic()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=_DEADLINE, check=False)
    seconds = time.monotonic() - started
    if finished.returncode != 0:
        raise RuntimeError(f"curl failed ({finished.returncode}): {finished.stderr.strip()}")
    _check_stored(server, size)
    return seconds, float(finished.stdout)


def _send_with_daemon(server: Server, root: Path, source: Path, size: int) -> tuple[float, float]:
    """Seconds from the rename to the archive move, and the daemon's peak RSS in MiB."""
    folders = DaemonFolders.create(root)
    with running_daemon(server.url, folders, concurrency=1, api_timeout="300s") as daemon:
        started = time.time()
        source.rename(folders.drop / source.name)
        daemon.wait_delivered(1, deadline=_DEADLINE, pause=0.01)
        peak_rss_mib = daemon.peak_rss_mib()
    _check_stored(server, size)
    return latest_ctime([folders.sent / source.name]) - started, peak_rss_mib


def _check_stored(server: Server, size: int) -> None:
    """The server holds exactly one file of ``size`` bytes (what was just sent)."""
    sizes = [path.stat().st_size for path in server.received_files()]
    if sizes != [size]:
        raise RuntimeError(f"the server stored {sizes} bytes, expected one file of {size}")
