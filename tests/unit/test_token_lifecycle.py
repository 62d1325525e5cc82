"""The token lifecycle of flow T/C: login, keep, restore, renew while in use, discard on 401.

``ManagedTokenCredential`` is built the way the daemon builds it (``build_credential`` from
a parsed config) and driven with a fake clock; the token API is mocked at the HTTP edge.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import stat
import textwrap
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import structlog
from structlog.testing import capture_logs

from tests.helpers import FakeClock, RecordingTimer, load, tls, unsigned_jwt
from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth import (
    AuthHeaders,
    ManagedTokenCredential,
    StaticCredential,
    build_credential,
)
from uploader_daemon.auth.grant import TokenGrant
from uploader_daemon.auth.store import TokenStore
from uploader_daemon.config.auth import RenewalSettings
from uploader_daemon.config.schema import RetrySettings, TargetSettings
from uploader_daemon.errors import LoginFailedError, TokenRequestError
from uploader_daemon.logs import configure_logging
from uploader_daemon.redaction import Redactor
from uploader_daemon.secrets import secret_values

BASE_URL = "https://api.example.test"
PASSWORD = "pa55-w0rd-for-tests"
START = 1_700_000_000.0
LIFETIME = 3600.0
BEFORE_EXPIRY = 300.0
ACTIVE_WITHIN = 1800.0

CONFIG = """
    state_dir: {state}
    targets:
      - name: reports
        folder: {drop}
        after_upload: {{action: delete}}
        failed_dir: {failed}
        retry: {{attempts: 5, backoff: 10s, max_backoff: 1m}}
        api: {{base_url: "{base_url}"}}
        auth:
    {auth}
        upload: {{type: multipart, path: /api/envio, file_field: file}}
"""

# Flow T: login, refresh endpoint, renewal only near expiry and while in use.
TOKEN_AUTH = """
    type: token
    login:
      username: uploader
      password: {env: UPLOADER_PASSWORD}
    refresh:
      path: /auth/tokenRefresh
      check_every: 1m
      before_expiry: 5m
      active_within: 30m
    expiry_margin: 10s
"""

# Flow C: a JWT whose exp is the expiry, and no refresh endpoint (renewal is a new login).
JWT_AUTH = """
    type: token
    login:
      path: /api/auth/login
      username: uploader
      password: {env: UPLOADER_PASSWORD}
      token_field: token
    refresh:
      check_every: 1m
      before_expiry: 5m
      active_within: 30m
"""


class TokenApi:
    """The token API of flow T at the HTTP edge: each login and refresh issues a new token."""

    def __init__(self, router: respx.MockRouter, clock: FakeClock) -> None:
        self.clock = clock
        self.lifetime: object = LIFETIME
        self.login_sent_at: list[float] = []
        self.refreshes = 0
        self.login = router.post("/auth/login").mock(side_effect=self._login)
        self.refresh = router.get("/auth/tokenRefresh").mock(side_effect=self._refresh)

    def _login(self, request: httpx.Request) -> httpx.Response:
        self.login_sent_at.append(self.clock.now())
        return httpx.Response(
            200, json={"access_token": f"login-{len(self.login_sent_at)}", "expires_in": self.lifetime}
        )

    def _refresh(self, request: httpx.Request) -> httpx.Response:
        self.refreshes += 1
        return httpx.Response(
            200, json={"access_token": f"refresh-{self.refreshes}", "expires_in": self.lifetime}
        )

    @property
    def refresh_tokens_sent(self) -> list[str]:
        return [call.request.headers["Authorization"] for call in self.refresh.calls]


class Rig:
    """What the daemon wires around one target's credential, with a fake clock."""

    def __init__(self, tmp_path: Path, client: httpx.AsyncClient, clock: FakeClock) -> None:
        self.tmp_path = tmp_path
        self.client = client
        self.clock = clock
        # Whether files are waiting: what the target's schedule answers in the daemon.
        self.files_waiting: Callable[[], bool] = lambda: False
        self.activity = ApiActivity(clock, lambda: self.files_waiting())
        self.tokens_dir = tmp_path / "state" / "tokens"
        self.tokens_dir.mkdir(parents=True)
        (tmp_path / "drop").mkdir()
        self.redactor = Redactor([PASSWORD])

    def target(self, auth: str = TOKEN_AUTH, base_url: str = BASE_URL) -> TargetSettings:
        config = load(
            CONFIG,
            {"UPLOADER_PASSWORD": PASSWORD},
            state=self.tmp_path / "state",
            drop=self.tmp_path / "drop",
            failed=self.tmp_path / "failed",
            base_url=base_url,
            auth=textwrap.indent(textwrap.dedent(auth).strip(), " " * 6),
        )
        return config.targets[0]

    def credential(
        self, auth: str = TOKEN_AUTH, base_url: str = BASE_URL, timer: RecordingTimer | None = None
    ) -> ManagedTokenCredential:
        """A new credential object, as after a (re)start of the daemon."""
        credential = build_credential(
            self.target(auth, base_url),
            client=self.client,
            clock=self.clock,
            activity=self.activity,
            tokens_dir=self.tokens_dir,
            redactor=self.redactor,
            timer=timer,
        )
        assert isinstance(credential, ManagedTokenCredential)
        return credential

    @property
    def token_file(self) -> Path:
        return self.tokens_dir / "reports.json"


