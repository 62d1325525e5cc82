"""The journal: every file's state survives restarts, so nothing is lost or sent twice.

These tests were written in the journal's first vocabulary (``retry_later``, ``done``,
``gone``...); ``tests.helpers.SyncJournal`` maps each of those words onto the claim-based
interface of :mod:`uploader_daemon.journal`, one call each, so that what they assert is
what they always asserted. The claim-based interface itself is tested in
``test_journal_claims.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SyncJournal as Journal
from uploader_daemon.errors import StateDirError
from uploader_daemon.journal import FileRecord, TargetCounts

T0 = 1_700_000_000.0


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


@pytest.fixture
def journal(journal_path: Path) -> Iterator[Journal]:
    opened = Journal.open(journal_path)
    yield opened
    opened.close()


def admitted(
    journal: Journal,
    path: str = "a.csv",
    size: int = 10,
    mtime_ns: int = 1,
    now: float = T0,
    target: str = "reports",
) -> FileRecord:
    record = journal.admit(target, path, size, mtime_ns, now)
    assert record is not None
    return record


def is_active(journal: Journal, target: str, path: str) -> bool:
    """Whether the journal has a pending, uploading or delivered row for ``path``."""
    row = journal._db.execute(
        "SELECT 1 FROM files WHERE target=? AND path=? AND state IN ('pending','uploading','delivered')",
        (target, path),
    ).fetchone()
    return row is not None


def uploading(journal: Journal, path: str = "a.csv", now: float = T0) -> FileRecord:
    record = admitted(journal, path, now=now)
    journal.step_started(record.id, 0, "plan", now)
    return journal.get(record.id)


# --- opening -----------------------------------------------------------------------------


def test_a_new_journal_is_created_and_empty(journal_path: Path) -> None:
    """Opening a path that does not exist creates the database with the current schema."""
    journal = Journal.open(journal_path)
    try:
        assert journal_path.exists()
        assert journal.counts("reports") == TargetCounts()
    finally:
        journal.close()


def test_reopening_an_existing_journal_keeps_its_rows(journal_path: Path) -> None:
    """A restart sees everything the previous run wrote."""
    first = Journal.open(journal_path)
    record = admitted(first, "kept.csv")
    first.step_finished(record.id, 0, {"create": {"id": 7}}, T0 + 1)
    first.close()
    second = Journal.open(journal_path)
    try:
        again = second.get(record.id)
        assert (again.path, again.state, again.next_step, again.outputs) == (
            "kept.csv",
            "pending",
            1,
            {"create": {"id": 7}},
        )
    finally:
        second.close()


def test_a_journal_from_a_newer_version_is_refused(journal_path: Path) -> None:
    """An older daemon must not write into a schema it does not know."""
    connection = sqlite3.connect(journal_path)
    connection.execute("PRAGMA user_version=99")
    connection.close()
    with pytest.raises(StateDirError, match="written by a newer uploader-daemon; upgrade it") as caught:
        Journal.open(journal_path)
    assert caught.value.exit_code == 3


def test_a_corrupt_journal_is_refused_as_a_state_dir_problem(journal_path: Path) -> None:
    """A file that is not SQLite gives an admin error naming it, not a traceback."""
    journal_path.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(StateDirError, match=f"cannot open the journal {journal_path}"):
        Journal.open(journal_path)


def test_a_journal_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    """The state_dir must exist (the daemon creates it before opening)."""
    with pytest.raises(StateDirError, match="cannot open the journal"):
        Journal.open(tmp_path / "missing" / "journal.sqlite3")


# --- discovery ---------------------------------------------------------------------------


def test_a_new_file_is_admitted_as_pending(journal: Journal) -> None:
    """The first sighting records the file with its size, mtime and time found."""
    record = admitted(journal, "sub/a.csv", size=123, mtime_ns=456, now=T0)
    assert (record.target, record.path, record.size, record.mtime_ns, record.state) == (
        "reports",
        "sub/a.csv",
        123,
        456,
        "pending",
    )
    assert (record.attempts, record.next_step, record.step_in_flight, record.outputs) == (0, 0, None, {})
    assert (record.discovered_at, record.updated_at) == (T0, T0)
    assert is_active(journal, "reports", "sub/a.csv")


def test_admitting_a_waiting_file_again_returns_the_same_record(journal: Journal) -> None:
    """A rescan that finds a pending file does not duplicate it."""
    first = admitted(journal)
    second = admitted(journal, now=T0 + 5)
    assert second == first


def test_a_file_rewritten_while_pending_gets_its_new_size_and_a_fresh_start(journal: Journal) -> None:
    """The upload must send the new content, so an old attempt's checkpoint is dropped."""
    record = admitted(journal, size=10, mtime_ns=1)
    journal.step_started(record.id, 0, "plan", T0)
    journal.step_finished(record.id, 0, {"create": {"id": 1, "fields": {"key": "k"}}}, T0)
    journal.step_started(record.id, 1, "plan", T0)
    journal.retry_later(record.id, "503 from storage", 503, T0 + 1)
    updated = admitted(journal, size=20, mtime_ns=2, now=T0 + 9)
    assert updated.id == record.id
    assert (updated.size, updated.mtime_ns, updated.updated_at) == (20, 2, T0 + 9)
    assert (updated.next_step, updated.step_in_flight, updated.outputs) == (0, None, {})
    assert updated.attempts == 0  # the new content gets every attempt again


