"""``uploader-daemon list``: what the journal holds, file by file.

Safe while the daemon runs: SQLite readers in WAL mode never block its writes. Started
as root, the journal is read as the state directory's owner, so the ``-wal``/``-shm``
files a reader may create never end up owned by root (which would lock the daemon out).
With the shared PostgreSQL journal it lists the whole group's files; NODE says which
daemon holds (or last held) each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from uploader_daemon.clock import iso_utc
from uploader_daemon.config.schema import Config
from uploader_daemon.errors import StateDirError
from uploader_daemon.journal import FileRecord, FileState
from uploader_daemon.journal.opening import open_for_reading
from uploader_daemon.state import StateDir

# What an admin asks for, in the journal's states: "delivered" is sent, whether or not
# its after_upload action has run yet.
STATES: dict[str, tuple[FileState, ...]] = {
    "pending": (FileState.PENDING,),
    "uploading": (FileState.UPLOADING,),
    "delivered": (FileState.DELIVERED, FileState.DONE),
    "failed": (FileState.FAILED,),
    "gone": (FileState.GONE,),
}
_SHOWN_STATE = {
    FileState.PENDING: "pending",
    FileState.UPLOADING: "uploading",
    FileState.DELIVERED: "delivered",
    FileState.DONE: "delivered",
    FileState.FAILED: "failed",
    FileState.GONE: "gone",
}


@dataclass(frozen=True)
class Row:
    """One file version as ``list`` shows it (and ``--json`` writes it)."""

    target: str
    file: str
    state: str
    outcome: str | None  # archived, parked, deleted... (the journal's disposition)
    destination: str | None
    size: int
    attempts: int
    last_status: int | None
    last_error: str | None
    discovered_at: str
    updated_at: str
    node: str | None  # the daemon that holds (or last held) its claim


def read_rows(config: Config, target: str | None, states: Sequence[str], limit: int | None) -> list[Row]:
    """The newest rows first. Raises :class:`StateDirError` when the journal cannot be read."""
    path = StateDir(config.state_dir).journal_path
    wanted = tuple(state for name in states for state in STATES[name])
    if config.journal.backend == "postgresql":
        # Nothing of the state_dir is touched: the rows are the group's, in the database.
        return [_row(record) for record in asyncio.run(_records(config, path, target, wanted, limit))]
    if not config.state_dir.exists() or not path.exists():
        return []  # the daemon has not run with this state_dir yet: nothing to show
    with _as_owner_of(config.state_dir):
        try:
            records = asyncio.run(_records(config, path, target, wanted, limit))
        except PermissionError:
            raise StateDirError(
                f"cannot read {path}; run list as root or as the daemon's user "
                "(sudo -u uploader-daemon uploader-daemon list ...)"
            ) from None
        except sqlite3.DatabaseError as error:
            raise StateDirError(f"cannot read the journal {path}: {error}") from None
    return [_row(record) for record in records]


def render(rows: list[Row], stream: TextIO, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(row) for row in rows], indent=2), file=stream)
        return
    if not rows:
        print("no files in the journal match", file=stream)
        return
    if stream.isatty():
        _table(rows, stream)
        return
    # Plain columns for pipes: one line per file, grep- and awk-friendly, never wrapped.
    header = ("TARGET", "STATE", "ATTEMPTS", "UPDATED", "NODE", "FILE", "LAST ERROR")
    lines = [header] + [
        (
            row.target,
            _state_text(row),
            str(row.attempts),
            row.updated_at,
            row.node or "-",
            row.file,
            row.last_error or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]), file=stream)


def _table(rows: list[Row], stream: TextIO) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("target", "state", "attempts", "discovered", "updated", "node", "file", "last error"):
        table.add_column(column, overflow="fold")
    colours = {"delivered": "green", "failed": "red", "pending": "yellow", "uploading": "cyan"}
    for row in rows:
        colour = colours.get(row.state, "")
        table.add_row(
            row.target,
            f"[{colour}]{_state_text(row)}[/]" if colour else _state_text(row),
            str(row.attempts),
            row.discovered_at,
            row.updated_at,
            row.node or "",
            row.file,
            row.last_error or "",
        )
    Console(file=stream).print(table)


def _state_text(row: Row) -> str:
    return f"{row.state} ({row.outcome})" if row.outcome else row.state


async def _records(
    config: Config, path: Path, target: str | None, states: tuple[FileState, ...], limit: int | None
) -> list[FileRecord]:
    node = config.journal.node or socket.gethostname()
    journal = await open_for_reading(config.journal, sqlite_path=path, node=node)
    if journal is None:
        return []
    try:
        return await journal.records(target, states, limit)
    finally:
        await journal.close()


def _row(record: FileRecord) -> Row:
    return Row(
        target=record.target,
        file=record.path,
        state=_SHOWN_STATE[record.state],
        outcome=str(record.disposition) if record.disposition else None,
        destination=record.destination,
        size=record.size,
        attempts=record.attempts,
        last_status=record.last_status,
        last_error=record.last_error,
        discovered_at=iso_utc(record.discovered_at),
        updated_at=iso_utc(record.updated_at),
        node=record.owner,
    )


@contextlib.contextmanager
def _as_owner_of(directory: Path) -> Iterator[None]:
    """Run as ``directory``'s owner when started as root (see the module docstring)."""
    owner = directory.stat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        yield
        return
    os.setegid(owner.st_gid)
    os.seteuid(owner.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
