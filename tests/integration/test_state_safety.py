"""What the daemon keeps and where: one journal per folder, damaged journals, private files.

Real daemons (in-process, and as processes where the exit code matters) on real folders.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import PASSWORD
from tests.helpers import ConfigYaml, DaemonProcess, running_daemon, token_auth, wait_until
from uploader_daemon.emulator import Emulator
from uploader_daemon.folder_marker import ATTRIBUTE

TIMEOUT = 20.0
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}


def builder(emulator: Emulator, folders: dict[str, Path], **overrides: Any) -> ConfigYaml:
    return ConfigYaml(folders, "reports", emulator.base_url, auth=token_auth(), **overrides)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- one folder, one journal ----------------------------------------------------------------


def test_a_second_daemon_with_another_journal_on_the_same_folder_is_refused(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """Another state_dir (so another journal) on a watched folder: exit 4 and a sentence how to fix it."""
    first = builder(emulator, folders)
    other_state = dict(folders, state=tmp_path / "other-state")
    second = dataclasses.replace(first, folders=other_state).write(tmp_path / "second.yaml")
    with running_daemon(first.load(ENVIRON)):
        process = DaemonProcess(second, tmp_path / "second.log", env=ENVIRON)
        try:
            code = process.wait(TIMEOUT)
        finally:
            process.close()

    assert 4 == code
    assert f"{folders['drop']} is watched by another uploader-daemon with another journal" in process.output
    assert "journal.backend: postgresql" in process.output
    assert [] == list(folders["drop"].iterdir())


def test_after_a_graceful_stop_another_journal_may_take_the_folder(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """A stopped daemon's mark says so: a new setup on the folder starts and delivers."""
    first = builder(emulator, folders)
    with running_daemon(first.load(ENVIRON)):
        pass
    moved = dataclasses.replace(first, folders=dict(folders, state=tmp_path / "new-state"))
    with running_daemon(moved.load(ENVIRON)):
        (folders["drop"] / "a.csv").write_text("a")
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "archived")

    assert b'"stopped": true' in os.getxattr(folders["drop"], ATTRIBUTE)


def test_the_same_journal_restarted_keeps_its_folder(emulator: Emulator, folders: dict[str, Path]) -> None:
    """The mark is the journal's, not the process's: a restart with the same state_dir is fine."""
    config = builder(emulator, folders).load(ENVIRON)
    for name in ("a.csv", "b.csv"):
        with running_daemon(config):
            (folders["drop"] / name).write_text(name)
            wait_until(lambda name=name: (folders["sent"] / name).exists(), TIMEOUT, "archived")


# --- a damaged journal ----------------------------------------------------------------------


def damage(journal: Path) -> None:
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(b"\x00this is not a database, just some bytes\x00" * 200)


def test_a_damaged_journal_is_set_aside_and_the_daemon_delivers_with_a_fresh_one(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """No restart loop: the damaged file is kept beside, an error says what was lost, files go."""
    journal = folders["state"] / "journal.sqlite3"
    damage(journal)
    (folders["drop"] / "waiting.csv").write_text("w")
    with capture_logs() as logs, running_daemon(builder(emulator, folders).load(ENVIRON)):
        wait_until(lambda: (folders["sent"] / "waiting.csv").exists(), TIMEOUT, "archived")

    [aside] = list(folders["state"].glob("journal.sqlite3.corrupt-*"))
    assert aside.read_bytes().startswith(b"\x00this is not a database")
    [report] = events(logs, "journal_set_aside")
    assert ("error", str(aside)) == (report["log_level"], report["damaged"])
    assert "found again" in report["action"]
    assert 0o600 == mode_of(journal)


def test_a_damaged_journal_with_kept_files_stops_with_exit_5_and_the_way_to_recover(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """after_upload: keep would resend every kept file with a fresh journal: stop, say how to recover."""
    damage(folders["state"] / "journal.sqlite3")
    config = builder(emulator, folders, after_upload={"action": "keep"}).write(tmp_path / "config.yaml")
    process = DaemonProcess(config, tmp_path / "daemon.log", env=ENVIRON)
    try:
        code = process.wait(TIMEOUT)
    finally:
        process.close()

    assert 5 == code
    assert "after_upload: keep" in process.output
    assert f"mv {folders['state'] / 'journal.sqlite3'}" in process.output
    assert [] == list(folders["state"].glob("journal.sqlite3.corrupt-*"))


# --- private state files ----------------------------------------------------------------------


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("loose_umask")
def test_state_files_are_private_whatever_the_umask_and_a_loose_state_dir_is_tightened(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """umask 022 and a state_dir made 0755 beforehand: 0700 for the folder, 0600 for every file."""
    folders["state"].mkdir(mode=0o755)
    folders["state"].chmod(0o755)
    with capture_logs() as logs, running_daemon(builder(emulator, folders).load(ENVIRON)):
        (folders["drop"] / "a.csv").write_text("a")
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "archived")
        files = {path.name: mode_of(path) for path in folders["state"].rglob("*") if path.is_file()}
        directories = {path.name: mode_of(path) for path in [folders["state"], folders["state"] / "tokens"]}

    assert {"journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm", "lock", "reports.json"} <= set(
        files
    )
    assert {name: 0o600 for name in files} == files
    assert {"state": 0o700, "tokens": 0o700} == directories
    assert ["state_dir_tightened"] == [entry["event"] for entry in events(logs, "state_dir_tightened")]


# --- secrets read from files ----------------------------------------------------------------


def file_secret_config(emulator: Emulator, folders: dict[str, Path], path: str) -> ConfigYaml:
    auth = token_auth(login={"username": "uploader", "password": {"file": path}})
    return ConfigYaml(folders, "reports", emulator.base_url, auth=auth)


def test_a_secret_file_other_users_can_read_is_warned_about_with_the_chmod_to_run(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """Like ssh with a key: it works, and the warning names the file and the fix."""
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    with capture_logs() as logs, running_daemon(file_secret_config(emulator, folders, str(secret)).load()):
        (folders["drop"] / "a.csv").write_text("a")
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "archived")

    [warning] = events(logs, "config_warning")
    assert (
        f"secret file {secret} is readable by other users (mode 644); run chmod 600 {secret}"
        == warning["problem"]
    )


def test_a_secret_file_under_the_home_directory_is_found_with_a_tilde(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """{file: ~/password} reads $HOME/password (it used to say "does not exist")."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "password").write_text(PASSWORD)
    (home / "password").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    with capture_logs() as logs, running_daemon(file_secret_config(emulator, folders, "~/password").load()):
        (folders["drop"] / "a.csv").write_text("a")
        wait_until(lambda: (folders["sent"] / "a.csv").exists(), TIMEOUT, "archived")

    assert [] == events(logs, "config_warning")
    assert 1 == emulator.counters["logins"]
