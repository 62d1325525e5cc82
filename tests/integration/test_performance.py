"""Performance is part of correctness: streaming, pickup latency, idleness, throughput.

The daemon runs as a real process (its memory and CPU are measured from /proc), the
emulator in the test process or, for throughput, in its own process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import harness
from tests.conftest import PASSWORD
from tests.helpers import ConfigYaml, DaemonProcess, token_auth
from uploader_daemon.emulator import Emulator

MIB = 1024 * 1024


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` value in kB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def daemon_process(tmp_path: Path, folders: dict[str, Path], emulator: Emulator) -> Iterator[DaemonProcess]:
    config = ConfigYaml(
        folders,
        "perf",
        emulator.base_url,
        log={"level": "info", "format": "json"},
        concurrency=4,
        watch=None,
        api_timeout="120s",
        auth=token_auth(
            {"username": "uploader", "password": PASSWORD}, refresh={"path": "/auth/tokenRefresh"}
        ),
    ).write(tmp_path / "config.yaml")
    process = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        process.wait_for_log("daemon_started")
        yield process
    finally:
        process.close()


@pytest.mark.timeout(120)
def test_a_large_upload_streams_from_disk_with_flat_memory(
    daemon_process: DaemonProcess, folders: dict[str, Path], emulator: Emulator, tmp_path: Path
) -> None:
    """A 512 MiB file goes out while the daemon's peak memory grows by far less than its size."""
    pid = daemon_process.process.pid
    # One small file first, so the login, the client pool and the code paths are warm.
    (folders["drop"] / "warm-up.txt").write_text("warm")
    assert emulator.wait_for(lambda e: len(e.received) == 1, 15)
    baseline = proc_status(pid, "VmHWM")
    staging = tmp_path / "big.bin"
    with staging.open("wb") as handle:
        handle.truncate(512 * MIB)  # sparse: quick to make, read back as zeros
    staging.rename(folders["drop"] / "big.bin")
    assert emulator.wait_for(lambda e: len(e.received) == 2, 100)
    received = emulator.received[-1]
    assert ("big.bin", 512 * MIB) == (received.name, received.size)
    growth_mib = (proc_status(pid, "VmHWM") - baseline) / 1024
    print(f"512 MiB upload: peak RSS grew by {growth_mib:.1f} MiB")
    assert growth_mib < 32, f"peak memory grew by {growth_mib:.0f} MiB for a 512 MiB upload"


def test_a_closed_file_is_picked_up_within_milliseconds(
    daemon_process: DaemonProcess, folders: dict[str, Path], emulator: Emulator
) -> None:
    """With settle 0 the upload request starts a few milliseconds after the writer closes the file."""
    latencies = []
    for number in range(10):
        closed_at = time.time()
        (folders["drop"] / f"quick-{number}.txt").write_text("x")
        assert emulator.wait_for(lambda e, n=number + 1: len(e.received) >= n, 10)
        upload = next(r for r in emulator.requests if r.path == "/api/envio" and r.time >= closed_at)
        latencies.append(upload.time - closed_at)
    latencies.sort()
    median = latencies[len(latencies) // 2]
    print(f"pickup latency: median {median * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    # The first upload includes the login; the median is the steady-state pickup.
    assert median < 0.05, f"median pickup latency {median * 1000:.1f} ms: {latencies}"


def test_an_idle_daemon_uses_no_measurable_cpu(daemon_process: DaemonProcess) -> None:
    """Watching an empty folder, the daemon spends (next to) no CPU time: no polling loops."""
    pid = daemon_process.process.pid
    before = cpu_seconds(pid)
    started = time.monotonic()
    # A bounded observation window is the measurement itself, not a wait for an event.
    threading.Event().wait(3.0)
    used = cpu_seconds(pid) - before
    print(f"idle: {used:.3f} s CPU in 3 s")
    assert time.monotonic() - started >= 3.0
    assert used <= 0.02, f"idle daemon used {used:.3f} s of CPU in 3 s"


@pytest.mark.timeout(120)
def test_many_small_files_go_out_about_as_fast_as_a_bare_async_client(tmp_path: Path) -> None:
    """300 small files: the daemon (pickup, journal, archive included) stays close to bare httpx.

    Both run on this machine next to the server, so the daemon's extra CPU per file
    (journal, inotify, archive move, a log line) shows fully; against a remote API the
    network dominates and the two converge.
    """
    count, size, concurrency = 300, 2048, 4
    with harness.running_emulator(tmp_path / "server") as url:
        # Best of three interleaved rounds each: the machine's other load only adds time.
        bare, ours = float("inf"), float("inf")
        for number in range(3):
            bare = min(
                bare, harness.bare_client(url, tmp_path / f"bare{number}", count, size, concurrency).seconds
            )
            ours = min(
                ours, harness.daemon(url, tmp_path / f"daemon{number}", count, size, concurrency).seconds
            )
    ratio = ours / bare
    print(f"bare {bare:.2f}s, daemon {ours:.2f}s, ratio {ratio:.2f}")
    assert ratio < 2.5, f"daemon took {ours:.2f}s where a bare client took {bare:.2f}s"