@pytest.fixture
def clock() -> FakeClock:
    """The fake wall clock every part of the rig reads."""
    return FakeClock(START)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """Every request the credential sends must match a route of the token API."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def api(router: respx.MockRouter, clock: FakeClock) -> TokenApi:
    """A token API whose logins and refreshes succeed, each with a new token."""
    return TokenApi(router, clock)


@pytest.fixture
def rig(tmp_path: Path, clock: FakeClock) -> Iterator[Rig]:
    """Folders, activity tracker, redactor and HTTP client for one target."""
    client = httpx.AsyncClient(verify=tls())
    yield Rig(tmp_path, client, clock)
    asyncio.run(client.aclose())


def bearer(headers: AuthHeaders) -> str:
    return headers.headers["Authorization"]


def headers_now(credential: ManagedTokenCredential) -> AuthHeaders:
    return asyncio.run(credential.headers())


def renew(credential: ManagedTokenCredential) -> None:
    asyncio.run(credential.renew_if_due())


def login_failure(credential: ManagedTokenCredential) -> LoginFailedError:
    with pytest.raises(LoginFailedError) as caught:
        headers_now(credential)
    return caught.value


def events_named(events: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [event for event in events if event["event"] == name]


def near_expiry(rig: Rig, credential: ManagedTokenCredential, left: float = 240.0) -> None:
    """Move the clock to ``left`` seconds before the current token expires."""
    assert credential.expires_at is not None
    rig.clock.advance(credential.expires_at - left - rig.clock.now())


# --- login and keeping the token -------------------------------------------------------


def test_the_first_request_logs_in_once_and_later_requests_reuse_the_token(rig: Rig, api: TokenApi) -> None:
    """One login, then the same ``Bearer`` token for every request inside its lifetime."""
    credential = rig.credential()

    first = headers_now(credential)
    rig.clock.advance(1800)
    second = headers_now(credential)

    assert 1 == api.login.call_count
    assert {"username": "uploader", "password": PASSWORD} == json.loads(api.login.calls.last.request.content)
    assert "Bearer login-1" == bearer(first) == bearer(second)
    assert first.generation == second.generation


def test_the_expiry_is_measured_from_when_the_login_was_sent(
    rig: Rig, router: respx.MockRouter, clock: FakeClock
) -> None:
    """A slow login answer shortens the token's life in the daemon's eyes, never lengthens it."""
    sent_at: list[float] = []

    def slow_login(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.now())
        clock.advance(40)
        return httpx.Response(200, json={"access_token": "slow-token", "expires_in": 3600})

    router.post("/auth/login").mock(side_effect=slow_login)
    credential = rig.credential()

    headers_now(credential)

    assert [START] == sent_at
    assert sent_at[0] + 3600 == credential.expires_at


def test_the_token_is_saved_with_mode_0600_in_the_tokens_dir(rig: Rig, api: TokenApi) -> None:
    """After a login the token file holds the token and its expiry, readable by the owner only."""
    credential = rig.credential()

    headers_now(credential)

    assert 0o600 == stat.S_IMODE(rig.token_file.stat().st_mode)
    saved = json.loads(rig.token_file.read_text(encoding="utf-8"))
    assert ("login-1", START + LIFETIME) == (saved["token"], saved["expires_at"])
    assert ["reports.json"] == [path.name for path in rig.tokens_dir.iterdir()]


def test_a_restart_inside_the_lifetime_reuses_the_saved_token_without_logging_in(
    rig: Rig, api: TokenApi
) -> None:
    """A new credential object restores the stored token; no login request is sent."""
    headers_now(rig.credential())
    rig.clock.advance(1200)

    restarted = rig.credential()
    restarted.restore()
    headers = headers_now(restarted)

    assert 1 == api.login.call_count
    assert "Bearer login-1" == bearer(headers)
    assert START + LIFETIME == restarted.expires_at


def test_a_token_another_process_saved_is_taken_up_instead_of_logging_in_again(
    rig: Rig, api: TokenApi
) -> None:
    """`uploader-daemon upload` logged in beside the running daemon: the daemon uses that token."""
    running = rig.credential()  # started before the other process logged in: no token yet
    headers_now(rig.credential())  # the other process (same token store) logs in

    headers = headers_now(running)

    assert 1 == api.login.call_count
    assert "Bearer login-1" == bearer(headers)


def test_a_token_the_api_refused_is_not_taken_up_again_from_the_store(rig: Rig, api: TokenApi) -> None:
    """After a 401 the refused token is never restored, even if a copy is still on disk."""
    credential = rig.credential()
    refused = headers_now(credential)
    saved = rig.token_file.read_bytes()
    credential.rejected(refused)
    rig.token_file.write_bytes(saved)  # another process wrote the same token back

    assert "Bearer login-2" == bearer(headers_now(credential))
    assert 2 == api.login.call_count


def test_a_restart_after_the_saved_token_expired_logs_in(rig: Rig, api: TokenApi) -> None:
    """An expired stored token is not restored; the next request logs in."""
    headers_now(rig.credential())
    rig.clock.advance(LIFETIME + 1)

    restarted = rig.credential()
    restarted.restore()

    assert restarted.expires_at is None
    assert "Bearer login-2" == bearer(headers_now(restarted))
    assert 2 == api.login.call_count


@pytest.mark.parametrize(
    ("auth", "base_url"),
    [
        (TOKEN_AUTH.replace("username: uploader", "username: someone-else"), BASE_URL),
        (TOKEN_AUTH, f"{BASE_URL}/v2"),
    ],
    ids=["other-username", "other-base-url"],
)
def test_a_token_saved_for_another_identity_is_not_reused(
    rig: Rig, router: respx.MockRouter, auth: str, base_url: str
) -> None:
    """After the admin changes the account or the API, the restarted daemon logs in afresh."""
    answer = {"access_token": "fresh", "expires_in": 3600}
    login = router.post(url__regex=r"/auth/login$").respond(json=answer)
    headers_now(rig.credential())

    restarted = rig.credential(auth, base_url)
    restarted.restore()

    assert restarted.expires_at is None
    headers_now(restarted)
    assert 2 == login.call_count


def test_a_corrupt_token_file_means_a_login(rig: Rig, api: TokenApi) -> None:
    """A damaged file is ignored (and reported), never a crash."""
    rig.token_file.write_text('{"identity": "tok', encoding="utf-8")
    credential = rig.credential()

    with capture_logs() as events:
        credential.restore()
    headers = headers_now(credential)

    assert ["token_store_unreadable"] == [event["event"] for event in events]
    assert "Bearer login-1" == bearer(headers)


def test_new_tokens_are_registered_with_the_redactor(rig: Rig, api: TokenApi) -> None:
    """A token is a secret from the moment it arrives: any log line quoting it is scrubbed."""
    headers_now(rig.credential())

    assert "sent with [REDACTED]" == rig.redactor.scrub("sent with login-1")


# --- the scheduled renewal check --------------------------------------------------------


def test_renewal_refreshes_with_the_current_token_when_due_and_active(rig: Rig, api: TokenApi) -> None:
    """Less than ``before_expiry`` left and an upload within ``active_within``: one refresh."""
    credential = rig.credential()
    headers_now(credential)
    near_expiry(rig, credential)
    rig.activity.touch()
    refreshed_at = rig.clock.now()

    renew(credential)

    assert ["Bearer login-1"] == api.refresh_tokens_sent
    assert 1 == api.login.call_count
    assert "Bearer refresh-1" == bearer(headers_now(credential))
    assert refreshed_at + LIFETIME == credential.expires_at
    assert "refresh-1" == json.loads(rig.token_file.read_text(encoding="utf-8"))["token"]


def test_waiting_files_count_as_activity(rig: Rig, api: TokenApi) -> None:
    """No upload yet, but files are queued: the token is kept fresh for them."""
    credential = rig.credential()
    headers_now(credential)
    rig.files_waiting = lambda: True
    near_expiry(rig, credential)

    renew(credential)

    assert 1 == api.refresh.call_count


def test_renewal_does_nothing_while_the_token_has_time_left(rig: Rig, api: TokenApi) -> None:
    """More than ``before_expiry`` left: no request, however busy the API is."""
    credential = rig.credential()
    headers_now(credential)
    rig.activity.touch()
    near_expiry(rig, credential, left=BEFORE_EXPIRY + 1)

    renew(credential)

    assert (1, 0) == (api.login.call_count, api.refresh.call_count)
    assert "Bearer login-1" == bearer(headers_now(credential))


def test_renewal_is_skipped_while_idle_and_the_next_request_logs_in_again(rig: Rig, api: TokenApi) -> None:
    """An idle daemon lets the token lapse; the next upload logs in with the password."""
    credential = rig.credential()
    headers_now(credential)
    rig.activity.touch()
    near_expiry(rig, credential)
    assert rig.clock.now() - START > ACTIVE_WITHIN

    with capture_logs() as events:
        renew(credential)
    rig.clock.advance(600)
    headers = headers_now(credential)

    assert 0 == api.refresh.call_count
    assert ["idle"] == [event["reason"] for event in events_named(events, "token_renewal_skipped")]
    assert "Bearer login-2" == bearer(headers)


def test_renewal_with_no_token_held_does_nothing(rig: Rig, api: TokenApi) -> None:
    """Nothing to renew before the first upload: the job sends no request."""
    rig.activity.touch()

    renew(rig.credential())

    assert (0, 0) == (api.login.call_count, api.refresh.call_count)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_refresh_falls_back_to_exactly_one_password_login(
    rig: Rig, api: TokenApi, status: int
) -> None:
    """The refresh endpoint no longer accepts the token: log in with the password, once."""
    credential = rig.credential()
    headers_now(credential)
    near_expiry(rig, credential)
    rig.activity.touch()
    api.refresh.mock(return_value=httpx.Response(status))

    renew(credential)

    assert (1, 2) == (api.refresh.call_count, api.login.call_count)
    assert "Bearer login-2" == bearer(headers_now(credential))


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("connection refused"), httpx.Response(500), httpx.Response(503)],
    ids=["connect-error", "500", "503"],
)
def test_a_refresh_that_fails_transiently_keeps_the_token_and_the_next_tick_retries(
    rig: Rig, api: TokenApi, failure: Exception | httpx.Response
) -> None:
    """Network errors and 5xx keep the current token, send no login, and are retried next tick."""
    credential = rig.credential()
    headers_now(credential)
    near_expiry(rig, credential)
    rig.activity.touch()
    second_try = httpx.Response(200, json={"access_token": "second-try", "expires_in": 60})
    api.refresh.side_effect = [failure, second_try]

    with capture_logs() as events:
        renew(credential)
    kept = headers_now(credential)
    rig.clock.advance(60)
    renew(credential)

    assert ["token_refresh_failed"] == [e["event"] for e in events if e["log_level"] in ("warning", "error")]
    assert "Bearer login-1" == bearer(kept)
    assert ["Bearer login-1", "Bearer login-1"] == api.refresh_tokens_sent
    assert 1 == api.login.call_count
    assert "Bearer second-try" == bearer(headers_now(credential))


def test_an_expired_token_with_activity_is_replaced_by_a_login_not_a_refresh(rig: Rig, api: TokenApi) -> None:
    """The expired token is never sent to the refresh endpoint."""
    credential = rig.credential()
    headers_now(credential)
    rig.clock.advance(LIFETIME + 5)
    rig.activity.touch()

    renew(credential)

    assert (0, 2) == (api.refresh.call_count, api.login.call_count)
    assert "Bearer login-2" == bearer(headers_now(credential))


def test_a_token_inside_the_expiry_margin_is_renewed_by_login_not_refresh(rig: Rig, api: TokenApi) -> None:
    """A token within ``expiry_margin`` of its expiry counts as expired for refreshing too."""
    credential = rig.credential()
    headers_now(credential)
    near_expiry(rig, credential, left=5)
    rig.activity.touch()

    renew(credential)

    assert (0, 2) == (api.refresh.call_count, api.login.call_count)


def test_without_a_refresh_path_renewal_is_a_new_login_when_due_and_active(
    rig: Rig, router: respx.MockRouter, clock: FakeClock
) -> None:
    """Flow C: the JWT's ``exp`` is the expiry, and renewal logs in again (only while in use)."""

    def jwt_login(request: httpx.Request) -> httpx.Response:
        token = unsigned_jwt({"sub": "uploader", "exp": int(clock.now()) + 900})
        return httpx.Response(200, json={"message": "Login successful", "token": token, "id": 1})

    login = router.post("/api/auth/login").mock(side_effect=jwt_login)
    credential = rig.credential(JWT_AUTH)
    first = headers_now(credential)
    assert START + 900 == credential.expires_at

    clock.advance(900 - 240)
    renew(credential)  # due, but idle: nothing
    assert 1 == login.call_count

    rig.activity.touch()
    renew(credential)

    assert 2 == login.call_count
    assert clock.now() + 900 == credential.expires_at
    assert bearer(first) != bearer(headers_now(credential))


