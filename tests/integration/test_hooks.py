"""Alert hooks: real scripts run by a real daemon process, against the emulator."""

from __future__ import annotations

import os
import signal
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.helpers import DaemonProcess, log_events, wait_until, write_config
from uploader_daemon.emulator import Emulator, ScriptedResponse
from uploader_daemon.hooks import hook_environment

TIMEOUT = 30.0
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}

CONFIG = """
state_dir: {root}/state
log: {{level: info, format: json}}
shutdown_grace: 2s
targets:
  - name: reports
    folder: {root}/drop
    settle: 0s
    watch: {{rescan_every: 1h}}
    retry: {{attempts: 2, backoff: 100ms, max_backoff: 300ms}}
    after_upload: {{action: archive, archive_dir: {root}/sent}}
    failed_dir: {root}/failed
    api: {{base_url: "{base_url}", timeout: 5s}}
    auth:
      type: token
      login: {{path: /auth/login, username: uploader, password: {{env: UPLOADER_PASSWORD}}}}
      refresh: {{path: /auth/tokenRefresh, check_every: 1h}}
    upload: {{type: multipart, path: /api/envio, file_field: file}}
    hooks:
{hooks}
"""


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def recorded(folder: Path, hook: str) -> list[dict[str, str]]:
    """The environments the recording script saw, oldest first."""
    runs = []
    for path in sorted(folder.glob(f"{hook}.*"), key=lambda item: item.stat().st_mtime_ns):
        lines = path.read_text(encoding="utf-8").splitlines()
        runs.append(dict(line.split("=", 1) for line in lines if "=" in line))
    return runs


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "drop").mkdir()
    (tmp_path / "runs").mkdir()
    return tmp_path


@pytest.fixture
def recorder(root: Path) -> Path:
    """A hook that writes its arguments and environment to a file of its own, then exits 0."""
    return script(
        root / "record.sh",
        f"""\
        out=$(mktemp "{root}/runs/$UPLOADER_HOOK.XXXXXX")
        echo "ARGS=$*" > "$out"
        env >> "$out"
        """,
    )


@pytest.fixture
def start_daemon(root: Path, emulator: Emulator) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def start(hooks: str) -> DaemonProcess:
        config = write_config(
            root / "config.yaml",
            CONFIG,
            root=root,
            base_url=emulator.base_url,
            hooks=textwrap.indent(textwrap.dedent(hooks).strip(), " " * 6),
        )
        daemon = DaemonProcess(config, root / "daemon.log", env=ENVIRON)
        started.append(daemon)
        daemon.wait_for_log('"daemon_started"', TIMEOUT)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [event for event in log_events(daemon.output) if event.get("event") == name]


def refuse_next_upload(emulator: Emulator) -> None:
    emulator.script("POST", "/api/envio", ScriptedResponse(422, {"error": "not a report"}))


def test_on_failure_runs_once_per_parked_file_with_what_happened_in_its_environment(
    emulator: Emulator, root: Path, recorder: Path, start_daemon: Any
) -> None:
    """A parked file runs the hook with the target, file, failed path and reason; no systemd variables."""
    daemon = start_daemon(f'on_failure: ["{recorder}", "{{target.name}}", "{{file.name}}"]')
    refuse_next_upload(emulator)

    (root / "drop" / "bad.csv").write_text("x\n")
    wait_until(lambda: events(daemon, "hook_ran"), TIMEOUT, "the hook ran")

    [run] = recorded(root / "runs", "on_failure")
    assert "reports bad.csv" == run["ARGS"]
    assert ("on_failure", "reports", "bad.csv", str(root / "failed" / "bad.csv")) == (
        run["UPLOADER_HOOK"],
        run["UPLOADER_TARGET"],
        run["UPLOADER_FILE"],
        run["UPLOADER_FAILED_PATH"],
    )
    assert run["UPLOADER_REASON"].startswith("422: step upload: the server refused the request")
    assert "\n" not in run["UPLOADER_REASON"]
    assert set() == {"WATCHDOG_USEC", "WATCHDOG_PID", "NOTIFY_SOCKET"} & set(run)
    assert "/" == run["PWD"]


def test_a_failing_hook_is_logged_with_its_output_and_deliveries_go_on(
    emulator: Emulator, root: Path, start_daemon: Any
) -> None:
    """Exit 3 and a message: one error line says so; the next file is delivered as usual."""
    failing = script(root / "failing.sh", 'echo "pager service said no" >&2\nexit 3\n')
    daemon = start_daemon(f'on_failure: ["{failing}"]')
    refuse_next_upload(emulator)

    (root / "drop" / "bad.csv").write_text("x\n")
    wait_until(lambda: events(daemon, "hook_failed"), TIMEOUT, "the hook failed")
    (root / "drop" / "good.csv").write_text("y\n")
    wait_until(lambda: (root / "sent" / "good.csv").exists(), TIMEOUT, "the next file delivered")

    [failed] = events(daemon, "hook_failed")
    assert ("on_failure", str(failing), 3, "pager service said no") == (
        failed["hook"],
        failed["program"],
        failed["exit_code"],
        failed["output"],
    )
    assert "reports" == failed["target"]


