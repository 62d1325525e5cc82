"""``uploader-daemon status``: the present first, then the history, per target.

**Now** is what is true at this moment: files waiting and in flight (from the journal,
with the node that holds each claim), files parked in ``failed_dir`` *now* (sidecars not
counted: a file moved back to the drop folder is no longer counted), the credential's
state with its cause, the last delivery. The credential's cause (a refused password, a
refused token, an outage) is known only to the running daemon: it leaves it in
``state_dir/present.json`` (see :mod:`uploader_daemon.present`), which this command reads;
with no daemon running it shows the last state the daemon saw, and says when that was.

**History** is what the journal kept (``journal.keep_done_for``, 30 days by default):
files done, failed, the last error. A problem fixed since still counts there, which is
why it is shown apart.

Safe to run while the daemon runs (SQLite WAL readers do not block the writer). Shows
the token's expiry time, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from uploader_daemon.clock import iso_utc
from uploader_daemon.config.schema import Config, TargetSettings
from uploader_daemon.errors import StateDirError
from uploader_daemon.journal import FileState, TargetCounts
from uploader_daemon.journal.opening import open_for_reading
from uploader_daemon.present import (
    CredentialState,
    CredentialView,
    DaemonPresent,
    PresentFile,
    TargetPresent,
    process_alive,
)
from uploader_daemon.state import StateDir

SIDECAR_SUFFIX = ".error.json"
_IN_FLIGHT_SHOWN = 10
_PARKED_COUNT_LIMIT = 100_000


@dataclass(frozen=True)
class DaemonStatus:
    running: bool
    node: str | None
    pid: int | None
    started_at: str | None
    seen_at: str | None  # when the daemon last wrote its present state
    summary: str


@dataclass(frozen=True)
class FileInFlight:
    file: str
    owner: str | None  # the node holding the claim
    since: str
    state: str  # uploading, or delivered (being filed away)


@dataclass(frozen=True)
class PresentStatus:
    waiting: int
    in_flight: int
    in_flight_files: list[FileInFlight]
    parked: int | None  # files in failed_dir now; None when it cannot be read
    parked_note: str | None
    failed_dir: str
    credential: str  # a CredentialState value
    credential_text: str
    credential_seen_at: str | None  # set when it is what a stopped daemon saw last
    token_expires_at: str | None
    api_up: bool | None  # None when no daemon runs to know
    last_delivery_at: str | None


@dataclass(frozen=True)
class HistoryStatus:
    days: float
    done: int
    failed: int
    last_error: str | None
    last_error_at: str | None


@dataclass(frozen=True)
class TargetStatus:
    name: str
    folder: str
    now: PresentStatus
    history: HistoryStatus


@dataclass(frozen=True)
class Status:
    daemon: DaemonStatus
    targets: list[TargetStatus]


def collect_status(config: Config, now: float | None = None) -> Status:
    """The present and the history of every target. Raises :class:`StateDirError` when unreadable."""
    if not config.state_dir.exists():
        raise StateDirError(
            f"{config.state_dir} does not exist: the daemon has not run with this state_dir yet"
        )
    moment = datetime.datetime.now(datetime.UTC).timestamp() if now is None else now
    with _as_owner_of(config.state_dir):
        return _read(config, StateDir(config.state_dir), moment)


@dataclass(frozen=True)
class _JournalFacts:
    counts: TargetCounts
    in_flight: list[FileInFlight]
    last_delivery_at: float | None


def _read(config: Config, state: StateDir, now: float) -> Status:
    journal_path = state.journal_path
    try:
        journal_path.stat()
    except PermissionError:
        raise StateDirError(
            f"cannot read {config.state_dir}; run status as root or as the daemon's user "
            "(sudo -u uploader-daemon uploader-daemon status)"
        ) from None
    except FileNotFoundError:
        pass  # not created yet (or the journal is shared): open_for_reading knows
    present = PresentFile(config.state_dir).read()
    node = present.node if present is not None else socket.gethostname()
    try:
        facts = asyncio.run(_journal_facts(config, journal_path, config.journal.node or node))
    except sqlite3.DatabaseError as error:
        raise StateDirError(f"cannot read the journal {journal_path}: {error}") from None
    daemon = _daemon_status(present, state)
    running = present if daemon.running and present is not None else None
    last_seen = present if present is not None and not daemon.running else None
    targets = []
    for target in config.targets:
        live = _target_in(running, target.name)
        seen = _target_in(last_seen, target.name)
        targets.append(
            TargetStatus(
                name=target.name,
                folder=str(target.folder),
                now=_present_status(target, facts[target.name], live, seen, last_seen, state, now),
                history=_history(config, facts[target.name].counts),
            )
        )
    return Status(daemon, targets)


async def _journal_facts(config: Config, journal_path: Path, node: str) -> dict[str, _JournalFacts]:
    journal = await open_for_reading(config.journal, sqlite_path=journal_path, node=node)
    if journal is None:
        return {target.name: _JournalFacts(TargetCounts(), [], None) for target in config.targets}
    facts = {}
    try:
        for target in config.targets:
            counts = await journal.counts(target.name)
            claimed = await journal.records(
                target.name, (FileState.UPLOADING, FileState.DELIVERED), limit=_IN_FLIGHT_SHOWN
            )
            done = await journal.records(target.name, (FileState.DONE,), limit=1)
            facts[target.name] = _JournalFacts(
                counts,
                [FileInFlight(r.path, r.owner, iso_utc(r.updated_at), str(r.state)) for r in claimed],
                done[0].updated_at if done else None,
            )
    finally:
        await journal.close()
    return facts


def _daemon_status(present: DaemonPresent | None, state: StateDir) -> DaemonStatus:
    if present is None:
        pid = _lock_pid(state)
        if pid is not None and process_alive(pid):
            return DaemonStatus(
                True, None, pid, None, None, f"running (pid {pid}), not reporting its state yet"
            )
        return DaemonStatus(False, None, None, None, None, "not running (it has left no present state)")
    started, seen = iso_utc(present.started_at), iso_utc(present.written_at)
    if present.running and process_alive(present.pid):
        summary = f"running on {present.node} since {started} (pid {present.pid})"
        return DaemonStatus(True, present.node, present.pid, started, seen, summary)
    if present.running:
        summary = f"not running: it ended without stopping (killed or crashed) after {seen}"
    else:
        summary = f"not running: stopped at {seen}"
    return DaemonStatus(False, present.node, present.pid, started, seen, summary)


def _lock_pid(state: StateDir) -> int | None:
    try:
        text = (state.root / "lock").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _target_in(present: DaemonPresent | None, name: str) -> TargetPresent | None:
    if present is None:
        return None
    return next((target for target in present.targets if target.name == name), None)


def _present_status(
    target: TargetSettings,
    facts: _JournalFacts,
    live: TargetPresent | None,
    seen: TargetPresent | None,
    last_seen: DaemonPresent | None,
    state: StateDir,
    now: float,
) -> PresentStatus:
    parked, parked_note = count_parked(target.failed_dir)
    token_expires_at = _token_expiry(state.tokens_dir / f"{target.name}.json")
    known = live or seen
    view, from_daemon = _credential(target, known, token_expires_at, now)
    last_delivery = max(
        (moment for moment in (facts.last_delivery_at, known.last_delivery_at if known else None) if moment),
        default=None,
    )
    return PresentStatus(
        waiting=facts.counts.pending,
        in_flight=facts.counts.uploading,
        in_flight_files=facts.in_flight,
        parked=parked,
        parked_note=parked_note,
        failed_dir=str(target.failed_dir),
        credential=str(view.state),
        credential_text=view.sentence(),
        credential_seen_at=iso_utc(last_seen.written_at)
        if from_daemon and seen is not None and last_seen
        else None,
        token_expires_at=iso_utc(token_expires_at) if token_expires_at is not None else None,
        api_up=live.api_up if live is not None else None,
        last_delivery_at=iso_utc(last_delivery) if last_delivery is not None else None,
    )


def _credential(
    target: TargetSettings, known: TargetPresent | None, token_expires_at: float | None, now: float
) -> tuple[CredentialView, bool]:
    """The credential's state, and whether it is the daemon's word (else the token file's).

    A cause only the daemon knows (a refused password or token, an outage) comes from
    its present state; whether a token is held, and until when, from the token file,
    checked against the clock now (an expiry may have passed since the daemon wrote).
    """
    if target.auth.type in ("headers", "none"):
        return CredentialView(CredentialState.STATIC), False
    if known is not None and known.credential not in (
        CredentialState.LOGGED_IN,
        CredentialState.TOKEN_EXPIRED,
        CredentialState.NOT_LOGGED_IN,
    ):
        detail = known.api_down_reason if known.credential is CredentialState.API_UNREACHABLE else None
        return CredentialView(known.credential, since=known.credential_since, detail=detail), True
    if token_expires_at is None:
        return CredentialView(CredentialState.NOT_LOGGED_IN), False
    if token_expires_at <= now:
        return CredentialView(CredentialState.TOKEN_EXPIRED, until=token_expires_at), False
    return CredentialView(CredentialState.LOGGED_IN, until=token_expires_at), False


def _history(config: Config, counts: TargetCounts) -> HistoryStatus:
    return HistoryStatus(
        days=round(config.journal.keep_done_for / 86400, 1),
        done=counts.done,
        failed=counts.failed,
        last_error=counts.last_error,
        last_error_at=iso_utc(counts.last_error_at) if counts.last_error_at is not None else None,
    )


def count_parked(failed_dir: Path) -> tuple[int | None, str | None]:
    """Files in ``failed_dir`` now, sidecars not counted: ``(count, note)``; ``None`` if unreadable."""
    count = 0
    try:
        for root, directories, files in os.walk(failed_dir, onerror=_raise):
            directories[:] = [name for name in directories if not os.path.islink(os.path.join(root, name))]
            for name in files:
                if name.endswith(SIDECAR_SUFFIX) or os.path.islink(os.path.join(root, name)):
                    continue
                count += 1
                if count >= _PARKED_COUNT_LIMIT:
                    return count, f"counted up to {_PARKED_COUNT_LIMIT}; there are more"
    except FileNotFoundError:
        return 0, None
    except OSError as error:
        return None, f"cannot read {failed_dir}: {error.strerror or error}"
    return count, None


def _raise(error: OSError) -> None:
    raise error


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


def render_status(status: Status, as_json: bool) -> str:
    """The status as text for people, or as one JSON document."""
    if as_json:
        return json.dumps(asdict(status), indent=2)
    lines = [f"uploader-daemon: {status.daemon.summary}", ""]
    lines.append("Now")
    for target in status.targets:
        lines.extend(_render_now(target))
    if status.targets:
        days = status.targets[0].history.days
        lines += ["", f"History (what the journal keeps: {days:g} days)"]
    for target in status.targets:
        history = target.history
        lines.append(f"  {target.name}: done {history.done}   failed {history.failed}")
        if history.last_error:
            lines.append(f"    last error ({history.last_error_at}): {_one_line(history.last_error)}")
    return "\n".join(lines)


def _render_now(target: TargetStatus) -> list[str]:
    now = target.now
    parked = "?" if now.parked is None else str(now.parked)
    lines = [
        f"  {target.name}  ({target.folder})",
        f"    waiting {now.waiting}   in flight {now.in_flight}   parked {parked} (in {now.failed_dir})",
    ]
    if now.parked_note:
        lines.append(f"    parked: {now.parked_note}")
    seen = f" (last seen {now.credential_seen_at})" if now.credential_seen_at else ""
    lines.append(f"    credential: {now.credential_text}{seen}")
    lines.append(f"    last delivery: {now.last_delivery_at or 'none in the journal'}")
    for claimed in now.in_flight_files:
        holder = f"held by {claimed.owner}" if claimed.owner else "unclaimed"
        lines.append(f"    {claimed.state}: {claimed.file} ({holder}, since {claimed.since})")
    if now.in_flight > len(now.in_flight_files):
        lines.append(f"    ... and {now.in_flight - len(now.in_flight_files)} more in flight")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _token_expiry(path: Path) -> float | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return float(data["expires_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