def test_a_file_in_flight_or_delivered_is_not_admitted(journal: Journal) -> None:
    """While uploading, and once delivered, the file is the worker's business."""
    record = uploading(journal)
    assert journal.admit("reports", "a.csv", 10, 1, T0) is None
    assert journal.admit("reports", "a.csv", 99, 2, T0) is None
    journal.delivered(record.id, T0)
    assert journal.admit("reports", "a.csv", 10, 1, T0) is None
    assert is_active(journal, "reports", "a.csv")


def test_the_same_path_in_another_target_is_a_different_file(journal: Journal) -> None:
    """Rows are per target."""
    first = admitted(journal, target="reports")
    second = admitted(journal, target="scans")
    assert first.id != second.id


def test_a_new_file_with_an_archived_files_name_is_admitted(journal: Journal) -> None:
    """After archiving, the drop folder is free for a new file of the same name."""
    record = uploading(journal)
    journal.delivered(record.id, T0)
    journal.done(record.id, "/srv/sent/a.csv", T0)
    again = admitted(journal)
    assert again.id != record.id
    assert again.state == "pending"


def test_a_kept_file_is_settled_until_it_changes(journal: Journal) -> None:
    """after_upload: keep leaves the file in place; it is sent again only if rewritten."""
    record = uploading(journal)
    journal.delivered(record.id, T0)
    journal.done(record.id, None, T0)
    assert journal.was_settled("reports", "a.csv", 10, 1)
    assert journal.admit("reports", "a.csv", 10, 1, T0 + 1) is None
    assert not journal.was_settled("reports", "a.csv", 11, 1)
    changed = admitted(journal, size=11, now=T0 + 2)
    assert changed.id != record.id


def test_a_failed_file_that_could_not_be_moved_is_settled(journal: Journal) -> None:
    """Given up on but left in place (failed_dir unusable): never retried in a loop."""
    record = uploading(journal)
    journal.failed(record.id, "400 Bad Request", 400, None, T0)
    assert journal.was_settled("reports", "a.csv", 10, 1)
    assert journal.admit("reports", "a.csv", 10, 1, T0) is None


def test_a_failed_file_that_was_moved_frees_its_name(journal: Journal) -> None:
    """Moving a file back into the drop folder from failed_dir retries it."""
    record = uploading(journal)
    journal.failed(record.id, "400 Bad Request", 400, "/srv/failed/a.csv", T0)
    assert not journal.was_settled("reports", "a.csv", 10, 1)
    assert admitted(journal).id != record.id