def test_the_renewal_job_never_raises(rig: Rig, api: TokenApi) -> None:
    """An unexpected error inside the check is logged as ``token_check_failed``; the job returns."""
    credential = rig.credential()
    headers_now(credential)
    near_expiry(rig, credential)
    rig.activity.touch()
    api.refresh.side_effect = RuntimeError("the provider broke in an unforeseen way")

    with capture_logs() as events:
        renew(credential)

    failed = events_named(events, "token_check_failed")
    assert 1 == len(failed)
    assert "RuntimeError" == failed[0]["error_type"]
    assert "Bearer login-1" == bearer(headers_now(credential))


def test_a_failing_files_waiting_callback_does_not_kill_the_job(rig: Rig, api: TokenApi) -> None:
    """Even the activity check failing is contained by the job."""
    credential = rig.credential()
    headers_now(credential)
    near_expiry(rig, credential)

    def broken() -> bool:
        raise OSError("queue unavailable")

    rig.files_waiting = broken

    with capture_logs() as events:
        renew(credential)

    assert ["token_check_failed"] == [e["event"] for e in events if e["log_level"] == "error"]


def test_every_new_token_announces_when_renewal_is_next_due(rig: Rig, api: TokenApi) -> None:
    """The scheduler hook hears ``expires_at - before_expiry`` after login, refresh and restore."""
    announced: list[float] = []
    credential = rig.credential(timer=RecordingTimer(announced))

    headers_now(credential)
    near_expiry(rig, credential)
    rig.activity.touch()
    renew(credential)
    restarted = rig.credential(timer=RecordingTimer(announced))
    restarted.restore()

    refreshed_expiry = rig.clock.now() + LIFETIME
    assert [
        START + LIFETIME - BEFORE_EXPIRY,
        refreshed_expiry - BEFORE_EXPIRY,
        refreshed_expiry - BEFORE_EXPIRY,
    ] == announced