def test_a_hook_that_hangs_is_killed_with_its_children_after_its_timeout_and_never_delays_a_file(
    emulator: Emulator, root: Path, start_daemon: Any
) -> None:
    """A hook (and the child it started) still running at `timeout` is killed; files flow meanwhile."""
    hanging = script(
        root / "hanging.sh",
        f"""\
        echo $$ > "{root}/runs/hook.pid"
        sleep 60 &
        echo $! > "{root}/runs/child.pid"
        wait
        """,
    )
    daemon = start_daemon(f'on_failure: ["{hanging}"]\ntimeout: 3s')
    refuse_next_upload(emulator)

    (root / "drop" / "bad.csv").write_text("x\n")
    wait_until(lambda: (root / "runs" / "child.pid").exists(), TIMEOUT, "the hook started its child")
    (root / "drop" / "good.csv").write_text("y\n")
    wait_until(lambda: (root / "sent" / "good.csv").exists(), TIMEOUT, "delivered while the hook hangs")
    delivered_before_the_kill = not events(daemon, "hook_timed_out")
    wait_until(lambda: events(daemon, "hook_timed_out"), TIMEOUT, "the hook killed")

    assert delivered_before_the_kill
    [timed_out] = events(daemon, "hook_timed_out")
    assert ("on_failure", 3.0) == (timed_out["hook"], timed_out["timeout"])
    for name in ("hook.pid", "child.pid"):
        pid = int((root / "runs" / name).read_text())
        wait_until(lambda pid=pid: not alive(pid), TIMEOUT, f"{name} gone")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_on_outage_runs_once_the_outage_lasts_outage_after_and_once_when_it_ends(
    emulator: Emulator, root: Path, recorder: Path, start_daemon: Any
) -> None:
    """503s for longer than outage_after: one alert with reason and start, one with RESOLVED=1."""
    daemon = start_daemon(f'on_outage: ["{recorder}", "{{target.name}}"]\noutage_after: 1s')
    emulator.fail_all(503)

    (root / "drop" / "waiting.csv").write_text("x\n")
    wait_until(lambda: events(daemon, "hook_ran"), TIMEOUT, "the outage alert")
    emulator.fail_all(None)
    wait_until(lambda: (root / "sent" / "waiting.csv").exists(), TIMEOUT, "delivered after the outage")
    wait_until(lambda: len(events(daemon, "hook_ran")) == 2, TIMEOUT, "the all-clear")

    alert, resolved = recorded(root / "runs", "on_outage")
    assert ("reports", "reports") == (alert["ARGS"], alert["UPLOADER_TARGET"])
    assert "503" in alert["UPLOADER_REASON"]
    assert alert["UPLOADER_SINCE"].startswith("20")
    assert "UPLOADER_RESOLVED" not in alert
    assert "1" == resolved["UPLOADER_RESOLVED"]
    assert alert["UPLOADER_SINCE"] == resolved["UPLOADER_SINCE"]
    assert int(resolved["UPLOADER_DOWN_FOR"]) >= 1


def test_an_outage_shorter_than_outage_after_runs_nothing(
    emulator: Emulator, root: Path, recorder: Path, start_daemon: Any
) -> None:
    """An outage that ends before outage_after alerts nobody, neither at its start nor its end."""
    daemon = start_daemon(f'on_outage: ["{recorder}"]\noutage_after: 1h')
    emulator.fail_all(503)

    (root / "drop" / "waiting.csv").write_text("x\n")
    wait_until(lambda: events(daemon, "api_outage_started"), TIMEOUT, "the outage")
    emulator.fail_all(None)
    wait_until(lambda: events(daemon, "api_outage_ended"), TIMEOUT, "the end of the outage")
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(TIMEOUT)

    assert [] == recorded(root / "runs", "on_outage")
    assert [] == events(daemon, "hook_ran")


def test_hooks_never_inherit_systemds_notify_and_watchdog_variables() -> None:
    """A hook with NOTIFY_SOCKET could tell systemd the daemon is alive when it is not."""
    base = {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2"}

    environment = hook_environment(base, {"UPLOADER_TARGET": "reports"})

    assert {"PATH": "/usr/bin", "UPLOADER_TARGET": "reports"} == environment