def test_a_gone_file_that_reappears_is_admitted_again(journal: Journal) -> None:
    """Deleted before delivery, then written again: a new file."""
    record = admitted(journal)
    journal.gone(record.id, T0)
    assert journal.get(record.id).state == "gone"
    assert not is_active(journal, "reports", "a.csv")
    assert admitted(journal).id != record.id


# --- start-up ----------------------------------------------------------------------------


def test_recovery_returns_interrupted_uploads_to_pending(journal: Journal) -> None:
    """A crash leaves rows uploading; on start they are pending again, checkpoint intact."""
    crashed = uploading(journal, "crashed.csv")
    journal.step_finished(crashed.id, 0, {"create": {"id": 3}}, T0)
    waiting = admitted(journal, "waiting.csv")
    delivered = uploading(journal, "delivered.csv")
    journal.delivered(delivered.id, T0)
    assert journal.recover_interrupted(T0 + 60) == 1
    recovered = journal.get(crashed.id)
    assert (recovered.state, recovered.next_step, recovered.outputs, recovered.updated_at) == (
        "pending",
        1,
        {"create": {"id": 3}},
        T0 + 60,
    )
    assert journal.get(waiting.id).state == "pending"
    assert journal.get(delivered.id).state == "delivered"
    assert journal.recover_interrupted(T0 + 61) == 0


def test_unfinished_lists_pending_and_delivered_files_oldest_first(journal: Journal) -> None:
    """What the workers pick up on start: waiting files and those delivered but not filed away."""
    first = admitted(journal, "1.csv")
    second = uploading(journal, "2.csv")
    journal.delivered(second.id, T0)
    third = admitted(journal, "3.csv")
    in_flight = uploading(journal, "4.csv")
    done = uploading(journal, "5.csv")
    journal.done(done.id, "/sent/5.csv", T0)
    admitted(journal, "other.csv", target="scans")
    assert [record.id for record in journal.unfinished("reports")] == [first.id, second.id, third.id]
    assert in_flight.id not in [record.id for record in journal.unfinished("reports")]


def test_getting_an_unknown_record_raises_key_error(journal: Journal) -> None:
    """A record id that does not exist is a programming error."""
    with pytest.raises(KeyError):
        journal.get(12345)


# --- a delivery's progress ---------------------------------------------------------------


def test_checkpoints_record_the_step_in_flight_and_the_next_step(journal: Journal) -> None:
    """step_started marks the step whose outcome is unknown; step_finished moves past it."""
    record = uploading(journal)
    journal.step_started(record.id, 0, "plan", T0 + 1)
    assert (journal.get(record.id).step_in_flight, journal.get(record.id).next_step) == (0, 0)
    outputs = {"create": {"id": 42, "fields": {"key": "k", "Policy": "p"}}}
    journal.step_finished(record.id, 0, outputs, T0 + 2)
    after = journal.get(record.id)
    assert (after.step_in_flight, after.next_step, after.outputs) == (None, 1, outputs)
    assert after.updated_at == T0 + 2


def test_outputs_survive_a_json_round_trip(journal: Journal) -> None:
    """Saved values keep their types: numbers, booleans, null, nested lists, unicode."""
    record = uploading(journal)
    outputs = {
        "create": {
            "id": 1,
            "ratio": 0.5,
            "ok": True,
            "none": None,
            "list": [1, "two", {"3": [4]}],
            "name": "relatório ✓",
        }
    }
    journal.step_finished(record.id, 0, outputs, T0)
    assert journal.get(record.id).outputs == outputs


def test_resume_at_sets_where_the_next_attempt_starts(journal: Journal) -> None:
    """A stale upload grant restarts from step 0 with no outputs."""
    record = uploading(journal)
    journal.step_finished(record.id, 0, {"create": {"id": 1}}, T0)
    journal.step_started(record.id, 1, "plan", T0)
    journal.resume_at(record.id, 0, {}, T0 + 1)
    after = journal.get(record.id)
    assert (after.next_step, after.step_in_flight, after.outputs) == (0, None, {})


