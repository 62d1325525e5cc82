"""One delivery: the claimed file opened once, checked against its version, sent through respx."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import respx

from tests.helpers import FakeClock
from tests.unit.pooling import (
    DEADLINE,
    UPLOAD_URL,
    FailingAfterCredential,
    LoginFailingCredential,
    Pool,
    PoolOptions,
    RefusingFolder,
    admitted_claim,
    build_pool,
    client,
    drop,
    identity_of,
    target_settings,
)
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.drop_folder import DropFolder
from uploader_daemon.errors import LoginFailedError, TransientDeliveryError
from uploader_daemon.journal import FileState
from uploader_daemon.pool.execution import Ending, Execution

CONTENT = b"id,name\n1,alpha\n2,beta\n"


def run(
    target: TargetSettings,
    scenario: Callable[[Pool, respx.MockRouter], Awaitable[None]],
    options: PoolOptions | None = None,
) -> None:
    async def main() -> None:
        async with client() as http:
            pool = build_pool(target, http, options)
            with respx.mock(assert_all_called=False) as router:
                await asyncio.wait_for(scenario(pool, router), DEADLINE)
            await pool.backend.close()

    asyncio.run(main())


def test_a_file_is_delivered_with_the_credential_and_its_content(tmp_path: Path) -> None:
    """DELIVERED, the version sent is the one admitted, and the journal says delivered."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        route = router.post(UPLOAD_URL).respond(201, json={"id": 1})
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        attempt = await pool.execution.run(claim)
        assert Ending.DELIVERED == attempt.ending
        assert identity_of(path) == attempt.sent
        assert attempt.error is None
        assert attempt.seconds is not None
        (call,) = route.calls
        assert "Bearer token-1" == call.request.headers["Authorization"]
        assert CONTENT in call.request.content
        assert b'filename="a.csv"' in call.request.content
        assert FileState.DELIVERED == (await pool.backend.get(claim.record_id)).state

    run(target, scenario)


def test_a_template_using_the_sha256_gets_the_digest_of_the_content(tmp_path: Path) -> None:
    """``{file.sha256}`` makes the delivery hash the open file first."""
    target = target_settings(tmp_path, upload='{type: multipart, fields: {checksum: "{file.sha256}"}}')
    drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        route = router.post(UPLOAD_URL).respond(200)
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        assert Ending.DELIVERED == (await pool.execution.run(claim)).ending
        assert hashlib.sha256(CONTENT).hexdigest().encode() in route.calls.last.request.content

    run(target, scenario)


def test_a_file_rewritten_after_admission_is_not_sent_but_settles_again(tmp_path: Path) -> None:
    """CHANGED_BEFORE: the version on disk is not the one found ready; nothing goes out."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        route = router.post(UPLOAD_URL).respond(200)
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        path.write_bytes(CONTENT + b"3,gamma\n")
        assert Ending.CHANGED_BEFORE == (await pool.execution.run(claim)).ending
        assert 0 == route.call_count

    run(target, scenario)


def test_a_file_written_to_while_its_request_is_in_flight_ended_changed_during(tmp_path: Path) -> None:
    """CHANGED_DURING: it went out, but the descriptor's file moved on meanwhile."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    def append_while_in_flight(request: httpx.Request) -> httpx.Response:
        with path.open("ab") as handle:
            handle.write(b"3,gamma\n")
        return httpx.Response(200)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        router.post(UPLOAD_URL).mock(side_effect=append_while_in_flight)
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        sent_version = claim.record.identity
        attempt = await pool.execution.run(claim)
        assert Ending.CHANGED_DURING == attempt.ending
        assert sent_version == attempt.sent
        assert CONTENT + b"3,gamma\n" == path.read_bytes()

    run(target, scenario)


