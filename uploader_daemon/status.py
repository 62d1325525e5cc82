"""``uploader-daemon status``: what each target is doing, read from the journal.

Safe to run while the daemon runs (SQLite WAL readers do not block the writer). Shows
the token's expiry time, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from uploader_daemon.clock import iso_utc
from uploader_daemon.config.schema import Config
from uploader_daemon.errors import StateDirError
from uploader_daemon.journal import SqliteJournal, TargetCounts
from uploader_daemon.state import StateDir


@dataclass(frozen=True)
class TargetStatus:
    name: str
    folder: str
    pending: int
    uploading: int
    done: int
    failed: int
    last_error: str | None
    last_error_at: str | None
    token_expires_at: str | None


def collect_status(config: Config) -> list[TargetStatus]:
    """Per-target counts and token expiry. Raises :class:`StateDirError` when unreadable."""
    if not config.state_dir.exists():
        raise StateDirError(
            f"{config.state_dir} does not exist: the daemon has not run with this state_dir yet"
        )
    with _as_owner_of(config.state_dir):
        return _read(config, StateDir(config.state_dir))


def _read(config: Config, state: StateDir) -> list[TargetStatus]:
    journal_path = state.journal_path
    try:
        journal_path.stat()
    except PermissionError:
        raise StateDirError(
            f"cannot read {config.state_dir}; run status as root or as the daemon's user "
            "(sudo -u uploader-daemon uploader-daemon status)"
        ) from None
    except FileNotFoundError:
        journal = None
    else:
        journal = SqliteJournal.open(journal_path)
    try:
        counts = asyncio.run(_counts(config, journal))
    except sqlite3.DatabaseError as error:
        raise StateDirError(f"cannot read the journal {journal_path}: {error}") from None
    return [_target_status(config, index, counts[index], state) for index in range(len(config.targets))]


async def _counts(config: Config, journal: SqliteJournal | None) -> list[TargetCounts]:
    if journal is None:
        return [TargetCounts() for _ in config.targets]
    try:
        return [await journal.counts(target.name) for target in config.targets]
    finally:
        await journal.close()


@contextlib.contextmanager
def _as_owner_of(directory: Path) -> Iterator[None]:
    """Run as the state directory's owner when started as root.

    Opening a SQLite journal in WAL mode may create its ``-wal``/``-shm`` files; created
    by root, they would lock the daemon's own user out of its journal.
    """
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


def render_status(statuses: list[TargetStatus], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(status) for status in statuses], indent=2)
    lines = []
    for status in statuses:
        lines.append(f"{status.name}  ({status.folder})")
        counts = f"pending {status.pending}   uploading {status.uploading}   done {status.done}"
        lines.append(f"  {counts}   failed {status.failed}")
        lines.append(f"  token expires: {status.token_expires_at or 'no token held'}")
        if status.last_error:
            lines.append(f"  last error ({status.last_error_at}): {status.last_error}")
    return "\n".join(lines)


def _target_status(config: Config, index: int, counts: TargetCounts, state: StateDir) -> TargetStatus:
    target = config.targets[index]
    return TargetStatus(
        name=target.name,
        folder=str(target.folder),
        pending=counts.pending,
        uploading=counts.uploading,
        done=counts.done,
        failed=counts.failed,
        last_error=counts.last_error,
        last_error_at=_iso(counts.last_error_at),
        token_expires_at=_token_expiry(state.tokens_dir / f"{target.name}.json"),
    )


def _token_expiry(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        expires_at = float(data["expires_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    moment = _iso(expires_at)
    now = datetime.datetime.now(datetime.UTC).timestamp()
    return f"{moment} (expired)" if expires_at <= now else moment


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_utc(timestamp)