def test_retry_later_counts_attempts_and_keeps_the_error(journal: Journal) -> None:
    """Each transient failure is one attempt; the file goes back to pending."""
    record = uploading(journal)
    assert journal.retry_later(record.id, "503 Service Unavailable", 503, T0 + 1) == 1
    journal.step_started(record.id, 0, "plan", T0 + 2)
    assert journal.retry_later(record.id, "timed out", None, T0 + 3) == 2
    after = journal.get(record.id)
    assert (after.state, after.attempts, after.last_error, after.last_status, after.updated_at) == (
        "pending",
        2,
        "timed out",
        None,
        T0 + 3,
    )


def test_requeue_does_not_count_an_attempt(journal: Journal) -> None:
    """Waiting for a login is not the file's fault."""
    record = uploading(journal)
    journal.requeue(record.id, T0 + 1)
    assert (journal.get(record.id).state, journal.get(record.id).attempts) == ("pending", 0)
    journal.step_started(record.id, 0, "plan", T0 + 2)
    journal.requeue(record.id, T0 + 3, error="waiting for a successful login")
    after = journal.get(record.id)
    assert (after.state, after.attempts, after.last_error) == ("pending", 0, "waiting for a successful login")


def test_interrupted_only_touches_uploading_rows(journal: Journal) -> None:
    """A shutdown cut-off returns in-flight files to pending and leaves the rest alone."""
    in_flight = uploading(journal, "a.csv")
    journal.step_finished(in_flight.id, 0, {"s": {"v": 1}}, T0)
    delivered = uploading(journal, "b.csv")
    journal.delivered(delivered.id, T0)
    done = uploading(journal, "c.csv")
    journal.done(done.id, "/sent/c.csv", T0)
    for record in (in_flight, delivered, done):
        journal.interrupted(record.id, T0 + 5)
    after = journal.get(in_flight.id)
    assert (after.state, after.next_step, after.outputs) == ("pending", 1, {"s": {"v": 1}})
    assert after.updated_at == T0 + 5
    assert journal.get(delivered.id).state == "delivered"
    assert (journal.get(done.id).state, journal.get(done.id).updated_at) == ("done", T0)


def test_delivered_clears_the_step_in_flight(journal: Journal) -> None:
    """Every step succeeded: nothing is in flight any more."""
    record = uploading(journal)
    journal.step_started(record.id, 0, "plan", T0)
    journal.delivered(record.id, T0 + 1)
    after = journal.get(record.id)
    assert (after.state, after.step_in_flight) == ("delivered", None)


def test_done_records_the_destination_and_clears_the_last_error(journal: Journal) -> None:
    """A file that needed retries ends clean."""
    record = uploading(journal)
    journal.retry_later(record.id, "503", 503, T0)
    journal.step_started(record.id, 0, "plan", T0 + 1)
    journal.delivered(record.id, T0 + 2)
    journal.done(record.id, "/srv/sent/a.csv", T0 + 3)
    after = journal.get(record.id)
    assert (after.state, after.destination, after.last_error) == ("done", "/srv/sent/a.csv", None)
    assert not is_active(journal, "reports", "a.csv")


def test_failed_records_the_error_status_and_destination(journal: Journal) -> None:
    """The failed row says why and where the file went."""
    record = uploading(journal)
    journal.failed(record.id, "422 Unprocessable", 422, "/srv/failed/a.csv", T0 + 1)
    after = journal.get(record.id)
    assert (after.state, after.last_error, after.last_status, after.destination) == (
        "failed",
        "422 Unprocessable",
        422,
        "/srv/failed/a.csv",
    )


# --- reporting and housekeeping ----------------------------------------------------------


