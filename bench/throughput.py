"""Throughput: the daemon vs a bare async httpx client, against the same local server.

    .venv/bin/python bench/throughput.py [--files 1000] [--size 1000] [--concurrency 8]

Both send the same files to the emulator running in its own process. The bare client
gets its login for free and reads files that already exist; the daemon's time runs
from the moment the files appear in the drop folder (one rename each) until the last
one is archived, so it includes pickup, the journal and the archive moves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PASSWORD = "bench-password"
DAEMON_CPU: list[float] = []
BARE_CPU: list[float] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_emulator(storage: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uploader_daemon.emulator",
            "--port",
            str(port),
            "--storage-dir",
            str(storage),
            "--user",
            f"bench:{PASSWORD}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    return process, url


async def bare_client(url: str, files: list[Path], concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        login = await client.post(f"{url}/auth/login", json={"username": "bench", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        gate = asyncio.Semaphore(concurrency)

        async def send(path: Path) -> None:
            async with gate:
                with path.open("rb") as handle:
                    response = await client.post(
                        f"{url}/api/envio", headers=headers, files={"file": (path.name, handle)}
                    )
                response.raise_for_status()

        started = time.monotonic()
        cpu = time.process_time()
        await asyncio.gather(*(send(path) for path in files))
        BARE_CPU.append(time.process_time() - cpu)
        return time.monotonic() - started


def daemon(url: str, root: Path, count: int, size: int, concurrency: int) -> float:
    drop, staging = root / "drop", root / "staging"
    drop.mkdir()
    staging.mkdir()
    for number in range(count):
        (staging / f"file-{number:05}.dat").write_bytes(os.urandom(size))
    config = root / "config.yaml"
    config.write_text(
        f"""
state_dir: {root}/state
log: {{level: info, format: json}}
targets:
  - name: bench
    folder: {drop}
    settle: 0s
    concurrency: {concurrency}
    after_upload: {{action: archive, archive_dir: {root}/sent}}
    failed_dir: {root}/failed
    api: {{base_url: "{url}"}}
    auth:
      type: token
      login: {{username: bench, password: {PASSWORD}}}
    upload: {{type: multipart}}
""",
        encoding="utf-8",
    )
    log = (root / "daemon.log").open("w")
    command = ["-m", "uploader_daemon", "run", "--config", str(config)]
    if os.environ.get("BENCH_PROFILE"):  # e.g. BENCH_PROFILE="-m cProfile -o /tmp/daemon.prof"
        command = [*os.environ["BENCH_PROFILE"].split(), *command]
    process = subprocess.Popen([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT)
    try:
        while "daemon_started" not in (root / "daemon.log").read_text():
            time.sleep(0.01)
        started = time.monotonic()
        cpu_before = _cpu_seconds(process.pid)
        for path in staging.iterdir():
            path.rename(drop / path.name)
        sent = root / "sent"
        while not sent.exists() or len(os.listdir(sent)) < count:
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        DAEMON_CPU.append(_cpu_seconds(process.pid) - cpu_before)
        return elapsed
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        if os.environ.get("BENCH_KEEP_LOG"):
            print((root / "daemon.log").read_text()[-20000:], file=sys.stderr)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1000, help="bytes per file")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uploader-bench-") as temporary:
        root = Path(temporary)
        emulator, url = start_emulator(root / "server")
        try:
            bare_dir = root / "bare"
            bare_dir.mkdir()
            files = []
            for number in range(arguments.files):
                path = bare_dir / f"file-{number:05}.dat"
                path.write_bytes(os.urandom(arguments.size))
                files.append(path)
            bare = asyncio.run(bare_client(url, files, arguments.concurrency))
            ours = (
                daemon(url, root / "daemon", arguments.files, arguments.size, arguments.concurrency)
                if (root / "daemon").mkdir() is None
                else 0.0
            )
        finally:
            emulator.terminate()
            emulator.wait(30)
    result = {
        "files": arguments.files,
        "size": arguments.size,
        "concurrency": arguments.concurrency,
        "bare_seconds": round(bare, 3),
        "daemon_seconds": round(ours, 3),
        "bare_files_per_second": round(arguments.files / bare, 1),
        "daemon_files_per_second": round(arguments.files / ours, 1),
        "ratio": round(ours / bare, 2),
        "bare_cpu_ms_per_file": round(1000 * BARE_CPU[0] / arguments.files, 2),
        "daemon_cpu_ms_per_file": round(1000 * DAEMON_CPU[0] / arguments.files, 2),
    }
    print(json.dumps(result) if arguments.json else "\n".join(f"{k:>24}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
