"""No password, token or Authorization header in the daemon's output, at debug level, on every path.

The daemon runs as a real process with JSON logs at debug level through login, a
failed login whose answer quotes the password, refreshes, uploads, a 5xx whose body
quotes the Authorization header, a 401 whose body quotes the token, a login outage
and an archive folder that cannot be written; then its whole output is searched.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.conftest import PASSWORD
from tests.helpers import (
    ENVIO_UPLOAD,
    ConfigYaml,
    DaemonProcess,
    Retry,
    running_daemon,
    token_auth,
    wait_until,
)
from uploader_daemon.emulator import Emulator, EmulatorSettings, ScriptedResponse

TIMEOUT = 20.0


def test_password_tokens_and_authorization_headers_never_appear_in_debug_json_logs(tmp_path: Path) -> None:
    """Every line is JSON with timestamp, level and event, and no secret the daemon held is in any of them."""
    drop, sent, state = tmp_path / "drop", tmp_path / "sent", tmp_path / "state"
    drop.mkdir()
    settings = EmulatorSettings(
        storage_dir=tmp_path / "server", users={"uploader": PASSWORD}, token_lifetime=4.0
    )
    with Emulator(settings) as emulator:
        refresh = {
            "path": "/auth/tokenRefresh",
            "check_every": "500ms",
            "before_expiry": "3s",
            "active_within": "1m",
        }
        config = ConfigYaml(
            {"state": state, "drop": drop, "sent": sent, "failed": tmp_path / "failed"},
            "reports",
            emulator.base_url,
            log={"level": "debug", "format": "json"},
            shutdown_grace="1s",
            concurrency=2,
            retry=Retry(10, "100ms", "300ms"),
            api_timeout="10s",
            auth=token_auth(refresh=refresh),
            upload=ENVIO_UPLOAD,
        ).write(tmp_path / "config.yaml")
        # The first login is refused by an API that quotes what it was sent.
        emulator.script(
            "POST",
            "/auth/login",
            ScriptedResponse(
                401, {"error": "bad credentials", "input": {"username": "uploader", "password": PASSWORD}}
            ),
        )
        daemon = DaemonProcess(config, tmp_path / "daemon.log", {"UPLOADER_PASSWORD": PASSWORD})
        try:
            daemon.wait_for_log('"daemon_started"')
            for name in ("a.csv", "b.csv"):
                (drop / name).write_text(name)
            assert emulator.wait_for(lambda emu: len(emu.received) == 2, TIMEOUT)
            assert emulator.wait_for(lambda emu: emu.counters["refreshes"] >= 1, TIMEOUT)

            # A 5xx quoting the header, then a 401 quoting the token, then no login possible.
            authorization = emulator.requests[-1].authorization
            assert authorization is not None
            token = authorization.removeprefix("Bearer ")
            emulator.script(
                "POST",
                "/api/envio",
                ScriptedResponse(507, f"storage full; request had Authorization: {authorization}"),
                ScriptedResponse(401, {"error": "token rejected", "token": token}),
            )
            emulator.set_login_enabled(False)
            (drop / "c.csv").write_text("c")
            assert emulator.wait_for(lambda emu: emu.counters["failed_logins"] >= 1, TIMEOUT)
            emulator.set_login_enabled(True)
            assert emulator.wait_for(lambda emu: len(emu.received) == 3, TIMEOUT)
            wait_until(lambda: (sent / "c.csv").exists(), TIMEOUT, "c.csv archived")

            # The archive folder turns into a file: the after_upload action fails, then recovers.
            sent.rename(tmp_path / "sent.away")
            sent.write_text("in the way")
            (drop / "d.csv").write_text("d")
            daemon.wait_for_log('"after_upload_failed"')
            sent.unlink()
            (tmp_path / "sent.away").rename(sent)
            wait_until(lambda: (sent / "d.csv").exists(), TIMEOUT, "d.csv archived")

            daemon.signal(signal.SIGTERM)
            assert 0 == daemon.wait(TIMEOUT)
        finally:
            daemon.close()
        requests = emulator.requests

    output = daemon.output
    lines = output.splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "event"} <= set(entry) for entry in entries)
    assert {("timestamp", "level", "event")} == {tuple(entry)[:3] for entry in entries}
    events = {entry["event"] for entry in entries}
    assert {
        "login_failed",
        "logged_in",
        "token_refreshed",
        "upload_unauthorized",
        "delivery_failed",
        "after_upload_failed",
        "file_delivered",
        "daemon_stopped",
    } <= events

    authorizations = {record.authorization for record in requests if record.authorization}
    tokens = {value.removeprefix("Bearer ") for value in authorizations}
    tokens.add(json.loads((state / "tokens" / "reports.json").read_text())["token"])
    assert len(tokens) >= 3  # the first token, at least one refreshed, the one after the 401
    leaks = sorted(secret for secret in {PASSWORD, *tokens, *authorizations} if secret in output)
    assert [] == leaks


def test_failed_file_sidecar_does_not_quote_the_token_the_server_echoed(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """A 400 whose body echoes the Authorization header leaves no token in `<name>.error.json`."""
    config = ConfigYaml(folders, "reports", emulator.base_url, auth=token_auth(), upload=ENVIO_UPLOAD).load(
        {"UPLOADER_PASSWORD": PASSWORD}
    )
    with running_daemon(config):
        (folders["drop"] / "first.csv").write_text("1")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        authorization = emulator.requests[-1].authorization
        assert authorization is not None
        emulator.script(
            "POST",
            "/api/envio",
            ScriptedResponse(400, {"error": "bad file", "request_headers": {"Authorization": authorization}}),
        )
        (folders["drop"] / "bad.csv").write_text("x")
        sidecar = folders["failed"] / "bad.csv.error.json"
        wait_until(sidecar.exists, TIMEOUT, "bad.csv failed")

    report = sidecar.read_text()
    assert "bad file" in report
    assert authorization.removeprefix("Bearer ") not in report
