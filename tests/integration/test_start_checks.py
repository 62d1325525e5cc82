"""What the daemon says and refuses at start, and what it never uploads: a real process, real folders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.helpers import DaemonProcess, log_events, wait_until, write_config
from uploader_daemon.emulator import Emulator

TIMEOUT = 30.0
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}

CONFIG = """
state_dir: {root}/state
log: {{level: info, format: json}}
shutdown_grace: 2s
targets:
  - name: reports
    folder: {root}/drop
    settle: 0s
    watch: {{rescan_every: 1h}}
    after_upload: {{action: archive, archive_dir: {root}/sent}}
    failed_dir: {root}/failed
    api: {{base_url: "{base_url}", timeout: 5s, verify_tls: {verify_tls}}}
    auth:
      type: token
      login: {{path: /auth/login, username: uploader, password: {{env: UPLOADER_PASSWORD}}}}
    upload: {{type: multipart, path: /api/envio, file_field: file}}
"""


@pytest.fixture
def start(tmp_path: Path, emulator: Emulator) -> Iterator[Any]:
    (tmp_path / "drop").mkdir()
    started: list[DaemonProcess] = []

    def run(verify_tls: str = "true") -> DaemonProcess:
        config = write_config(
            tmp_path / "config.yaml", CONFIG, root=tmp_path, base_url=emulator.base_url, verify_tls=verify_tls
        )
        daemon = DaemonProcess(config, tmp_path / "daemon.log", env=ENVIRON)
        started.append(daemon)
        daemon.wait_for_log('"daemon_started"', TIMEOUT)
        return daemon

    yield run
    for daemon in started:
        daemon.close()


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [event for event in log_events(daemon.output) if event.get("event") == name]


def test_verify_tls_false_logs_a_warning_at_start_naming_the_target(start: Any) -> None:
    """Turning TLS checks off is allowed, and never silent."""
    daemon = start(verify_tls="false")

    [warning] = events(daemon, "tls_verification_off")
    assert ("warning", "reports") == (warning["level"], warning["target"])


def test_the_daemon_creates_only_the_last_folder_of_each_output_folder_and_says_so(
    start: Any, tmp_path: Path
) -> None:
    """failed_dir and archive_dir are created (their parent exists), each with one info line."""
    daemon = start()

    created = {event["key"]: event["folder"] for event in events(daemon, "folder_created")}
    assert {
        "failed_dir": str(tmp_path / "failed"),
        "after_upload.archive_dir": str(tmp_path / "sent"),
    } == created
    assert [] == events(daemon, "tls_verification_off")


def test_the_daemons_own_artefacts_moved_into_the_drop_folder_are_never_uploaded(
    start: Any, tmp_path: Path, emulator: Emulator
) -> None:
    """Sidecars, .part downloads, temporary copies and our marker files stay put; a real file goes."""
    start()
    drop = tmp_path / "drop"
    artefacts = {
        "report.csv.error.json": json.dumps({"file": "report.csv", "status": 400}),
        "result.mp4.1a2b3c4d.part": "half a download",
        ".report.csv.1a2b3c4d.tmp": "a copy in progress",
        ".uploader-daemon-journal-id": "0123456789abcdef",
    }
    for name, content in artefacts.items():
        outside = tmp_path / name
        outside.write_text(content)
        outside.rename(drop / name)  # moved in, as an admin would
    (drop / "real.csv").write_text("a,b\n")

    wait_until(lambda: (tmp_path / "sent" / "real.csv").exists(), TIMEOUT, "the real file delivered")

    assert ["real.csv"] == [file.name for file in emulator.received]
    assert set(artefacts) == {path.name for path in drop.iterdir()}