def test_a_before_expiry_longer_than_the_lifetime_renews_at_half_life_not_in_a_loop(
    rig: Rig, api: TokenApi
) -> None:
    """When before_expiry exceeds a token's life, renewal waits for half of it, once per token."""
    long_window = TOKEN_AUTH.replace("before_expiry: 5m", "before_expiry: 2h")
    announced: list[float] = []
    credential = rig.credential(long_window, timer=RecordingTimer(announced))
    rig.activity.touch()

    with capture_logs() as events:
        headers_now(credential)
        renew(credential)  # the tick right after login: not due yet
        rig.clock.advance(LIFETIME / 2)
        renew(credential)  # half-life: due
        renew(credential)  # again at once: the new token is not due

    assert 1 == api.refreshes
    assert [START + LIFETIME / 2, START + LIFETIME / 2 + LIFETIME / 2] == announced
    assert 1 == len(events_named(events, "token_lifetime_shorter_than_before_expiry"))


# --- headers() and expiry -------------------------------------------------------------


def test_headers_never_return_a_token_known_to_be_expired(rig: Rig, api: TokenApi) -> None:
    """Past the expiry, a login happens before any header is handed out."""
    credential = rig.credential()
    old = headers_now(credential)
    rig.clock.advance(LIFETIME + 1)

    new = headers_now(credential)

    assert 2 == api.login.call_count
    assert [START, START + LIFETIME + 1] == api.login_sent_at
    assert ("Bearer login-1", "Bearer login-2") == (bearer(old), bearer(new))
    assert new.generation > old.generation


