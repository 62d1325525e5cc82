"""The `uploader-daemon` command as an admin meets it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.helpers import (
    ENVIO_UPLOAD,
    ConfigYaml,
    DaemonThread,
    Retry,
    running_daemon,
    token_auth,
    wait_until,
    write_config,
)
from uploader_daemon.config import load_config
from uploader_daemon.emulator import Emulator, ScriptedResponse

COMMAND_TIMEOUT = 30.0
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}


def uploader_daemon(
    *arguments: str, env: Mapping[str, str] | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `python -m uploader_daemon ARGUMENTS` and capture its output."""
    environment = {**os.environ, **ENVIRON}
    environment.pop("UPLOADER_DAEMON_CONFIG", None)
    environment.pop("NOTIFY_SOCKET", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "uploader_daemon", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        check=False,
    )


def good_config(path: Path, folders: dict[str, Path], base_url: str, **changes: Path) -> Path:
    """A valid flow-T config file on the test's folders; ``changes`` replace folders (``state=...``)."""
    return ConfigYaml(
        folders | changes,
        "reports",
        base_url,
        log={"level": "info", "format": "json"},
        shutdown_grace="1s",
        retry=Retry(3, "100ms", "500ms"),
        api_timeout="10s",
        auth=token_auth(refresh={"path": "/auth/tokenRefresh", "check_every": "1h"}),
        upload=ENVIO_UPLOAD,
    ).write(path)


def problem_lines(stderr: str) -> list[str]:
    """The indented problem lines under `... has N problems:`."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


# --- bad configurations ------------------------------------------------------------------


def test_check_config_lists_every_problem_with_its_key_path_and_exits_2(tmp_path: Path) -> None:
    """Six mistakes in one file give six one-line problems, each with its key path, and exit 2."""
    drop = tmp_path / "drop"
    drop.mkdir()
    config = write_config(
        tmp_path / "bad.yaml",
        """
        state_dir: {root}/state
        log: {{level: loud}}
        targets:
          - name: reports
            folder: {drop}
            settle: 2x
            concurrency: -1
            colour: blue
            after_upload: {{action: archive, archive_dir: {root}/sent}}
            failed_dir: {root}/failed
            api: {{base_url: "not a url"}}
            auth:
              type: token
              login: {{username: uploader, password: {{env: UPLOADER_TEST_UNSET_PASSWORD}}}}
              refresh: {{check_every: -5m}}
            upload: {{type: multipart, path: /api/envio}}
        """,
        root=tmp_path,
        drop=drop,
    )

    result = uploader_daemon("check-config", "--config", str(config))

    assert 2 == result.returncode
    lines = problem_lines(result.stderr)
    assert [
        "log.level",
        "targets[0].settle",
        "targets[0].concurrency",
        "targets[0].api.base_url",
        "targets[0].auth.login.password",
        "targets[0].auth.refresh.check_every",
        "targets[0].colour",
    ] == [line.split(": ", 1)[0] for line in lines]
    assert f"uploader-daemon: {config} has 7 problems:" == result.stderr.splitlines()[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert "" == result.stdout


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_missing_config_file_is_one_sentence_and_exit_2(tmp_path: Path, command: str) -> None:
    """A config path that does not exist is refused with one sentence, for check-config and run alike."""
    missing = tmp_path / "nowhere.yaml"

    result = uploader_daemon(command, "--config", str(missing))

    assert 2 == result.returncode
    assert [
        f"uploader-daemon: {missing} has 1 problem:",
        "  the config file does not exist; create it (see config/example.yaml) or pass --config",
    ] == result.stderr.splitlines()
    assert "Traceback" not in result.stdout + result.stderr


def test_yaml_syntax_error_names_the_line_and_exits_2(tmp_path: Path) -> None:
    """Broken YAML is reported with its line, not a traceback."""
    config = tmp_path / "broken.yaml"
    config.write_text("state_dir: /tmp/x\ntargets:\n  - name: a\n    folder: /srv/drop\n   bad indent: 1\n")

    result = uploader_daemon("check-config", "--config", str(config))

    assert 2 == result.returncode
    [problem] = problem_lines(result.stderr)
    assert problem.startswith("line 5, column ")
    assert "YAML syntax error" in problem
    assert "Traceback" not in result.stdout + result.stderr


def test_run_with_a_state_dir_that_cannot_be_created_exits_3_with_one_sentence(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """`state_dir` below a regular file: exit 3 and one line naming it and what to do."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = good_config(tmp_path / "config.yaml", folders, emulator.base_url, state=blocker / "state")

    result = uploader_daemon("run", "--config", str(config))

    assert 3 == result.returncode
    [line] = (result.stdout + result.stderr).splitlines()
    entry = json.loads(line)
    assert ("error", "cannot_start", 3) == (entry["level"], entry["event"], entry["exit_code"])
    assert entry["error"].startswith(f"cannot create state_dir {blocker / 'state'}: Not a directory;")
    assert "Traceback" not in line
    assert [] == emulator.requests


# --- a second daemon and status ----------------------------------------------------------


