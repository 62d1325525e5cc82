"""Flow P end to end: the real daemon and the emulator's presigned service with status.

``/upload`` -> storage POST -> ``/confirm-upload`` -> poll ``/consult-status`` until
``completed`` (delivered) or ``error`` (failed_dir, the server's details in the sidecar);
a poll that overruns its deadline is retried through the normal backoff.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.helpers import ConfigYaml, Retry, running_daemon, wait_until
from uploader_daemon.config import Config
from uploader_daemon.emulator import Emulator

API_KEY = "p-static-key-0123"


def config_for(
    emu: Emulator,
    folders: dict[str, Path],
    *,
    attempts: int = 3,
    interval: str = "20ms",
    deadline: str = "10s",
) -> Config:
    upload = {
        "type": "presigned_with_status",
        "storage": {"url_field": "url"},
        "poll": {"interval": interval, "deadline": deadline},
        "success": ["completed"],
        "failure": ["error"],
    }
    return ConfigYaml(
        folders,
        "scans",
        emu.base_url,
        retry=Retry(attempts, "20ms", "50ms"),
        api_timeout="10s",
        auth={"type": "headers", "headers": {"Authorization": {"env": "P_API_KEY"}}},
        upload=upload,
    ).load({"P_API_KEY": f"Bearer {API_KEY}"})


def wait_for_files(folder: Path, *names: str) -> None:
    wait_until(lambda: all((folder / name).exists() for name in names), message=f"{names} in {folder}")


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_a_file_is_announced_stored_confirmed_and_polled_until_completed(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """The four steps in order; the storage POST uses the returned URL and gets no credential."""
    emu = start_emulator(status_polls_until_done=2)
    with running_daemon(config_for(emu, folders)):
        (folders["drop"] / "scan.pdf").write_bytes(b"%PDF scanned page")
        wait_for_files(folders["sent"], "scan.pdf")

    calls = [(record.method, record.path, record.status) for record in emu.requests]
    assert [
        ("POST", "/upload", 200),
        ("POST", "/storage/", 204),
        ("POST", "/confirm-upload", 200),
        ("GET", "/consult-status", 200),
        ("GET", "/consult-status", 200),
        ("GET", "/consult-status", 200),
    ] == calls
    api_calls = [record for record in emu.requests if record.path != "/storage/"]
    assert {f"Bearer {API_KEY}"} == {record.authorization for record in api_calls}
    [stored] = emu.received
    assert ("P", "scan.pdf", b"%PDF scanned page") == (stored.flow, stored.name, stored.path.read_bytes())
    assert "file" == stored.part_order[-1]
    assert "authorization" not in stored.headers
    counters = emu.counters
    assert (1, 1, 0, 3, 0) == (
        counters["documents_created"],
        counters["documents_confirmed"],
        counters["duplicate_confirms"],
        counters["status_polls"],
        counters["credential_leaks"],
    )


def test_a_file_the_server_reports_as_error_goes_to_failed_dir_with_the_servers_details(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """``status: error`` is a failure value: failed_dir at once, ``details`` in ``.error.json``."""
    emu = start_emulator(status_polls_until_done=1)
    with capture_logs() as logs, running_daemon(config_for(emu, folders, attempts=5)):
        (folders["drop"] / "reject-virus.exe").write_bytes(b"EICAR-ish")
        wait_for_files(folders["failed"], "reject-virus.exe", "reject-virus.exe.error.json")

    report = json.loads((folders["failed"] / "reject-virus.exe.error.json").read_text())
    assert ("status", "virus scan failed", 1) == (report["step"], report["details"], report["attempts"])
    assert "'error'" in report["error"]
    assert b"EICAR-ish" == (folders["failed"] / "reject-virus.exe").read_bytes()
    assert not (folders["sent"] / "reject-virus.exe").exists()
    assert [] == events(logs, "delivery_failed")
    assert ["status"] == [entry["step"] for entry in events(logs, "file_failed")]


def test_a_poll_deadline_overrun_is_retried_through_backoff_and_resumes_at_the_poll(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """Still "processing" at the deadline: an attempt is counted, the retry polls on, one confirm."""
    # At most six polls fit one 100 ms deadline at 20 ms intervals; the scan needs ten.
    emu = start_emulator(status_polls_until_done=10)
    config = config_for(emu, folders, attempts=10, interval="20ms", deadline="100ms")
    with capture_logs() as logs, running_daemon(config):
        (folders["drop"] / "slow.tif").write_bytes(b"a slow scan")
        wait_for_files(folders["sent"], "slow.tif")

    failures = events(logs, "delivery_failed")
    assert failures, "the first attempt should have overrun its poll deadline"
    assert {"status"} == {entry["step"] for entry in failures}
    assert 1 == failures[0]["attempt"]
    assert "polls over 0.1s" in failures[0]["error"]
    assert [] == events(logs, "file_failed")
    counters = emu.counters
    assert (1, 1, 0, 11) == (
        counters["documents_created"],
        counters["documents_confirmed"],
        counters["duplicate_confirms"],
        counters["status_polls"],
    )