def test_a_token_within_the_expiry_margin_counts_as_expired(rig: Rig, api: TokenApi) -> None:
    """``expiry_margin: 10s`` covers clock skew: 11 s left is fine, 9 s left means a new login."""
    credential = rig.credential()
    headers_now(credential)

    near_expiry(rig, credential, left=11)
    assert "Bearer login-1" == bearer(headers_now(credential))
    rig.clock.advance(2)
    assert "Bearer login-2" == bearer(headers_now(credential))


def test_the_expiry_margin_never_exceeds_a_tenth_of_the_lifetime(rig: Rig, api: TokenApi) -> None:
    """A 50 s token keeps 45 s of use: the margin is min(10 s, 50 s / 10)."""
    api.lifetime = 50
    credential = rig.credential()
    headers_now(credential)

    rig.clock.advance(44)
    assert "Bearer login-1" == bearer(headers_now(credential))
    rig.clock.advance(2)
    assert "Bearer login-2" == bearer(headers_now(credential))


def test_a_login_that_returns_an_already_expired_token_is_a_failed_login(
    rig: Rig, router: respx.MockRouter, clock: FakeClock
) -> None:
    """A JWT whose ``exp`` is already past (a skewed clock) is never handed out, nor retried at once."""
    stale = unsigned_jwt({"exp": int(START) - 60})
    login = router.post("/api/auth/login").respond(json={"token": stale})
    credential = rig.credential(JWT_AUTH)

    with capture_logs() as events:
        error = login_failure(credential)
    again = login_failure(credential)

    assert 1 == login.call_count
    assert error.retry_at == again.retry_at
    assert clock.now() < error.retry_at
    assert 1 == len(events_named(events, "login_failed"))
    assert "expired" in str(error)


# --- single flight ------------------------------------------------------------------------


def test_concurrent_first_requests_share_one_login(rig: Rig, router: respx.MockRouter) -> None:
    """Twenty uploads start together with no token: exactly one login request is sent."""

    async def scenario() -> list[AuthHeaders]:
        login_started = asyncio.Event()
        release = asyncio.Event()

        async def gated_login(request: httpx.Request) -> httpx.Response:
            login_started.set()
            await release.wait()
            return httpx.Response(200, json={"access_token": "shared", "expires_in": 3600})

        route = router.post("/auth/login").mock(side_effect=gated_login)
        credential = rig.credential()
        tasks = [asyncio.create_task(credential.headers()) for _ in range(20)]
        await login_started.wait()
        assert not any(task.done() for task in tasks)
        release.set()
        results = await asyncio.gather(*tasks)
        assert 1 == route.call_count
        return results

    results = asyncio.run(scenario())

    assert {"Bearer shared"} == {bearer(headers) for headers in results}


