"""Filing what happened: after_upload, retries with backoff, parking in failed_dir."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import FakeClock
from tests.unit.pooling import (
    DEADLINE,
    OWNER,
    TOKEN,
    Logs,
    admitted_claim,
    drop,
    events_named,
    identity_of,
    target_settings,
)
from uploader_daemon.clock import iso_utc
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.errors import AuthRejectedError, PermanentDeliveryError, TransientDeliveryError
from uploader_daemon.journal import Claim, Disposition, FileState, SqliteJournal
from uploader_daemon.pool.outcomes import Outcomes, Verdict
from uploader_daemon.redaction import Redactor

CONTENT = b"id,name\n1,alpha\n"


class Parts:
    def __init__(self, target: TargetSettings) -> None:
        self.target = target
        self.journal = SqliteJournal.open(":memory:")
        self.clock = FakeClock(1_800_000_000.0)
        self.outcomes = Outcomes(target, self.journal, self.clock, Redactor([TOKEN]))

    async def delivered(self, name: str) -> Claim:
        """A claim on ``name`` whose steps all succeeded (the journal says delivered)."""
        claim = await admitted_claim(self.journal, self.target, name, self.clock.now())
        await self.journal.delivered(claim, self.clock.now())
        return claim

    async def claimed(self, name: str) -> Claim:
        record = await self.journal.records(self.target.name)
        existing = [row for row in record if row.path == name and row.state is FileState.PENDING]
        if existing:
            claim = await self.journal.claim(existing[0].id, OWNER, self.clock.now())
            assert claim is not None
            return claim
        return await admitted_claim(self.journal, self.target, name, self.clock.now())


def run(target: TargetSettings, scenario: Callable[[Parts], Awaitable[None]]) -> Logs:
    """Run ``scenario`` with outcomes built inside a log capture; returns the captured events."""

    async def main() -> None:
        parts = Parts(target)
        try:
            await asyncio.wait_for(scenario(parts), DEADLINE)
        finally:
            await parts.journal.close()

    with capture_logs() as logs:
        asyncio.run(main())
    return logs


# --- delivered -------------------------------------------------------------------------


def test_a_delivered_file_is_archived_under_its_sub_folder(tmp_path: Path) -> None:
    """archive: moved with its name and sub-folder; the journal says done, archived, and where."""
    target = target_settings(tmp_path, extra="recursive: true")
    drop(target, "sub/a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.delivered("sub/a.csv")
        assert Verdict.SETTLED == await parts.outcomes.file_away(claim, seconds=0.25)
        record = await parts.journal.get(claim.record_id)
        archived = tmp_path / "sent" / "sub" / "a.csv"
        assert (FileState.DONE, Disposition.ARCHIVED, str(archived)) == (
            record.state,
            record.disposition,
            record.destination,
        )
        assert CONTENT == archived.read_bytes()
        assert not (target.folder / "sub" / "a.csv").exists()

    logs = run(target, scenario)
    (delivered,) = events_named(logs, "file_delivered")
    assert ("archive", 0.25) == (delivered["after_upload"], delivered["seconds"])


def test_a_delivered_file_is_deleted_with_after_upload_delete(tmp_path: Path) -> None:
    """delete: gone from the drop folder; the journal says deleted."""
    target = target_settings(tmp_path, after_upload="delete")
    path = drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.delivered("a.csv")
        assert Verdict.SETTLED == await parts.outcomes.file_away(claim)
        assert Disposition.DELETED == (await parts.journal.get(claim.record_id)).disposition
        assert not path.exists()

    run(target, scenario)


def test_a_kept_file_stays_and_is_never_admitted_again_in_that_version(tmp_path: Path) -> None:
    """keep: the file stays where it is and the journal refuses this version from now on."""
    target = target_settings(tmp_path, after_upload="keep")
    path = drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.delivered("a.csv")
        assert Verdict.SETTLED == await parts.outcomes.file_away(claim)
        assert Disposition.KEPT == (await parts.journal.get(claim.record_id)).disposition
        assert CONTENT == path.read_bytes()
        assert await parts.journal.admit(target.name, "a.csv", identity_of(path), parts.clock.now()) is None

    run(target, scenario)


def test_a_file_replaced_by_a_new_inode_is_not_archived(tmp_path: Path) -> None:
    """Another file at the path (same name, new inode) is a new delivery, left where it is."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.delivered("a.csv")
        replacement = tmp_path / "replacement.csv"
        replacement.write_bytes(CONTENT)  # same size: only the inode tells them apart
        os.utime(replacement, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
        os.replace(replacement, path)
        assert Verdict.REPLACED == await parts.outcomes.file_away(claim)
        record = await parts.journal.get(claim.record_id)
        assert (FileState.DONE, Disposition.REPLACED) == (record.state, record.disposition)
        assert path.exists()
        assert not (tmp_path / "sent" / "a.csv").exists()

    logs = run(target, scenario)
    assert 1 == len(events_named(logs, "file_replaced_after_delivery"))


def test_a_file_gone_before_its_filing_is_recorded_as_vanished(tmp_path: Path) -> None:
    """Someone else removed it after delivery: nothing to move, the delivery stands."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.delivered("a.csv")
        path.unlink()
        assert Verdict.SETTLED == await parts.outcomes.file_away(claim)
        record = await parts.journal.get(claim.record_id)
        assert (FileState.DONE, Disposition.VANISHED) == (record.state, record.disposition)

    run(target, scenario)


def test_an_archive_dir_that_cannot_be_created_is_retried_and_then_filed(tmp_path: Path) -> None:
    """after_upload failing: RETRY_FILING, the journal still says delivered; later it is archived."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    target = target_settings(tmp_path)
    target = target.model_copy(
        update={"after_upload": target.after_upload.model_copy(update={"archive_dir": blocker / "sent"})}
    )
    drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.delivered("a.csv")
        assert Verdict.RETRY_FILING == await parts.outcomes.file_away(claim)
        assert FileState.DELIVERED == (await parts.journal.get(claim.record_id)).state
        blocker.unlink()
        assert Verdict.SETTLED == await parts.outcomes.file_away(claim)
        assert (blocker / "sent" / "a.csv").exists()

    logs = run(target, scenario)
    (failure,) = events_named(logs, "after_upload_failed")
    assert "error" == failure["log_level"]
    assert "the file was delivered and will not be sent again" in failure["hint"]


@pytest.mark.skipif(
    not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
    reason="needs an archive_dir on another filesystem than the drop folder",
)
def test_an_archive_dir_on_another_filesystem_gets_a_copy(tmp_path: Path) -> None:
    """No hard link across filesystems: the file is copied (in a thread) and removed."""
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        target = target_settings(tmp_path)
        target = target.model_copy(
            update={"after_upload": target.after_upload.model_copy(update={"archive_dir": elsewhere})}
        )
        path = drop(target, "a.csv", CONTENT)

        async def scenario(parts: Parts) -> None:
            claim = await parts.delivered("a.csv")
            assert Verdict.SETTLED == await parts.outcomes.file_away(claim)
            assert CONTENT == (elsewhere / "a.csv").read_bytes()
            assert not path.exists()

        run(target, scenario)
    finally:
        shutil.rmtree(elsewhere)


def test_a_file_written_to_during_its_upload_is_done_as_changed(tmp_path: Path) -> None:
    """That version is finished; the new one is delivered too (a warning says so)."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.delivered("a.csv")
        await parts.outcomes.changed_during_upload(claim)
        record = await parts.journal.get(claim.record_id)
        assert (FileState.DONE, Disposition.CHANGED) == (record.state, record.disposition)

    logs = run(target, scenario)
    assert "warning" == events_named(logs, "file_changed_during_upload")[0]["log_level"]


# --- failed ----------------------------------------------------------------------------


def test_a_transient_failure_is_retried_after_a_backoff_counted_in_the_journal(tmp_path: Path) -> None:
    """RETRY with a delay between backoff/2 and backoff; the attempt and its status recorded."""
    target = target_settings(tmp_path, attempts=3, backoff="1s", max_backoff="10s")
    drop(target, "a.csv", CONTENT)
    delays: list[float] = []

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        error = TransientDeliveryError("step upload: HTTP 503", step="upload", status=503)
        after = await parts.outcomes.failed(claim, error, None)
        assert Verdict.RETRY == after.verdict
        delays.append(after.delay)
        record = await parts.journal.get(claim.record_id)
        assert (FileState.PENDING, 1, 503, "step upload: HTTP 503") == (
            record.state,
            record.attempts,
            record.last_status,
            record.last_error,
        )

    logs = run(target, scenario)
    assert 0.5 <= delays[0] <= 1.0
    (failure,) = events_named(logs, "delivery_failed")
    assert ("warning", 1, 2) == (failure["log_level"], failure["attempt"], failure["attempts_left"])


def test_a_retry_after_from_the_server_is_a_floor_for_the_backoff(tmp_path: Path) -> None:
    """A 429 with Retry-After: 30 waits 30 s even though max_backoff is 100 ms."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        error = TransientDeliveryError("slow down", step="upload", status=429, retry_after=30.0)
        assert 30.0 == (await parts.outcomes.failed(claim, error, None)).delay

    run(target, scenario)


def test_the_last_attempt_parks_the_file_with_a_redacted_error_report(tmp_path: Path) -> None:
    """After retry.attempts the file moves to failed_dir with its .error.json; no token in it."""
    target = target_settings(tmp_path, attempts=3)
    drop(target, "a.csv", CONTENT)
    echoed = f"proxy says: Authorization: Bearer {TOKEN} was not accepted upstream"
    verdicts: list[Verdict] = []

    async def scenario(parts: Parts) -> None:
        for _ in range(3):
            claim = await parts.claimed("a.csv")
            error = TransientDeliveryError(
                f"step upload: HTTP 502 ({TOKEN})", step="upload", status=502, body_excerpt=echoed
            )
            verdicts.append((await parts.outcomes.failed(claim, error, None)).verdict)
        record = await parts.journal.get(claim.record_id)
        parked = tmp_path / "failed" / "a.csv"
        assert (FileState.FAILED, Disposition.PARKED, str(parked), 3) == (
            record.state,
            record.disposition,
            record.destination,
            record.attempts,
        )
        assert TOKEN not in (record.last_error or "")
        assert CONTENT == parked.read_bytes()
        assert not (target.folder / "a.csv").exists()

    logs = run(target, scenario)
    assert [Verdict.RETRY, Verdict.RETRY, Verdict.SETTLED] == verdicts
    report = json.loads((tmp_path / "failed" / "a.csv.error.json").read_text())
    assert TOKEN not in json.dumps(report)
    assert {
        "target": "docs",
        "file": "a.csv",
        "failed_at": iso_utc(1_800_000_000.0),
        "attempts": 3,
        "step": "upload",
        "status": 502,
        "error": "step upload: HTTP 502 ([REDACTED])",
        "body_excerpt": "proxy says: Authorization: Bearer [REDACTED] was not accepted upstream",
        "details": None,
    } == report
    (failed,) = events_named(logs, "file_failed")
    assert ("error", str(tmp_path / "failed" / "a.csv")) == (failed["log_level"], failed["destination"])


def test_a_permanent_error_parks_the_file_at_once(tmp_path: Path) -> None:
    """A 422 is not retried: parked after one attempt, its details in the report."""
    target = target_settings(tmp_path, attempts=5)
    drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        error = PermanentDeliveryError(
            "step upload: HTTP 422", step="upload", status=422, details={"reason": "bad header"}
        )
        after = await parts.outcomes.failed(claim, error, None)
        assert Verdict.SETTLED == after.verdict
        record = await parts.journal.get(claim.record_id)
        assert (Disposition.PARKED, 1) == (record.disposition, record.attempts)

    run(target, scenario)
    report = json.loads((tmp_path / "failed" / "a.csv.error.json").read_text())
    assert ({"reason": "bad header"}, 1) == (report["details"], report["attempts"])


def test_an_unusable_failed_dir_leaves_the_file_in_place_never_to_be_sent_again(tmp_path: Path) -> None:
    """failed_dir cannot be created: LEFT_IN_PLACE, logged with a hint; this version is settled."""
    target = target_settings(tmp_path)
    (tmp_path / "failed").write_text("a file where failed_dir should be")
    path = drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        error = PermanentDeliveryError("step upload: HTTP 400", step="upload", status=400)
        assert Verdict.SETTLED == (await parts.outcomes.failed(claim, error, None)).verdict
        record = await parts.journal.get(claim.record_id)
        assert (FileState.FAILED, Disposition.LEFT_IN_PLACE, None) == (
            record.state,
            record.disposition,
            record.destination,
        )
        assert path.exists()
        assert await parts.journal.is_settled(target.name, "a.csv", identity_of(path))

    logs = run(target, scenario)
    (unusable,) = events_named(logs, "failed_dir_unusable")
    assert "the file stays in the drop folder and is retried only if it changes" in unusable["hint"]


def test_a_401_is_logged_as_unauthorized_at_error_level_and_retried(tmp_path: Path) -> None:
    """The token was refused: one error line (upload_unauthorized), no delivery_failed warning."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        error = AuthRejectedError("step upload: 401", step="upload", status=401)
        assert Verdict.RETRY == (await parts.outcomes.failed(claim, error, None)).verdict
        assert 1 == (await parts.journal.get(claim.record_id)).attempts

    logs = run(target, scenario)
    (unauthorized,) = events_named(logs, "upload_unauthorized")
    assert ("error", 401, "upload", 1) == (
        unauthorized["log_level"],
        unauthorized["status"],
        unauthorized["step"],
        unauthorized["attempt"],
    )
    assert [] == events_named(logs, "delivery_failed")


def test_giving_up_on_a_file_replaced_meanwhile_leaves_the_new_version(tmp_path: Path) -> None:
    """The path holds a newer version: the old one is failed as replaced, the new one goes."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        path.write_bytes(CONTENT + b"2,beta\n")
        error = PermanentDeliveryError("step upload: HTTP 400", step="upload", status=400)
        assert Verdict.REPLACED == (await parts.outcomes.failed(claim, error, None)).verdict
        record = await parts.journal.get(claim.record_id)
        assert (FileState.FAILED, Disposition.REPLACED) == (record.state, record.disposition)
        assert path.exists()

    logs = run(target, scenario)
    assert "warning" == events_named(logs, "file_failed")[0]["log_level"]


def test_giving_up_on_a_file_that_vanished_records_it_as_vanished(tmp_path: Path) -> None:
    """Nothing to park: the journal says failed, vanished."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        path.unlink()
        error = PermanentDeliveryError("step upload: HTTP 400", step="upload", status=400)
        assert Verdict.SETTLED == (await parts.outcomes.failed(claim, error, None)).verdict
        assert Disposition.VANISHED == (await parts.journal.get(claim.record_id)).disposition

    run(target, scenario)


def test_a_file_that_left_the_drop_folder_is_forgotten(tmp_path: Path) -> None:
    """forget(): the journal says gone, and the given event is logged with its reason."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)

    async def scenario(parts: Parts) -> None:
        claim = await parts.claimed("a.csv")
        await parts.outcomes.forget(claim, "file_vanished", "removed before delivery")
        record = await parts.journal.get(claim.record_id)
        assert (FileState.GONE, Disposition.VANISHED) == (record.state, record.disposition)

    logs = run(target, scenario)
    assert "removed before delivery" == events_named(logs, "file_vanished")[0]["reason"]
