"""Hostile input and a broken server: huge bodies, names that are not UTF-8, replays.

The real daemon (in-process, or as a process where its memory is measured) against the
emulator, which sends what the tests script: a 300 MB error page, a JSON answer far too
big, an answer lost after the upload was stored.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import DaemonProcess, load, running_daemon, wait_until, write_config
from tests.integration.test_flow_t import ENVIRON, TARGET, flow_t_config
from uploader_daemon.emulator import Emulator, ScriptedResponse
from uploader_daemon.logs import configure_logging
from uploader_daemon.redaction import Redactor

TIMEOUT = 30.0
MIB = 1024 * 1024


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# --- bounded reads --------------------------------------------------------------------------


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_300_mb_error_body_neither_fills_memory_nor_stops_the_file(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """Only an excerpt of an error is read: the daemon's peak memory stays flat; the retry delivers."""
    emulator.script(
        "POST", "/api/envio", ScriptedResponse(500, b'{"error": "', body_size=300 * MIB, filler=b"x")
    )
    config = write_config(
        tmp_path / "config.yaml",
        """
        state_dir: {state}
        log: {{level: info, format: json}}
        targets:
          - name: reports
            folder: {drop}
            settle: 0s
            retry: {{attempts: 3, backoff: 50ms, max_backoff: 100ms}}
            after_upload: {{action: archive, archive_dir: {sent}}}
            failed_dir: {failed}
            api: {{base_url: "{base_url}"}}
            auth:
              type: token
              login: {{username: uploader, password: {{env: UPLOADER_PASSWORD}}}}
            upload: {{type: multipart}}
        """,
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log", env=ENVIRON)
    try:
        daemon.wait_for_log('"daemon_started"')
        (folders["drop"] / "a.csv").write_text("a\n")
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "a.csv archived")
        peak = peak_rss_mib(daemon.process.pid)
    finally:
        daemon.close()

    assert peak < 120, f"peak RSS {peak:.0f} MiB"
    failed = [line for line in daemon.output.splitlines() if '"delivery_failed"' in line]
    assert 1 == len(failed)
    assert '"status": 500' in failed[0]