def test_concurrent_requests_share_one_failed_login(rig: Rig, router: respx.MockRouter) -> None:
    """When the shared login fails, the waiting uploads fail too instead of each trying again."""

    async def scenario() -> list[BaseException | AuthHeaders]:
        login_started = asyncio.Event()
        release = asyncio.Event()

        async def gated_failure(request: httpx.Request) -> httpx.Response:
            login_started.set()
            await release.wait()
            return httpx.Response(503)

        route = router.post("/auth/login").mock(side_effect=gated_failure)
        credential = rig.credential()
        tasks = [asyncio.create_task(credential.headers()) for _ in range(20)]
        await login_started.wait()
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert 1 == route.call_count
        return results

    results = asyncio.run(scenario())

    assert all(isinstance(result, LoginFailedError) for result in results)
    assert 1 == len({result.retry_at for result in results if isinstance(result, LoginFailedError)})


def test_concurrent_renewal_and_requests_refresh_at_most_once(
    rig: Rig, api: TokenApi, router: respx.MockRouter
) -> None:
    """Two scheduler ticks and uploads racing near expiry: one refresh, no login."""
    credential = rig.credential()
    headers_now(credential)
    near_expiry(rig, credential)
    rig.activity.touch()

    async def scenario() -> list[object]:
        refresh_started = asyncio.Event()
        release = asyncio.Event()

        async def gated_refresh(request: httpx.Request) -> httpx.Response:
            refresh_started.set()
            await release.wait()
            return httpx.Response(200, json={"access_token": "refreshed", "expires_in": 3600})

        api.refresh.side_effect = gated_refresh
        ticks = [asyncio.create_task(credential.renew_if_due()) for _ in range(2)]
        uploads = [asyncio.create_task(credential.headers()) for _ in range(2)]
        await refresh_started.wait()
        assert not any(task.done() for task in ticks)
        release.set()
        return await asyncio.gather(*ticks, *uploads)

    results = asyncio.run(scenario())

    assert (1, 1) == (api.refresh.call_count, api.login.call_count)
    assert ["Bearer login-1", "Bearer login-1"] == [bearer(h) for h in results if isinstance(h, AuthHeaders)]
    assert "Bearer refreshed" == bearer(headers_now(credential))


def test_concurrent_requests_after_expiry_share_one_login(rig: Rig, api: TokenApi) -> None:
    """When the held token has expired, racing uploads still cause a single new login."""
    credential = rig.credential()
    headers_now(credential)
    rig.clock.advance(LIFETIME + 1)

    async def scenario() -> list[AuthHeaders]:
        return await asyncio.gather(*(credential.headers() for _ in range(10)))

    results = asyncio.run(scenario())

    assert 2 == api.login.call_count
    assert {"Bearer login-2"} == {bearer(headers) for headers in results}


# --- failed logins and backoff ------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (httpx.Response(401, json={"error": "invalid credentials"}), 401),
        (httpx.Response(500, text="Internal Server Error"), 500),
        (httpx.ConnectError("connection refused"), None),
        (httpx.Response(200, json={"message": "ok"}), 200),
        (httpx.Response(200, html="<html><body>Please sign in</body></html>"), 200),
        (httpx.Response(200, json={"access_token": "t0k3n", "expires_in": -5}), 200),
        (httpx.Response(200, json={"access_token": "t0k3n", "expires_in": "an hour"}), 200),
    ],
    ids=["401", "500", "connect-error", "no-token", "html", "negative-lifetime", "word-lifetime"],
)
def test_a_failed_login_raises_with_a_retry_time_from_the_targets_backoff(
    rig: Rig, router: respx.MockRouter, answer: httpx.Response | Exception, status: int | None
) -> None:
    """``LoginFailedError`` carries the status and ``retry_at`` = now + backoff (10 s, with jitter)."""
    router.post("/auth/login").mock(side_effect=[answer])
    credential = rig.credential()

    error = login_failure(credential)

    assert status == error.status
    assert rig.clock.now() + 5 <= error.retry_at <= rig.clock.now() + 10
    assert credential.expires_at is None
    assert not rig.token_file.exists()


def test_during_the_backoff_requests_fail_at_once_without_sending(rig: Rig, router: respx.MockRouter) -> None:
    """Until ``retry_at`` nothing is sent; after it, the next request logs in again."""
    login = router.post("/auth/login").mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(200, json={"access_token": "at-last", "expires_in": 3600}),
        ]
    )
    credential = rig.credential()
    first = login_failure(credential)

    rig.clock.advance(first.retry_at - rig.clock.now() - 0.5)
    during = login_failure(credential)
    assert (1, first.retry_at) == (login.call_count, during.retry_at)

    rig.clock.advance(1)
    assert "Bearer at-last" == bearer(headers_now(credential))
    assert 2 == login.call_count


