"""``uploader-daemon status``: counts per target from the journal, the token's expiry, never the token."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import load
from uploader_daemon.clock import iso_utc
from uploader_daemon.config import Config
from uploader_daemon.errors import StateDirError
from uploader_daemon.identity import FileIdentity
from uploader_daemon.journal import Disposition, SqliteJournal
from uploader_daemon.state import StateDir
from uploader_daemon.status import collect_status, render_status

NOW = 1_800_000_000.0


def config(tmp_path: Path) -> Config:
    for name in ("docs", "scans"):
        (tmp_path / name).mkdir(exist_ok=True)
    return load(
        """
        state_dir: {tmp}/state
        targets:
          - name: docs
            folder: {tmp}/docs
            after_upload: {{action: keep}}
            failed_dir: {tmp}/failed-docs
            api: {{base_url: "https://api.example.test"}}
            auth: {{type: none}}
            upload: {{type: multipart}}
          - name: scans
            folder: {tmp}/scans
            after_upload: {{action: keep}}
            failed_dir: {tmp}/failed-scans
            api: {{base_url: "https://api.example.test"}}
            auth: {{type: none}}
            upload: {{type: multipart}}
        """,
        tmp=tmp_path,
    )


async def fill(journal: SqliteJournal) -> None:
    """docs: one pending, one done, one failed with an error; scans: nothing."""
    for number, name in enumerate(("pending.csv", "done.csv", "failed.csv")):
        await journal.admit("docs", name, FileIdentity(number + 1, number + 1), NOW)
    rows = {row.path: row for row in await journal.records("docs")}
    done = await journal.claim(rows["done.csv"].id, "node", NOW)
    failed = await journal.claim(rows["failed.csv"].id, "node", NOW + 60)
    assert done is not None
    assert failed is not None
    await journal.finish(done, Disposition.KEPT, None, NOW)
    await journal.fail(
        failed, "step upload: HTTP 422", 422, Disposition.PARKED, "/failed/failed.csv", NOW + 60
    )
    await journal.close()


def prepared(tmp_path: Path) -> tuple[Config, StateDir]:
    settings = config(tmp_path)
    state = StateDir(settings.state_dir)
    state.prepare()
    return settings, state


def test_status_counts_each_targets_files_and_shows_the_last_error(tmp_path: Path) -> None:
    """The present (waiting, in flight) and the history (done, failed, last error) per target."""
    settings, state = prepared(tmp_path)
    asyncio.run(fill(SqliteJournal.open(state.journal_path)))

    docs, scans = collect_status(settings).targets

    assert ("docs", str(tmp_path / "docs"), 1, 0) == (
        docs.name,
        docs.folder,
        docs.now.waiting,
        docs.now.in_flight,
    )
    assert (1, 1, "step upload: HTTP 422", iso_utc(NOW + 60)) == (
        docs.history.done,
        docs.history.failed,
        docs.history.last_error,
        docs.history.last_error_at,
    )
    assert (0, 0, 0, None) == (
        scans.now.waiting,
        scans.history.done,
        scans.history.failed,
        scans.history.last_error,
    )


def test_status_shows_when_the_token_expires_and_says_when_it_has(tmp_path: Path) -> None:
    """The expiry from the token store (a target with static headers has no credential to show)."""
    settings, state = prepared(tmp_path)
    later = time.time() + 3600
    (state.tokens_dir / "docs.json").write_text(json.dumps({"token": "t0k3n-value", "expires_at": later}))
    (state.tokens_dir / "scans.json").write_text(json.dumps({"token": "t0k3n-value", "expires_at": 1000.0}))

    status = collect_status(settings)
    docs, scans = status.targets
    text = render_status(status, as_json=False)

    assert iso_utc(later) == docs.now.token_expires_at
    assert iso_utc(1000.0) == scans.now.token_expires_at
    assert "t0k3n-value" not in text + render_status(status, as_json=True)


def test_a_token_file_that_cannot_be_read_shows_no_token(tmp_path: Path) -> None:
    """Corrupt or incomplete token files: no token held, not a crash."""
    settings, state = prepared(tmp_path)
    (state.tokens_dir / "docs.json").write_text("{not json")
    (state.tokens_dir / "scans.json").write_text(json.dumps({"token": "x"}))
    assert [None, None] == [target.now.token_expires_at for target in collect_status(settings).targets]


def test_status_before_the_first_journal_write_shows_zero_everywhere(tmp_path: Path) -> None:
    """A state_dir without a journal yet: every count is zero."""
    settings, _ = prepared(tmp_path)
    assert [(0, 0, 0, 0)] * 2 == [
        (target.now.waiting, target.now.in_flight, target.history.done, target.history.failed)
        for target in collect_status(settings).targets
    ]


def test_status_of_a_state_dir_the_daemon_never_used_is_an_admin_error(tmp_path: Path) -> None:
    """No state_dir: StateDirError that says the daemon has not run with it."""
    with pytest.raises(StateDirError, match="the daemon has not run with this state_dir yet"):
        collect_status(config(tmp_path))


def test_a_journal_that_is_not_a_journal_is_an_admin_error(tmp_path: Path) -> None:
    """A foreign file at the journal's path: StateDirError naming it."""
    settings, state = prepared(tmp_path)
    state.journal_path.write_bytes(b"this is not a SQLite database, just some bytes" * 20)
    with pytest.raises(StateDirError, match="cannot open the journal"):
        collect_status(settings)


def test_a_journal_whose_table_is_missing_is_an_admin_error(tmp_path: Path) -> None:
    """A journal of the right version that cannot be read: StateDirError, not a traceback."""
    settings, state = prepared(tmp_path)
    connection = sqlite3.connect(state.journal_path)
    connection.execute("PRAGMA user_version=3")
    connection.close()
    with pytest.raises(StateDirError, match="cannot read the journal"):
        collect_status(settings)


def test_render_status_as_text_and_as_json(tmp_path: Path) -> None:
    """Text for people (now first, history below, the last error only when there is one), JSON too."""
    settings, state = prepared(tmp_path)
    asyncio.run(fill(SqliteJournal.open(state.journal_path)))
    status = collect_status(settings)

    lines = render_status(status, as_json=False).splitlines()

    assert lines.index("Now") < lines.index(next(line for line in lines if line.startswith("History")))
    assert "    waiting 1   in flight 0   parked 0 (in " + str(tmp_path / "failed-docs") + ")" in lines
    assert any("last error" in line and "HTTP 422" in line for line in lines)
    assert ["docs", "scans"] == [
        entry["name"] for entry in json.loads(render_status(status, as_json=True))["targets"]
    ]