def test_a_json_answer_far_too_big_is_a_permanent_error_naming_the_limit(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """A 5 MB "JSON" answer to the create step: the file is parked with a sentence, not read whole."""
    emulator = start_emulator()
    emulator.script(
        "POST",
        "/upload",
        ScriptedResponse(200, b'{"file_id": 1, "pad": "', body_size=5 * MIB, body_end=b'"}'),
    )
    config = load(
        """
        state_dir: {state}
        targets:
          - name: scans
            folder: {drop}
            settle: 0s
            after_upload: {{action: archive, archive_dir: {sent}}}
            failed_dir: {failed}
            api: {{base_url: "{base_url}"}}
            auth: {{type: none}}
            upload: {{type: presigned_with_status, storage: {{url: "{storage}"}}}}
        """,
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
        storage=emulator.storage_url,
    )
    with running_daemon(config):
        (folders["drop"] / "scan.pdf").write_bytes(b"%PDF")
        wait_until(lambda: (folders["failed"] / "scan.pdf.error.json").exists(), TIMEOUT, "parked")

    report = (folders["failed"] / "scan.pdf.error.json").read_text()
    assert "larger than 1024 KiB" in report


# --- names that are not UTF-8 ---------------------------------------------------------------


def test_a_latin_1_name_is_delivered_as_latin_1_text_and_archived_under_its_bytes(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """b"caf\\xe9.csv" from a legacy client: "café.csv" on the wire, the same bytes in the archive."""
    raw = b"caf\xe9 r\xe9sum\xe9.csv"
    output = io.StringIO()
    configure_logging("info", "json", Redactor(), output, cache_loggers=False)
    with running_daemon(flow_t_config(emulator, folders)) as runner:
        with open(os.path.join(os.fsencode(folders["drop"]), raw), "wb") as handle:
            handle.write(b"une ligne\n")
        wait_until(lambda: raw in os.listdir(os.fsencode(folders["sent"])), TIMEOUT, "archived")
        assert runner.daemon is not None
        records = runner.run_coroutine(runner.daemon.journal.records(TARGET))

    assert ["café résumé.csv"] == [received.name for received in emulator.received]
    assert [] == os.listdir(os.fsencode(folders["drop"]))
    assert [os.fsdecode(raw)] == [record.path for record in records]
    logs = [json.loads(line) for line in output.getvalue().splitlines()]
    delivered = events(logs, "file_delivered")
    assert ["caf\\xe9 r\\xe9sum\\xe9.csv"] == [entry["file"] for entry in delivered]
    assert [] == [entry for entry in logs if entry["level"] == "error"]


def test_names_that_are_not_utf_8_do_not_fail_the_rest_of_a_scan(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """Found by the start-up scan next to ordinary files: every one is delivered."""
    names = [b"plain.csv", b"\xff\xfe.csv", b"na\xefve.txt"]
    for name in names:
        with open(os.path.join(os.fsencode(folders["drop"]), name), "wb") as handle:
            handle.write(name)
    with running_daemon(flow_t_config(emulator, folders)):
        wait_until(lambda: len(os.listdir(os.fsencode(folders["sent"]))) == 3, TIMEOUT, "all archived")

    assert sorted(names) == sorted(os.listdir(os.fsencode(folders["sent"])))
    assert sorted(["plain.csv", "ÿþ.csv", "naïve.txt"]) == sorted(r.name for r in emulator.received)


# --- Idempotency-Key ------------------------------------------------------------------------


def test_every_upload_carries_a_key_of_its_own_version(emulator: Emulator, folders: dict[str, Path]) -> None:
    """Different files, different keys; a new version of a name, a new key; a retry, the same key."""
    emulator.script("POST", "/api/envio", ScriptedResponse(500, "once"))
    with running_daemon(flow_t_config(emulator, folders, backoff="50ms")):
        (folders["drop"] / "a.csv").write_text("a1")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "a.csv archived")
        (folders["drop"] / "a.csv").write_text("a2, another version")
        (folders["drop"] / "b.csv").write_text("b")
        assert emulator.wait_for(lambda emu: len(emu.received) == 3, TIMEOUT)

    uploads = [r for r in emulator.requests if (r.method, r.path) == ("POST", "/api/envio")]
    keys = [record.headers.get("idempotency-key") for record in uploads]
    assert all(keys)
    assert keys[0] == keys[1]  # the 500 and its retry: one version, one key
    assert len({keys[1], keys[2], keys[3]}) == 3


def test_an_upload_whose_answer_was_lost_is_replayed_with_the_same_key_and_stored_once(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """The server stored the file, the answer never came; the retry's key lets it drop the replay."""
    emulator = start_emulator(deduplicate_by_idempotency_key=True)
    emulator.script("POST", "/api/envio", ScriptedResponse(200, reset_after_body=True))
    with running_daemon(flow_t_config(emulator, folders, backoff="50ms", max_backoff="100ms")):
        (folders["drop"] / "report.csv").write_text("report\n")
        wait_until(lambda: (folders["sent"] / "report.csv").exists(), TIMEOUT, "archived")

    counters = emulator.counters
    assert (1, 1, 1) == (counters["answers_dropped"], counters["replays_answered"], len(emulator.received))
    assert [1] == list(emulator.uploads_by_key().values())


def test_the_key_can_be_turned_off_or_renamed_for_a_picky_server(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """api.idempotency_key: false sends none; api.idempotency_header renames it."""
    base = flow_t_config(emulator, folders)
    target = base.targets[0]
    off = base.model_copy(
        update={
            "targets": (
                target.model_copy(update={"api": target.api.model_copy(update={"idempotency_key": False})}),
            )
        }
    )
    with running_daemon(off):
        (folders["drop"] / "a.csv").write_text("a")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "archived")
    renamed_api = target.api.model_copy(update={"idempotency_header": "X-Request-Id"})
    renamed = base.model_copy(update={"targets": (target.model_copy(update={"api": renamed_api}),)})
    with running_daemon(renamed):
        (folders["drop"] / "b.csv").write_text("b")
        assert emulator.wait_for(lambda emu: len(emu.received) == 2, TIMEOUT)

    first, second = [r for r in emulator.requests if (r.method, r.path) == ("POST", "/api/envio")]
    assert (None, None) == (first.headers.get("idempotency-key"), first.headers.get("x-request-id"))
    assert (None, True) == (second.headers.get("idempotency-key"), bool(second.headers.get("x-request-id")))