def test_the_backoff_grows_with_consecutive_failures_and_resets_after_success(
    rig: Rig, router: respx.MockRouter
) -> None:
    """10 s, then 20 s (each with jitter, capped at ``max_backoff``); a success starts over."""
    router.post("/auth/login").mock(
        side_effect=[
            httpx.Response(500),
            httpx.Response(500),
            httpx.Response(200, json={"access_token": "ok", "expires_in": 60}),
            httpx.Response(500),
        ]
    )
    credential = rig.credential()

    delays = []
    for _ in range(2):
        error = login_failure(credential)
        delays.append(error.retry_at - rig.clock.now())
        rig.clock.advance(error.retry_at - rig.clock.now())
    headers_now(credential)
    rig.clock.advance(61)
    after_success = login_failure(credential)

    assert 5 <= delays[0] <= 10
    assert 10 <= delays[1] <= 20
    assert 5 <= after_success.retry_at - rig.clock.now() <= 10


def test_a_failed_login_is_logged_with_its_status_but_never_the_password(
    rig: Rig, router: respx.MockRouter
) -> None:
    """``login_failed`` names the status and a hint, even when the server quotes the password back."""
    echo = {
        "detail": [{"msg": "invalid credentials", "input": {"username": "uploader", "password": PASSWORD}}]
    }
    router.post("/auth/login").respond(401, json=echo)
    credential = rig.credential()

    with capture_logs() as events:
        error = login_failure(credential)

    failed = events_named(events, "login_failed")
    assert 1 == len(failed)
    assert 401 == failed[0]["status"]
    assert "check the username and password" == failed[0]["hint"]
    assert PASSWORD not in repr(events)
    assert PASSWORD not in str(error)


def test_the_rendered_login_failure_never_shows_the_password(rig: Rig, router: respx.MockRouter) -> None:
    """The JSON line an admin reads carries the event and status, not the password."""
    router.post("/auth/login").respond(401, text=f"wrong password {PASSWORD} for uploader")
    output = io.StringIO()
    configure_logging("info", "json", Redactor(secret_values(rig.target())), stream=output)
    # Module-level loggers must not cache this configuration past the test.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        login_failure(rig.credential())
    finally:
        logging.captureWarnings(False)

    lines = [json.loads(line) for line in output.getvalue().splitlines()]
    failed = [line for line in lines if line["event"] == "login_failed"]
    assert 1 == len(failed)
    assert (401, "reports") == (failed[0]["status"], failed[0]["target"])
    assert PASSWORD not in output.getvalue()


# --- a 401 from the API ------------------------------------------------------------------


def test_a_401_discards_the_token_that_was_used_and_clears_the_store(rig: Rig, api: TokenApi) -> None:
    """The refused token is forgotten in memory and on disk; the next request logs in."""
    credential = rig.credential()
    used = headers_now(credential)

    with capture_logs() as events:
        credential.rejected(used)

    assert credential.expires_at is None
    assert not rig.token_file.exists()
    assert ["token_discarded"] == [event["event"] for event in events]
    assert "Bearer login-2" == bearer(headers_now(credential))


def test_a_late_401_for_an_older_token_keeps_the_fresh_one(rig: Rig, api: TokenApi) -> None:
    """An upload that started with the previous token must not throw away its successor."""
    credential = rig.credential()
    old = headers_now(credential)
    credential.rejected(old)
    fresh = headers_now(credential)

    credential.rejected(old)

    assert "Bearer login-2" == bearer(fresh) == bearer(headers_now(credential))
    assert rig.token_file.exists()
    assert 2 == api.login.call_count


def test_a_late_401_for_the_token_before_a_refresh_keeps_the_refreshed_one(rig: Rig, api: TokenApi) -> None:
    """A refresh starts a new generation too: a 401 for the pre-refresh token changes nothing."""
    credential = rig.credential()
    old = headers_now(credential)
    near_expiry(rig, credential)
    rig.activity.touch()
    renew(credential)

    credential.rejected(old)

    assert "Bearer refresh-1" == bearer(headers_now(credential))
    assert rig.token_file.exists()


def test_a_401_for_a_restored_token_discards_it(rig: Rig, api: TokenApi) -> None:
    """A token restored after a restart is the current generation: a 401 for it discards it."""
    headers_now(rig.credential())
    restarted = rig.credential()
    restarted.restore()
    used = headers_now(restarted)

    restarted.rejected(used)

    assert not rig.token_file.exists()
    assert "Bearer login-2" == bearer(headers_now(restarted))


# --- the refresh token (providers that have one) ------------------------------------------


class FakeProvider:
    """A provider whose answers the test scripts: it implements the ``TokenProvider`` interface."""

    can_refresh = True

    def __init__(self, clock: FakeClock, answers: list[TokenGrant | TokenRequestError]) -> None:
        self._clock = clock
        self._answers = answers
        self.refreshed_with: list[str | None] = []
        self.logins = 0

    async def login(self) -> TokenGrant:
        self.logins += 1
        return self._next()

    async def refresh(self, grant: TokenGrant) -> TokenGrant:
        self.refreshed_with.append(grant.refresh_token)
        return self._next()

    def _next(self) -> TokenGrant:
        answer = self._answers.pop(0)
        if isinstance(answer, TokenRequestError):
            raise answer
        return answer