def test_a_file_removed_before_delivery_vanished(tmp_path: Path) -> None:
    """VANISHED: nothing to open, nothing sent."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        route = router.post(UPLOAD_URL).respond(200)
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        path.unlink()
        assert Ending.VANISHED == (await pool.execution.run(claim)).ending
        assert 0 == route.call_count

    run(target, scenario)


@pytest.mark.parametrize("swapped", ["the file", "its folder"])
def test_a_file_or_folder_swapped_for_a_symlink_is_not_followed(tmp_path: Path, swapped: str) -> None:
    """SYMLINK: a path that leads through a symlink is never opened."""
    target = target_settings(tmp_path, extra="recursive: true")
    drop(target, "sub/a.csv", CONTENT)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "a.csv").write_bytes(CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        route = router.post(UPLOAD_URL).respond(200)
        claim = await admitted_claim(pool.backend, target, "sub/a.csv", pool.clock.now())
        if swapped == "the file":
            (target.folder / "sub" / "a.csv").unlink()
            (target.folder / "sub" / "a.csv").symlink_to(outside / "sub" / "a.csv")
        else:
            (target.folder / "sub" / "a.csv").unlink()
            (target.folder / "sub").rmdir()
            (target.folder / "sub").symlink_to(outside / "sub")
        assert Ending.SYMLINK == (await pool.execution.run(claim)).ending
        assert 0 == route.call_count

    run(target, scenario)


def test_a_file_replaced_by_a_fifo_is_no_longer_regular(tmp_path: Path) -> None:
    """NOT_REGULAR: opened without blocking, seen to be a pipe, closed again."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        path.unlink()
        os.mkfifo(path)
        assert Ending.NOT_REGULAR == (await pool.execution.run(claim)).ending

    run(target, scenario)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_file_with_mode_000_is_unreadable(tmp_path: Path) -> None:
    """UNREADABLE: the daemon's user may not open it."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        path.chmod(0)
        assert Ending.UNREADABLE == (await pool.execution.run(claim)).ending

    run(target, scenario)


def execution_with(pool: Pool, folder: DropFolder) -> Execution:
    return Execution(
        target=pool.target,
        delivery=pool.delivery,
        folder=folder,
        client=pool.client,
        auth=pool.auth,
        credential=pool.credential,
        clock=pool.clock,
    )


def test_a_file_the_daemon_may_not_open_is_unreadable(tmp_path: Path) -> None:
    """UNREADABLE for EACCES (a PermissionError), whoever the test runs as."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        execution = execution_with(pool, RefusingFolder(target, errno.EACCES))
        assert Ending.UNREADABLE == (await execution.run(claim)).ending

    run(target, scenario)


def test_an_unexpected_error_opening_the_file_is_raised(tmp_path: Path) -> None:
    """EIO is no ending the pool knows: it reaches the worker's internal-error recovery."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        execution = execution_with(pool, RefusingFolder(target, errno.EIO))
        with pytest.raises(OSError, match="Input/output error"):
            await execution.run(claim)

    run(target, scenario)


def test_a_file_waits_for_a_login_that_fails_and_nothing_is_sent(tmp_path: Path) -> None:
    """WAITING_FOR_LOGIN before anything went out: the error carries the login backoff."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)
    clock = FakeClock()
    credential = LoginFailingCredential(clock, failures=1, delay=30.0)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        route = router.post(UPLOAD_URL).respond(200)
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        attempt = await pool.execution.run(claim)
        assert Ending.WAITING_FOR_LOGIN == attempt.ending
        assert isinstance(attempt.error, LoginFailedError)
        assert clock.monotonic() + 30.0 == attempt.error.retry_at
        assert attempt.sent is None
        assert 0 == route.call_count

    run(target, scenario, PoolOptions(credential=credential))


def test_a_login_lost_in_the_middle_of_a_delivery_also_waits_for_login(tmp_path: Path) -> None:
    """The step's own login fails after the pre-check passed: the version was about to go."""
    target = target_settings(tmp_path)
    path = drop(target, "a.csv", CONTENT)
    credential = FailingAfterCredential(FakeClock(), good=1)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        route = router.post(UPLOAD_URL).respond(200)
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        attempt = await pool.execution.run(claim)
        assert Ending.WAITING_FOR_LOGIN == attempt.ending
        assert identity_of(path) == attempt.sent
        assert 0 == route.call_count
        record = await pool.backend.get(claim.record_id)
        assert (0, None) == (record.next_step, record.step_in_flight)  # the step may go again

    run(target, scenario, PoolOptions(credential=credential))


def test_a_server_error_ends_the_attempt_as_failed_with_the_status(tmp_path: Path) -> None:
    """FAILED carries the transient error; deciding on a retry is the outcomes' job."""
    target = target_settings(tmp_path)
    drop(target, "a.csv", CONTENT)

    async def scenario(pool: Pool, router: respx.MockRouter) -> None:
        router.post(UPLOAD_URL).respond(503, text="maintenance")
        claim = await admitted_claim(pool.backend, target, "a.csv", pool.clock.now())
        attempt = await pool.execution.run(claim)
        assert Ending.FAILED == attempt.ending
        assert isinstance(attempt.error, TransientDeliveryError)
        assert 503 == attempt.error.status
        assert "upload" == attempt.error.step

    run(target, scenario)