def test_counts_summarise_a_target_with_its_latest_error(journal: Journal) -> None:
    """What `status` shows: pending, in flight (delivered counts as in flight), done, failed."""
    admitted(journal, "p1")
    admitted(journal, "p2")
    uploading(journal, "u1")
    delivered = uploading(journal, "d1")
    journal.delivered(delivered.id, T0)
    done = uploading(journal, "ok")
    journal.done(done.id, "/sent/ok", T0)
    old = uploading(journal, "f1")
    journal.failed(old.id, "older error", 400, "/failed/f1", T0 + 1)
    new = uploading(journal, "f2")
    journal.failed(new.id, "newest error", 500, "/failed/f2", T0 + 2)
    admitted(journal, "elsewhere", target="scans")
    assert journal.counts("reports") == TargetCounts(
        pending=2, uploading=2, done=1, failed=2, last_error="newest error", last_error_at=T0 + 2
    )
    assert journal.counts("scans") == TargetCounts(pending=1)


def test_prune_deletes_old_finished_rows_but_keeps_rows_that_prevent_resending(journal: Journal) -> None:
    """Archived, moved-failed and gone rows go; kept and unmovable-failed rows stay forever."""
    archived = uploading(journal, "archived")
    journal.done(archived.id, "/sent/archived", T0)
    moved = uploading(journal, "moved")
    journal.failed(moved.id, "bad", 400, "/failed/moved", T0)
    gone = admitted(journal, "gone")
    journal.gone(gone.id, T0)
    kept = uploading(journal, "kept")
    journal.done(kept.id, None, T0)
    stuck = uploading(journal, "stuck")
    journal.failed(stuck.id, "bad", 400, None, T0)
    recent = uploading(journal, "recent")
    journal.done(recent.id, "/sent/recent", T0 + 100)
    waiting = admitted(journal, "waiting", now=T0 - 1000)

    assert journal.prune(older_than=T0 + 50) == 3
    remaining = {
        record_id
        for record_id in (archived.id, moved.id, gone.id, kept.id, stuck.id, recent.id, waiting.id)
        if _exists(journal, record_id)
    }
    assert remaining == {kept.id, stuck.id, recent.id, waiting.id}
    assert journal.admit("reports", "kept", 10, 1, T0 + 200) is None


def _exists(journal: Journal, record_id: int) -> bool:
    try:
        journal.get(record_id)
    except KeyError:
        return False
    return True


def test_a_journal_written_by_the_first_schema_is_upgraded_with_its_rows(journal_path: Path) -> None:
    """Upgrading the daemon keeps every file it knew: the journal is migrated, not refused."""
    old = sqlite3.connect(journal_path)
    old.executescript(
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY, target TEXT NOT NULL, path TEXT NOT NULL,
            size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, next_step INTEGER NOT NULL DEFAULT 0,
            step_in_flight INTEGER, outputs TEXT NOT NULL DEFAULT '{}', last_error TEXT,
            last_status INTEGER, destination TEXT, discovered_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX files_by_state ON files (target, state);
        INSERT INTO files (target, path, size, mtime_ns, state, discovered_at, updated_at)
            VALUES ('reports', 'waiting.csv', 3, 1, 'pending', 0, 0);
        PRAGMA user_version=1;
        """
    )
    old.close()

    journal = Journal.open(journal_path)
    try:
        [record] = journal.unfinished("reports")
        journal.step_started(record.id, 0, "plan", T0)
        assert ("waiting.csv", "plan") == (record.path, journal.get(record.id).plan)
    finally:
        journal.close()


def test_a_new_version_of_a_waiting_file_gets_the_full_number_of_attempts(journal: Journal) -> None:
    """Attempts spent on the old content are not charged to the new one."""
    record = admitted(journal)
    journal.retry_later(record.id, "503", 503, T0 + 1)
    updated = journal.admit("reports", record.path, record.size + 1, record.mtime_ns + 1, T0 + 2)
    assert updated is not None
    assert (0, None) == (updated.attempts, updated.last_error)