@pytest.fixture
def running(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[Path, DaemonThread]]:
    """A daemon that delivered two files and failed one, still running; and its config file."""
    config_path = good_config(tmp_path / "config.yaml", folders, emulator.base_url)
    emulator.script("POST", "/api/envio", ScriptedResponse(400, {"error": "columns do not match"}))
    with running_daemon(load_config(config_path, ENVIRON)) as runner:
        (folders["drop"] / "bad.csv").write_text("x")
        assert emulator.wait_for(lambda emu: len(emu.requests) >= 2, COMMAND_TIMEOUT)
        for name in ("a.csv", "b.csv"):
            (folders["drop"] / name).write_text(name)
        wait_until(lambda: len(list(folders["sent"].glob("*.csv"))) == 2, COMMAND_TIMEOUT, "two archived")
        wait_until(lambda: (folders["failed"] / "bad.csv.error.json").exists(), COMMAND_TIMEOUT, "one failed")
        yield config_path, runner


def stored_token(folders: dict[str, Path]) -> str:
    token: str = json.loads((folders["state"] / "tokens" / "reports.json").read_text())["token"]
    return token


def test_second_daemon_on_the_same_state_dir_exits_4(running: tuple[Path, DaemonThread]) -> None:
    """While a daemon holds the state_dir, `run` on it refuses to start with exit 4."""
    config_path, _runner = running

    result = uploader_daemon("run", "--config", str(config_path))

    assert 4 == result.returncode
    [line] = (result.stdout + result.stderr).splitlines()
    assert "another uploader-daemon is already using" in json.loads(line)["error"]


def test_status_shows_the_present_then_the_history_but_never_the_token(
    running: tuple[Path, DaemonThread], folders: dict[str, Path]
) -> None:
    """`status` shows what is true now (parked now, the credential), then the journal's history apart."""
    config_path, runner = running
    token = stored_token(folders)
    wait_until(lambda: (folders["state"] / "present.json").exists(), COMMAND_TIMEOUT, "present state written")

    result = uploader_daemon("status", "--config", str(config_path))

    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"uploader-daemon: running on {runner.daemon.node} since ")
    now = lines.index("Now")
    history = next(number for number, line in enumerate(lines) if line.startswith("History ("))
    assert now < history
    assert f"  reports  ({folders['drop']})" == lines[now + 1]
    assert f"    waiting 0   in flight 0   parked 1 (in {folders['failed']})" == lines[now + 2]
    assert lines[now + 3].startswith("    credential: logged in until 20")
    assert lines[now + 4].startswith("    last delivery: 20")
    assert "  reports: done 2   failed 1" == lines[history + 1]
    assert lines[history + 2].startswith("    last error (")
    assert "400" in lines[history + 2]
    assert token not in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_status_json_is_valid_json_without_the_token(
    running: tuple[Path, DaemonThread], folders: dict[str, Path]
) -> None:
    """`status --json` is one JSON document with the same facts, and no token."""
    config_path, _runner = running

    result = uploader_daemon("status", "--config", str(config_path), "--json")

    assert 0 == result.returncode
    document = json.loads(result.stdout)
    [status] = document["targets"]
    now, history = status["now"], status["history"]
    assert ("reports", 0, 0, 1, 2, 1) == (
        status["name"],
        now["waiting"],
        now["in_flight"],
        now["parked"],
        history["done"],
        history["failed"],
    )
    assert now["token_expires_at"]
    assert "logged_in" == now["credential"]
    assert "400" in history["last_error"]
    assert stored_token(folders) not in result.stdout


def test_config_defaults_to_the_uploader_daemon_config_variable(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """Without `--config`, `$UPLOADER_DAEMON_CONFIG` names the file."""
    config_path = good_config(tmp_path / "config.yaml", folders, emulator.base_url)

    result = uploader_daemon("check-config", env={"UPLOADER_DAEMON_CONFIG": str(config_path)})

    assert 0 == result.returncode
    assert f"{config_path}: OK, 1 target(s)" == result.stdout.splitlines()[0]


# --- the demo ------------------------------------------------------------------------------


def test_demo_exits_0_and_prints_a_summary() -> None:
    """`uploader-daemon demo` runs the whole flow locally and ends with an OK summary."""
    result = uploader_daemon("demo", timeout=60)

    assert 0 == result.returncode, result.stdout + result.stderr
    summary = result.stdout.split("=== uploader-daemon demo summary ===", 1)[1]
    assert "uploaded:          5 of 5 file(s)" in summary
    assert "expired tokens sent: 0" in summary
    assert "result:            OK" in summary
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_accepts_a_good_file_and_shows_each_step_of_the_delivery(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    """`check-config --show-steps` exits 0 and prints the preset as the HTTP steps it runs."""
    config = good_config(tmp_path / "config.yaml", folders, "https://api.example.test")
    result = uploader_daemon("check-config", "--config", str(config), "--show-steps")
    assert 0 == result.returncode, result.stderr
    assert f"{config}: OK, 1 target(s)" in result.stdout
    assert "upload (multipart)" in result.stdout
    assert "path: /api/envio" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the state directory to another user")
def test_status_run_as_root_reads_the_journal_as_the_daemons_user(tmp_path: Path) -> None:
    """Any file SQLite creates while root reads the journal belongs to the daemon's user."""
    import pwd
    import shutil

    from uploader_daemon.status import _as_owner_of

    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    shutil.chown(state, nobody.pw_uid, nobody.pw_gid)

    with _as_owner_of(state):
        assert (nobody.pw_uid, nobody.pw_gid) == (os.geteuid(), os.getegid())
    assert (0, 0) == (os.geteuid(), os.getegid())
