"""``uploader-daemon demo``: the whole core flow on this machine, in a few seconds.

Starts the local API emulator on 127.0.0.1, a temporary drop folder and the real
daemon; drops sample files (one written slowly, to show that a half-written file waits
for its writer); waits until every file is uploaded and archived and the token has been
refreshed once while in use; prints what happened and exits 0. Nothing is left behind.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from uploader_daemon.config import Config, parse_config
from uploader_daemon.daemon import Daemon
from uploader_daemon.emulator import Emulator, EmulatorSettings
from uploader_daemon.logs import configure_logging
from uploader_daemon.redaction import Redactor
from uploader_daemon.secrets import secret_values

DEMO_PASSWORD = "demo-password"
TOKEN_LIFETIME = 6.0
DEADLINE = 30.0

_CONFIG = """\
state_dir: {root}/state
log: {{level: info, format: console}}
shutdown_grace: 5s
targets:
  - name: reports
    folder: {root}/drop
    settle: 300ms
    concurrency: 4
    retry: {{attempts: 5, backoff: 500ms, max_backoff: 5s}}
    after_upload: {{action: archive, archive_dir: {root}/sent}}
    failed_dir: {root}/failed
    api: {{base_url: "{base_url}", timeout: 10s}}
    auth:
      type: token
      login: {{path: /auth/login, username: demo, password: {{env: DEMO_PASSWORD}}}}
      refresh: {{path: /auth/tokenRefresh, check_every: 1s, before_expiry: 4s, active_within: 1m}}
    upload: {{type: multipart, path: /api/envio, file_field: file}}
"""


def run_demo(files: int = 5) -> int:
    """Run the demo; returns the exit code (0 when everything was delivered)."""
    with tempfile.TemporaryDirectory(prefix="uploader-daemon-demo-") as temporary:
        root = Path(temporary)
        (root / "drop").mkdir()
        settings = EmulatorSettings(
            storage_dir=root / "server", users={"demo": DEMO_PASSWORD}, token_lifetime=TOKEN_LIFETIME
        )
        with Emulator(settings) as emulator:
            config = parse_config(
                _CONFIG.format(root=root, base_url=emulator.base_url),
                "demo config",
                {"DEMO_PASSWORD": DEMO_PASSWORD},
            )
            redactor = Redactor(secret_values(config))
            configure_logging(config.log.level, config.log.format, redactor)
            _say(f"emulated token API on {emulator.base_url}; drop folder {root / 'drop'}")
            started = time.monotonic()
            ok = asyncio.run(_drive(config, redactor, emulator, root, files))
            _summary(emulator, root, files, time.monotonic() - started)
    return 0 if ok else 1


async def _drive(config: Config, redactor: Redactor, emulator: Emulator, root: Path, files: int) -> bool:
    daemon = Daemon(config, redactor=redactor)
    running = asyncio.create_task(daemon.run())
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait([running, started], timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
    if not daemon.started.is_set():
        started.cancel()
        daemon.request_stop()
        await running
        return False
    drop = root / "drop"
    for number in range(1, files):
        # Write under an excluded name, then rename: how careful producers deliver.
        staging = drop / f"report-{number:02}.csv.part"
        staging.write_text(f"id,value\n{number},{number * 42}\n", encoding="utf-8")
        staging.rename(drop / f"report-{number:02}.csv")
    await _slow_writer(drop / "slow-export.csv", emulator)
    ok = await asyncio.to_thread(
        emulator.wait_for,
        lambda e: len(e.received) >= files and e.counters["refreshes"] >= 1,
        DEADLINE,
    )
    if ok:
        await _token_renewed(daemon)
    daemon.request_stop()
    await running
    return ok and len(list((root / "sent").iterdir())) == files


async def _token_renewed(daemon: Daemon) -> None:
    """The emulator counted the refresh request; wait until the daemon has the answer."""
    credential = daemon.services[0].credential
    first = credential.expires_at
    deadline = time.monotonic() + 5
    while credential.expires_at == first and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _slow_writer(path: Path, emulator: Emulator) -> None:
    """Write a file in two halves with a pause: it must not be uploaded in between."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write("id,value\n")
        handle.flush()
        _say("slow-export.csv: first half written, writer still has it open")
        await asyncio.sleep(1.0)  # a producer that pauses mid-write
        received = [f.name for f in emulator.received]
        _say(f"slow-export.csv uploaded while open? {'slow-export.csv' in received}")
        handle.write("99,4158\n")
    _say("slow-export.csv: closed by its writer")


def _summary(emulator: Emulator, root: Path, files: int, seconds: float) -> None:
    counters = emulator.counters
    archived = sorted(path.name for path in (root / "sent").iterdir()) if (root / "sent").exists() else []
    print()
    print("=== uploader-daemon demo summary ===")
    print(f"logged in:         {counters['logins']} time(s)")
    print(f"token refreshed:   {counters['refreshes']} time(s) (only while the API was in use)")
    print(
        f"uploaded:          {len(emulator.received)} of {files} file(s): "
        + ", ".join(sorted(f.name for f in emulator.received))
    )
    print(f"archived:          {len(archived)} file(s) in {root / 'sent'}")
    print(f"expired tokens sent: {counters['expired_token_uses']}")
    print(f"took:              {seconds:.1f}s")
    print(
        "result:            " + ("OK" if len(archived) == files and counters["refreshes"] else "INCOMPLETE")
    )
    print()
    print("Next, on your own config:")
    print("  uploader-daemon example-config > my.yaml         # every key commented (or: example-config T)")
    print("  uploader-daemon check-config --config my.yaml    # every problem at once, with its key path")
    print("  uploader-daemon upload --config my.yaml --target reports ./a-file.csv   # one file, now")
    print("  uploader-daemon run --config my.yaml             # then as a service: see the README")


def _say(message: str) -> None:
    print(f"demo: {message}", file=sys.stdout, flush=True)