def managed(rig: Rig, provider: FakeProvider) -> ManagedTokenCredential:
    return ManagedTokenCredential(
        target="reports",
        provider=provider,
        store=TokenStore(rig.tokens_dir, "reports", "fake identity"),
        clock=rig.clock,
        activity=rig.activity,
        renewal=RenewalSettings(check_every=60, before_expiry=300, active_within=1800),
        retry=RetrySettings(backoff=10, max_backoff=60),
        header_name="Authorization",
        header_template="Bearer {token}",
        expiry_margin=10,
        redactor=rig.redactor,
    )


def test_a_refresh_answer_without_a_refresh_token_keeps_the_previous_one(rig: Rig) -> None:
    """Cognito's ``REFRESH_TOKEN_AUTH`` returns no new refresh token: the old one stays usable."""
    provider = FakeProvider(
        rig.clock,
        [
            TokenGrant("access-1", START + 3600, START, refresh_token="refresh-token-1"),
            TokenGrant("access-2", START + 3400 + 3600, START + 3400),
            TokenGrant("access-3", START + 6800 + 3600, START + 6800),
        ],
    )
    credential = managed(rig, provider)
    headers_now(credential)
    rig.activity.touch()

    for _ in range(2):
        near_expiry(rig, credential, left=200)
        rig.activity.touch()
        renew(credential)

    assert ["refresh-token-1", "refresh-token-1"] == provider.refreshed_with
    restarted = managed(rig, provider)
    restarted.restore()
    assert "Bearer access-3" == bearer(headers_now(restarted))
    assert "refresh-token-1" == json.loads(rig.token_file.read_text(encoding="utf-8"))["refresh_token"]


def test_a_rejected_refresh_from_any_provider_logs_in_once(rig: Rig) -> None:
    """The fallback to a password login is the credential's rule, not the HTTP provider's."""
    provider = FakeProvider(
        rig.clock,
        [
            TokenGrant("access-1", START + 3600, START, refresh_token="refresh-token-1"),
            TokenRequestError("refresh token revoked", rejected=True),
            TokenGrant("access-2", START + 3400 + 3600, START + 3400, refresh_token="refresh-token-2"),
        ],
    )
    credential = managed(rig, provider)
    headers_now(credential)
    near_expiry(rig, credential, left=200)
    rig.activity.touch()

    renew(credential)

    assert 2 == provider.logins
    assert "Bearer access-2" == bearer(headers_now(credential))


# --- the other credential kinds -----------------------------------------------------------


def test_static_headers_are_returned_as_configured(rig: Rig) -> None:
    """``type: headers`` (flow R) sends the configured values and never expires."""
    target = rig.target(
        auth="""
        type: headers
        headers:
          app-key: {env: APP_KEY}
          user-token: literal-user-token
    """.replace("{env: APP_KEY}", f'"{PASSWORD}"')
    )
    credential = build_credential(
        target,
        client=rig.client,
        clock=rig.clock,
        activity=rig.activity,
        tokens_dir=rig.tokens_dir,
        redactor=rig.redactor,
    )

    headers = asyncio.run(credential.headers())
    credential.rejected(headers)
    asyncio.run(credential.renew_if_due())

    assert isinstance(credential, StaticCredential)
    assert {"app-key": PASSWORD, "user-token": "literal-user-token"} == dict(headers.headers)
    assert (None, None) == (credential.check_every, credential.expires_at)
    assert headers == asyncio.run(credential.headers())


@pytest.mark.parametrize(
    ("auth", "kind", "headers"),
    [
        (TOKEN_AUTH, ManagedTokenCredential, None),
        (JWT_AUTH, ManagedTokenCredential, None),
        ("type: headers\nheaders: {X-Api-Key: k3y-value}", StaticCredential, {"X-Api-Key": "k3y-value"}),
        ("type: none", StaticCredential, {}),
        (
            "type: cognito\nregion: us-east-1\nuser_pool_id: us-east-1_Example\nclient_id: client-id\n"
            "username: uploader\npassword: {env: UPLOADER_PASSWORD}\nrefresh: {check_every: 1m}",
            ManagedTokenCredential,
            None,
        ),
    ],
    ids=["token", "jwt", "headers", "none", "cognito"],
)
def test_build_credential_picks_the_kind_for_each_auth_type(
    rig: Rig, auth: str, kind: type, headers: dict[str, str] | None
) -> None:
    """token and cognito are managed tokens; headers and none are fixed headers."""
    credential = build_credential(
        rig.target(auth),
        client=rig.client,
        clock=rig.clock,
        activity=rig.activity,
        tokens_dir=rig.tokens_dir,
        redactor=rig.redactor,
    )

    assert isinstance(credential, kind)
    if headers is not None:
        assert headers == dict(asyncio.run(credential.headers()).headers)
    else:
        assert 60 == credential.check_every
