"""`retry`, `list`, `upload`, `example-config`: real subprocesses, the emulator, real folders."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.helpers import DaemonThread, run_cli, running_daemon, wait_until, write_config
from uploader_daemon.config import load_config
from uploader_daemon.emulator import Emulator, ScriptedResponse

TIMEOUT = 30.0
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}
REPOSITORY = Path(__file__).resolve().parents[2]

CONFIG = """
state_dir: {state}
log: {{level: info, format: json}}
shutdown_grace: 2s
targets:
  - name: reports
    folder: {drop}
    settle: 0s
    watch: {{rescan_every: 1h}}
    retry: {{attempts: 2, backoff: 100ms, max_backoff: 200ms}}
    after_upload: {{action: archive, archive_dir: {sent}}}
    failed_dir: {failed}
    api: {{base_url: "{base_url}", timeout: 10s}}
    auth:
      type: token
      login: {{path: /auth/login, username: uploader, password: {{env: UPLOADER_PASSWORD}}}}
      refresh: {{path: /auth/tokenRefresh, check_every: 1h}}
    upload: {{type: multipart, path: /api/envio, file_field: file}}
"""


def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*arguments, env=ENVIRON, timeout=TIMEOUT)


@pytest.fixture
def config_path(emulator: Emulator, folders: dict[str, Path], tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        CONFIG,
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )


def received(emulator: Emulator, name: str) -> int:
    return sum(1 for file in emulator.received if file.name == name)


def park(emulator: Emulator, folders: dict[str, Path], *names: str) -> None:
    """Have the running daemon give up on each file (the API refuses it with a 400)."""
    for name in names:
        emulator.script("POST", "/api/envio", ScriptedResponse(400, {"error": "columns do not match"}))
        (folders["drop"] / name).write_text(f"content of {name}\n")
        sidecar = folders["failed"] / f"{name}.error.json"
        wait_until(sidecar.exists, TIMEOUT, f"{name} parked")


@pytest.fixture
def daemon(config_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(load_config(config_path, ENVIRON)) as runner:
        yield runner


# --- retry ---------------------------------------------------------------------------


def test_retry_moves_a_parked_file_back_and_the_running_daemon_delivers_it(
    emulator: Emulator, folders: dict[str, Path], config_path: Path, daemon: DaemonThread
) -> None:
    """`retry TARGET NAME` moves the file (never its sidecar) back; the daemon sends it once."""
    park(emulator, folders, "bad.csv")

    result = cli("retry", "--config", str(config_path), "reports", "bad.csv")

    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"moved {folders['failed'] / 'bad.csv'} -> {folders['drop'] / 'bad.csv'}, its .error.json removed"
    )
    assert "400" in lines[0]
    assert "1 of 1 file(s) moved back for delivery to reports" == lines[-1]
    wait_until(lambda: (folders["sent"] / "bad.csv").exists(), TIMEOUT, "delivered and archived")
    assert 1 == received(emulator, "bad.csv")
    assert [] == list(folders["failed"].iterdir())
    assert 0 == received(emulator, "bad.csv.error.json")


def test_retry_all_with_the_daemon_stopped_and_the_next_start_delivers_every_file(
    emulator: Emulator, folders: dict[str, Path], config_path: Path
) -> None:
    """`retry --all` works without a daemon; the next start finds the files and sends each once."""
    with running_daemon(load_config(config_path, ENVIRON)):
        park(emulator, folders, "one.csv", "two.csv")

    result = cli("retry", "--config", str(config_path), "reports", "--all")

    assert 0 == result.returncode, result.stderr
    assert "2 of 2 file(s) moved back for delivery to reports" == result.stdout.splitlines()[-1]
    assert ["one.csv", "two.csv"] == sorted(path.name for path in folders["drop"].iterdir())
    assert [] == list(folders["failed"].iterdir())
    with running_daemon(load_config(config_path, ENVIRON)):
        wait_until(lambda: len(list(folders["sent"].iterdir())) == 2, TIMEOUT, "both archived")
    assert (1, 1) == (received(emulator, "one.csv"), received(emulator, "two.csv"))


def test_retry_refuses_names_that_are_not_parked_and_moves_nothing(
    emulator: Emulator, folders: dict[str, Path], config_path: Path, daemon: DaemonThread
) -> None:
    """One wrong name among right ones: exit 2, each wrong name said, nothing moved."""
    park(emulator, folders, "bad.csv")

    result = cli(
        "retry", "--config", str(config_path), "reports", "bad.csv", "nope.csv", "bad.csv.error.json"
    )

    assert 2 == result.returncode
    assert [
        f"uploader-daemon: nope.csv: not parked in {folders['failed']}; "
        "`uploader-daemon list --target reports --state failed` shows what failed",
        f"uploader-daemon: bad.csv.error.json: not parked in {folders['failed']}; "
        "`uploader-daemon list --target reports --state failed` shows what failed",
        "uploader-daemon: nothing was moved",
    ] == result.stderr.splitlines()
    assert ["bad.csv", "bad.csv.error.json"] == sorted(path.name for path in folders["failed"].iterdir())


def test_retry_never_replaces_a_file_of_the_same_name_in_the_drop_folder(
    emulator: Emulator, folders: dict[str, Path], config_path: Path
) -> None:
    """A parked file whose name is taken in the drop folder stays parked; exit 1 says so."""
    with running_daemon(load_config(config_path, ENVIRON)):
        park(emulator, folders, "bad.csv")
    (folders["drop"] / "bad.csv").write_text("a newer version\n")

    result = cli("retry", "--config", str(config_path), "reports", "--all")

    assert 1 == result.returncode
    assert "is taken in the drop folder" in result.stderr
    assert "a newer version\n" == (folders["drop"] / "bad.csv").read_text()
    assert "content of bad.csv\n" == (folders["failed"] / "bad.csv").read_text()


# --- list ----------------------------------------------------------------------------


def test_list_shows_each_files_state_attempts_last_error_times_and_node(
    emulator: Emulator, folders: dict[str, Path], config_path: Path, daemon: DaemonThread
) -> None:
    """`list --json` has every file with its state, attempts, error, times and node; filters work."""
    park(emulator, folders, "bad.csv")
    (folders["drop"] / "good.csv").write_text("fine\n")
    wait_until(lambda: (folders["sent"] / "good.csv").exists(), TIMEOUT, "good.csv delivered")
    assert daemon.daemon is not None

    everything = cli("list", "--config", str(config_path), "--json")
    failed = cli("list", "--config", str(config_path), "--state", "failed", "--json")
    plain = cli("list", "--config", str(config_path), "--target", "reports")

    assert 0 == everything.returncode, everything.stderr
    rows = {row["file"]: row for row in json.loads(everything.stdout)}
    assert {"bad.csv", "good.csv"} == set(rows)
    assert ("delivered", "archived", 0) == (
        rows["good.csv"]["state"],
        rows["good.csv"]["outcome"],
        rows["good.csv"]["attempts"],
    )
    assert ("failed", "parked", 1, 400) == (
        rows["bad.csv"]["state"],
        rows["bad.csv"]["outcome"],
        rows["bad.csv"]["attempts"],
        rows["bad.csv"]["last_status"],
    )
    assert "400 Bad Request" in rows["bad.csv"]["last_error"]
    assert rows["bad.csv"]["node"] is None  # nobody holds a finished file
    assert rows["bad.csv"]["discovered_at"].startswith("20")
    assert rows["bad.csv"]["updated_at"].startswith("20")
    assert ["bad.csv"] == [row["file"] for row in json.loads(failed.stdout)]
    header, *lines = plain.stdout.splitlines()
    assert ["TARGET", "STATE", "ATTEMPTS", "UPDATED", "NODE", "FILE", "LAST", "ERROR"] == header.split()
    assert 2 == len(lines)
    assert any("failed (parked)" in line and "bad.csv" in line for line in lines)


def test_list_names_the_node_that_holds_a_file_in_flight(
    emulator: Emulator, folders: dict[str, Path], config_path: Path, daemon: DaemonThread
) -> None:
    """A file being uploaded shows as uploading, with the daemon that holds it."""
    emulator.script("POST", "/api/envio", ScriptedResponse(200, {"ok": True}, delay=5.0))
    (folders["drop"] / "slow.csv").write_text("slow\n")
    assert daemon.daemon is not None
    rows: list[dict[str, object]] = []

    def uploading() -> bool:
        rows[:] = json.loads(
            cli("list", "--config", str(config_path), "--state", "uploading", "--json").stdout
        )
        return bool(rows)

    wait_until(uploading, TIMEOUT, "slow.csv in flight")
    assert [("slow.csv", "uploading", daemon.daemon.node)] == [
        (row["file"], row["state"], row["node"]) for row in rows
    ]


def test_list_of_an_unknown_target_exits_2_naming_the_targets(config_path: Path) -> None:
    """A typo in --target is refused with the names that exist."""
    result = cli("list", "--config", str(config_path), "--target", "reprots")

    assert 2 == result.returncode
    assert "no target is called 'reprots'; the config has: reports" in result.stderr


# --- upload --------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder that is no target's: files uploaded from here are the command's only."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def read_terminal(arguments: list[str], timeout: float = TIMEOUT) -> tuple[int, str]:
    """Run the command with its stdout on a pseudo-terminal; returns its exit code and output."""
    controller, terminal = os.openpty()
    environment = {**os.environ, **ENVIRON, "COLUMNS": "160", "TERM": "xterm"}
    environment.pop("NOTIFY_SOCKET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "uploader_daemon", *arguments],
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=environment,
    )
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is done with it
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def test_upload_draws_a_progress_bar_per_file_on_a_terminal_and_leaves_the_files(
    emulator: Emulator, config_path: Path, outside: Path
) -> None:
    """On a TTY each file gets a bar that ends full and ticked; exit 0; the files stay."""
    big = outside / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    small = outside / "small.csv"
    small.write_text("a,b\n")

    code, output = read_terminal(
        ["upload", "--config", str(config_path), "--target", "reports", str(big), str(small)]
    )

    assert 0 == code, output
    assert "━" in output  # the bar itself
    assert "✓ big.bin" in output
    assert "✓ small.csv" in output
    assert "3.0/3.0 MiB" in output
    assert "2 of 2 file(s) delivered to reports" in output
    assert (1, 1) == (received(emulator, "big.bin"), received(emulator, "small.csv"))
    assert big.exists()
    assert small.exists()


def test_upload_prints_plain_lines_without_a_terminal_and_exits_1_when_a_file_fails(
    emulator: Emulator, config_path: Path, outside: Path
) -> None:
    """Piped: one line per event, a FAILED line for the refused file, a summary, exit 1."""
    emulator.script("POST", "/api/envio", ScriptedResponse(422, {"error": "not a report"}))
    refused = outside / "refused.csv"
    refused.write_text("x\n")
    big = outside / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))

    # One at a time, so the scripted refusal meets the first file.
    result = cli("upload", "--config", str(config_path), "--target", "reports", str(refused))
    second = cli("upload", "--config", str(config_path), "--target", "reports", str(big))

    assert 1 == result.returncode
    lines = result.stdout.splitlines()
    assert f"{refused}: sending 2 B" == lines[0]
    assert f"{refused}: POST {emulator.base_url}/auth/login" in lines
    assert f"{refused}: POST {emulator.base_url}/api/envio" in lines
    assert lines[-2].startswith(f"{refused}: FAILED: 422: ")
    assert "0 of 1 file(s) delivered to reports" == lines[-1]
    assert 0 == second.returncode, second.stdout + second.stderr
    assert [f"{big}: {percent}% of 2.0 MiB sent" for percent in (25, 50, 75, 100)] == [
        line for line in second.stdout.splitlines() if "% of" in line
    ]
    assert second.stdout.splitlines()[-2].startswith(f"{big}: delivered in ")


def test_upload_exits_2_for_bad_arguments_and_sends_nothing(
    emulator: Emulator, config_path: Path, outside: Path
) -> None:
    """A missing file or an unknown target: exit 2 with a sentence each, no request at all."""
    missing = cli("upload", "--config", str(config_path), "--target", "reports", str(outside / "nope.csv"))
    unknown = cli("upload", "--config", str(config_path), "--target", "other", str(config_path))
    folder = cli("upload", "--config", str(config_path), "--target", "reports", str(outside))

    assert (2, 2, 2) == (missing.returncode, unknown.returncode, folder.returncode)
    assert f"uploader-daemon: {outside / 'nope.csv'}: no such file" == missing.stderr.strip()
    assert "no target is called 'other'" in unknown.stderr
    assert f"uploader-daemon: {outside}: not a regular file" == folder.stderr.strip()
    assert [] == emulator.requests


def test_upload_works_while_the_daemon_runs_and_uses_its_token(
    emulator: Emulator, folders: dict[str, Path], config_path: Path, outside: Path, daemon: DaemonThread
) -> None:
    """No lock conflict with a running daemon; the token it saved is used, no second login."""
    (folders["drop"] / "first.csv").write_text("first\n")
    wait_until(lambda: (folders["sent"] / "first.csv").exists(), TIMEOUT, "the daemon delivered a file")
    urgent = outside / "urgent.csv"
    urgent.write_text("now\n")

    result = cli("upload", "--config", str(config_path), "--target", "reports", str(urgent))

    assert 0 == result.returncode, result.stdout + result.stderr
    assert 1 == received(emulator, "urgent.csv")
    assert 1 == emulator.counters["logins"]
    assert urgent.exists()
    (folders["drop"] / "second.csv").write_text("second\n")
    wait_until(lambda: (folders["sent"] / "second.csv").exists(), TIMEOUT, "the daemon still delivers")


# --- example-config, systemd-unit ------------------------------------------------------


def test_example_config_prints_the_shipped_examples_and_the_unit() -> None:
    """The package carries the examples and the unit: the commands print them byte for byte."""
    full = cli("example-config")
    flow_c = cli("example-config", "C")
    steps = cli("example-config", "steps")
    unit = cli("systemd-unit")
    unknown = cli("example-config", "X")

    assert (REPOSITORY / "config" / "example.yaml").read_text() == full.stdout
    assert (REPOSITORY / "config" / "examples" / "C-conversion-tasks.yaml").read_text() == flow_c.stdout
    assert (REPOSITORY / "config" / "examples" / "steps.yaml").read_text() == steps.stdout
    assert (REPOSITORY / "systemd" / "uploader-daemon.service").read_text() == unit.stdout
    assert 2 == unknown.returncode
    assert "no example for 'X'; choose one of: T, R, P, C, G, steps" in unknown.stderr
