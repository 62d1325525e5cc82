"""The state directory: created private, usable, and held by one daemon at a time."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from uploader_daemon.errors import AlreadyRunningError, StateDirError
from uploader_daemon.state import StateDir


def test_prepare_creates_the_state_dir_and_its_token_store_private(tmp_path: Path) -> None:
    """Both folders exist with mode 0700 (tokens live there); preparing again is harmless."""
    state = StateDir(tmp_path / "state")
    state.prepare()
    state.prepare()
    modes = [stat.S_IMODE(os.stat(path).st_mode) for path in (state.root, state.tokens_dir)]
    assert [0o700, 0o700] == modes
    assert tmp_path / "state" / "journal.sqlite3" == state.journal_path


def test_a_state_dir_that_cannot_be_created_is_an_admin_error(tmp_path: Path) -> None:
    """A file where a parent folder should be: StateDirError naming the folder and the fix."""
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(StateDirError, match=r"cannot create state_dir .*taken/state.*change state_dir"):
        StateDir(tmp_path / "taken" / "state").prepare()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere whatever the mode")
def test_a_state_dir_this_user_cannot_write_is_an_admin_error(tmp_path: Path) -> None:
    """An existing folder without write permission is refused before anything is written."""
    root = tmp_path / "state"
    (root / "tokens").mkdir(parents=True)
    root.chmod(0o500)
    try:
        with pytest.raises(StateDirError, match="is not writable by this user"):
            StateDir(root).prepare()
    finally:
        root.chmod(0o700)


def test_the_lock_records_the_pid_and_a_second_daemon_is_refused(tmp_path: Path) -> None:
    """Two daemons on one state_dir would deliver files twice: the second gets AlreadyRunningError."""
    first, second = StateDir(tmp_path), StateDir(tmp_path)
    first.lock()
    try:
        assert f"{os.getpid()}\n" == (tmp_path / "lock").read_text()
        with pytest.raises(AlreadyRunningError, match="another uploader-daemon is already using"):
            second.lock()
    finally:
        first.unlock()
    second.lock()  # released: the next daemon may start
    second.unlock()
    second.unlock()  # unlocking twice is harmless


def test_a_lock_file_that_cannot_be_opened_is_an_admin_error(tmp_path: Path) -> None:
    """The state_dir does not exist (prepare was skipped): StateDirError, not a traceback."""
    with pytest.raises(StateDirError, match="cannot open the lock file"):
        StateDir(tmp_path / "missing").lock()
