"""HttpTokenProvider: the login and refresh requests of flows T and C, at the HTTP edge."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from tests.helpers import FakeClock, tls, unsigned_jwt
from uploader_daemon.auth.grant import TokenGrant
from uploader_daemon.auth.http_token import HttpTokenProvider
from uploader_daemon.config.auth import TokenAuth
from uploader_daemon.errors import TokenRequestError

BASE_URL = "https://api.example.test"
PASSWORD = 'pa55-w0rd-"quoted"\\'
START = 1_700_000_000.0


def token_auth(**overrides: Any) -> TokenAuth:
    """The ``auth:`` section of flow T, with top-level keys (or whole sub-sections) replaced."""
    raw: dict[str, Any] = {
        "type": "token",
        "login": {"username": "uploader", "password": {"env": "UPLOADER_PASSWORD"}},
        "refresh": {"path": "/auth/tokenRefresh"},
        **overrides,
    }
    return TokenAuth.model_validate(raw, context={"environ": {"UPLOADER_PASSWORD": PASSWORD}})


@pytest.fixture
def clock() -> FakeClock:
    """The fake wall clock the provider reads its send times from."""
    return FakeClock(START)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    """The token API at the HTTP edge; every request must match a route."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


def login_with(settings: TokenAuth, clock: FakeClock, base_url: str = BASE_URL) -> TokenGrant:
    async def scenario() -> TokenGrant:
        async with httpx.AsyncClient(verify=tls()) as client:
            return await HttpTokenProvider(settings, base_url, client, clock).login()

    return asyncio.run(scenario())


def refresh_with(settings: TokenAuth, clock: FakeClock, grant: TokenGrant) -> TokenGrant:
    async def scenario() -> TokenGrant:
        async with httpx.AsyncClient(verify=tls()) as client:
            return await HttpTokenProvider(settings, BASE_URL, client, clock).refresh(grant)

    return asyncio.run(scenario())


def login_error(settings: TokenAuth, clock: FakeClock) -> TokenRequestError:
    with pytest.raises(TokenRequestError) as caught:
        login_with(settings, clock)
    return caught.value


CURRENT = TokenGrant(token="current-token", expires_at=START + 3600, obtained_at=START)


# --- login -----------------------------------------------------------------------------


def test_login_posts_the_username_and_password_as_json(api: respx.MockRouter, clock: FakeClock) -> None:
    """``POST {base}/auth/login`` with ``{"username", "password"}``, as in flow T."""
    route = api.post("/auth/login").respond(json={"access_token": "abc.def.ghi", "expires_in": 3600})

    grant = login_with(token_auth(), clock)

    assert 1 == route.call_count
    request = route.calls.last.request
    assert {"username": "uploader", "password": PASSWORD} == json.loads(request.content)
    assert "application/json" == request.headers["Content-Type"]
    assert "authorization" not in request.headers
    assert TokenGrant("abc.def.ghi", START + 3600, START) == grant


def test_the_expiry_counts_from_when_the_login_was_sent_not_answered(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    """A slow answer can only make the daemon renew early, never late."""
    sent_at: list[float] = []

    def slow_answer(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.now())
        clock.advance(45)
        return httpx.Response(200, json={"access_token": "abc.def.ghi", "expires_in": 3600})

    api.post("/auth/login").mock(side_effect=slow_answer)

    grant = login_with(token_auth(), clock)

    assert [START] == sent_at
    assert sent_at[0] + 3600 == grant.expires_at
    assert sent_at[0] == grant.obtained_at


def test_the_login_path_is_joined_to_a_base_url_with_a_path(api: respx.MockRouter, clock: FakeClock) -> None:
    """``api.base_url``'s own path prefix is kept (unlike ``urljoin``)."""
    route = api.post("/v2/auth/login").respond(json={"access_token": "t0k3n", "expires_in": 60})

    login_with(token_auth(), clock, base_url=f"{BASE_URL}/v2")

    assert 1 == route.call_count


def test_login_field_names_and_method_are_configurable(api: respx.MockRouter, clock: FakeClock) -> None:
    """APIs that want ``user``/``pass`` over ``PUT`` at another path are served as configured."""
    route = api.put("/session").respond(json={"access_token": "t0k3n", "expires_in": 60})
    settings = token_auth(
        login={
            "path": "/session",
            "method": "PUT",
            "username": "uploader",
            "password": {"env": "UPLOADER_PASSWORD"},
            "username_field": "user",
            "password_field": "pass",
        }
    )

    login_with(settings, clock)

    assert {"user": "uploader", "pass": PASSWORD} == json.loads(route.calls.last.request.content)


# --- where the expiry comes from -------------------------------------------------------


def test_a_numeric_string_expires_in_is_understood(api: respx.MockRouter, clock: FakeClock) -> None:
    """``"expires_in": "1800"`` counts like the number."""
    api.post("/auth/login").respond(json={"access_token": "t0k3n", "expires_in": "1800"})

    assert START + 1800 == login_with(token_auth(), clock).expires_at


def test_without_expires_in_the_jwt_exp_is_the_expiry(api: respx.MockRouter, clock: FakeClock) -> None:
    """Flow C answers ``{"message", "token", "id"}``: the expiry is the JWT's ``exp``."""
    token = unsigned_jwt({"sub": "uploader", "exp": int(START) + 900})
    api.post("/api/auth/login").respond(json={"message": "Login successful", "token": token, "id": 7})
    settings = token_auth(
        login={
            "path": "/api/auth/login",
            "username": "uploader",
            "password": {"env": "UPLOADER_PASSWORD"},
            "token_field": "token",
        },
        refresh={},
    )

    grant = login_with(settings, clock)

    assert TokenGrant(token, START + 900, START) == grant


def test_without_expires_in_or_exp_the_default_lifetime_applies(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    """An opaque token and no lifetime: ``default_lifetime`` from the send time."""
    api.post("/auth/login").respond(json={"access_token": "opaque-token"})

    assert START + 600 == login_with(token_auth(default_lifetime="10m"), clock).expires_at


def test_token_and_lifetime_are_read_through_dotted_paths(api: respx.MockRouter, clock: FakeClock) -> None:
    """``token_field: data.token`` and ``expires_in_field: data.ttl`` reach into nested answers."""
    api.post("/auth/login").respond(json={"data": {"token": "nested-token", "ttl": 120}, "expires_in": 9999})
    settings = token_auth(
        login={
            "username": "uploader",
            "password": {"env": "UPLOADER_PASSWORD"},
            "token_field": "data.token",
            "expires_in_field": "data.ttl",
        }
    )

    assert TokenGrant("nested-token", START + 120, START) == login_with(settings, clock)


def test_a_lifetime_field_that_is_switched_off_is_ignored(api: respx.MockRouter, clock: FakeClock) -> None:
    """``expires_in_field: null`` trusts the JWT ``exp`` even when the body has ``expires_in``."""
    token = unsigned_jwt({"exp": int(START) + 300})
    api.post("/auth/login").respond(json={"access_token": token, "expires_in": 9999})
    settings = token_auth(
        login={
            "username": "uploader",
            "password": {"env": "UPLOADER_PASSWORD"},
            "expires_in_field": None,
        }
    )

    assert START + 300 == login_with(settings, clock).expires_at


# --- failed logins -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "rejected"),
    [(400, True), (401, True), (403, True), (404, False), (429, False), (500, False), (503, False)],
)
def test_a_login_answered_with_an_error_status_fails(
    api: respx.MockRouter, clock: FakeClock, status: int, rejected: bool
) -> None:
    """Any non-2xx is a failed login; 400/401/403 mean the credentials were refused."""
    api.post("/auth/login").respond(status, json={"error": "nope"})

    error = login_error(token_auth(), clock)

    assert (status, rejected) == (error.status, error.rejected)
    assert str(status) in str(error)


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_a_login_without_an_answer_is_a_transient_failure(
    api: respx.MockRouter, clock: FakeClock, failure: type[Exception]
) -> None:
    """Network errors and timeouts have no status and do not blame the credentials."""
    api.post("/auth/login").mock(side_effect=failure)

    error = login_error(token_auth(), clock)

    assert (None, False) == (error.status, error.rejected)
    assert "api.example.test" in str(error)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, json={}), "without a token at 'access_token'"),
        (httpx.Response(200, json={"token": "wrong-field"}), "without a token"),
        (httpx.Response(200, json={"access_token": ""}), "is not a token"),
        (httpx.Response(200, json={"access_token": 12345}), "is not a token"),
        (httpx.Response(200, json=["access_token"]), "without a token"),
        (
            httpx.Response(200, content=b"null", headers={"Content-Type": "application/json"}),
            "without a token",
        ),
        (httpx.Response(200, html="<html><body>Sign in</body></html>"), "not JSON"),
        (httpx.Response(200, json={"access_token": "t0k3n", "expires_in": -60}), "expires_in"),
        (httpx.Response(200, json={"access_token": "t0k3n", "expires_in": "soon"}), "expires_in"),
        (httpx.Response(200, json={"access_token": "t0k3n", "expires_in": True}), "expires_in"),
    ],
    ids=[
        "empty",
        "other-field",
        "empty-token",
        "numeric-token",
        "list",
        "null",
        "html",
        "negative-lifetime",
        "word-lifetime",
        "boolean-lifetime",
    ],
)
def test_a_200_without_a_usable_token_is_a_failed_login(
    api: respx.MockRouter, clock: FakeClock, response: httpx.Response, message: str
) -> None:
    """A success status is not enough: the body must carry a token and a sane lifetime."""
    api.post("/auth/login").mock(return_value=response)

    error = login_error(token_auth(), clock)

    assert message in str(error)
    assert (200, False) == (error.status, error.rejected)


@pytest.mark.parametrize("token", ["t\u00f6ken-\u20ac", "abc\r\nX-Injected: 1", "tab\there"])
def test_a_token_that_cannot_go_in_a_header_is_a_failed_login(
    api: respx.MockRouter, clock: FakeClock, token: str
) -> None:
    """Non-ASCII or control characters would break (or inject into) every later request."""
    api.post("/auth/login").respond(json={"access_token": token, "expires_in": 3600})

    error = login_error(token_auth(), clock)

    assert "is not a token" in str(error)
    assert token not in str(error)


@pytest.mark.parametrize(
    "echo",
    [
        {
            "detail": [
                {"loc": ["body"], "msg": "invalid", "input": {"username": "uploader", "password": PASSWORD}}
            ]
        },
        f"bad password {PASSWORD} for uploader",
    ],
    ids=["json-echo", "text-echo"],
)
@pytest.mark.parametrize("status", [200, 401, 422])
def test_a_server_that_echoes_the_password_does_not_put_it_in_the_error(
    api: respx.MockRouter, clock: FakeClock, echo: object, status: int
) -> None:
    """Some frameworks quote the request body in errors; the message keeps the status, not the password."""
    answer = httpx.Response(status, **({"json": echo} if isinstance(echo, dict) else {"text": str(echo)}))
    api.post("/auth/login").mock(return_value=answer)

    error = login_error(token_auth(), clock)

    assert status == error.status
    assert PASSWORD not in str(error)
    assert json.dumps(PASSWORD)[1:-1] not in str(error)


def test_a_password_at_the_end_of_the_quoted_body_is_not_left_in_part(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    """The body is scrubbed before it is shortened, so no prefix of the password survives the cut."""
    api.post("/auth/login").respond(401, text="x" * 195 + PASSWORD + "y" * 100)

    error = login_error(token_auth(), clock)

    assert PASSWORD[:5] not in str(error)


# --- refresh -----------------------------------------------------------------------------


def test_refresh_sends_the_current_token_as_bearer_to_the_refresh_path(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    """``GET {base}/auth/tokenRefresh`` with ``Authorization: Bearer <current>``; no password."""
    answer = {"access_token": "refreshed-token", "expires_in": 3600}
    route = api.get("/auth/tokenRefresh").respond(json=answer)
    clock.advance(3400)

    grant = refresh_with(token_auth(), clock, CURRENT)

    request = route.calls.last.request
    assert "Bearer current-token" == request.headers["Authorization"]
    assert b"" == request.content
    assert TokenGrant("refreshed-token", START + 3400 + 3600, START + 3400) == grant


def test_refresh_uses_the_configured_method_header_and_fields(
    api: respx.MockRouter, clock: FakeClock
) -> None:
    """``refresh.method``, ``header``/``header_name`` and refresh-specific field paths are honoured."""
    route = api.post("/token/renew").respond(json={"renewed": {"value": "new-token", "seconds": 90}})
    settings = token_auth(
        refresh={
            "path": "/token/renew",
            "method": "POST",
            "token_field": "renewed.value",
            "expires_in_field": "renewed.seconds",
        },
        header="Token {token}",
        header_name="X-Auth",
    )

    grant = refresh_with(settings, clock, CURRENT)

    assert "Token current-token" == route.calls.last.request.headers["X-Auth"]
    assert "authorization" not in route.calls.last.request.headers
    assert TokenGrant("new-token", START + 90, START) == grant


def test_refresh_falls_back_to_the_login_field_paths(api: respx.MockRouter, clock: FakeClock) -> None:
    """Without refresh-specific paths, the refresh answer is read like a login answer."""
    api.get("/auth/tokenRefresh").respond(json={"data": {"token": "new-token", "ttl": 60}})
    settings = token_auth(
        login={
            "username": "uploader",
            "password": {"env": "UPLOADER_PASSWORD"},
            "token_field": "data.token",
            "expires_in_field": "data.ttl",
        },
        refresh={"path": "/auth/tokenRefresh"},
    )

    assert TokenGrant("new-token", START + 60, START) == refresh_with(settings, clock, CURRENT)


@pytest.mark.parametrize(("status", "rejected"), [(401, True), (403, True), (500, False), (502, False)])
def test_a_refused_refresh_is_told_apart_from_a_broken_one(
    api: respx.MockRouter, clock: FakeClock, status: int, rejected: bool
) -> None:
    """401/403 mean "log in again"; 5xx mean "keep the token and try later"."""
    api.get("/auth/tokenRefresh").respond(status)

    with pytest.raises(TokenRequestError) as caught:
        refresh_with(token_auth(), clock, CURRENT)

    assert (status, rejected) == (caught.value.status, caught.value.rejected)


def test_a_refresh_without_an_answer_is_transient(api: respx.MockRouter, clock: FakeClock) -> None:
    """A connection error during refresh does not condemn the current token."""
    api.get("/auth/tokenRefresh").mock(side_effect=httpx.ConnectError)

    with pytest.raises(TokenRequestError) as caught:
        refresh_with(token_auth(), clock, CURRENT)

    assert (None, False) == (caught.value.status, caught.value.rejected)


def test_a_refresh_that_cannot_be_sent_is_a_request_error(api: respx.MockRouter, clock: FakeClock) -> None:
    """A header template HTTP cannot carry fails the refresh cleanly instead of crashing the check."""
    route = api.get("/auth/tokenRefresh").respond(json={"access_token": "never", "expires_in": 60})

    with pytest.raises(TokenRequestError) as caught:
        refresh_with(token_auth(header="B\u00e9arer {token}"), clock, CURRENT)

    assert 0 == route.call_count
    assert "current-token" not in str(caught.value)


@pytest.mark.parametrize(("refresh", "can_refresh"), [({"path": "/auth/tokenRefresh"}, True), ({}, False)])
def test_a_provider_can_refresh_only_with_a_refresh_path(refresh: dict[str, str], can_refresh: bool) -> None:
    """Without ``refresh.path`` (flow C) renewal is a new login."""
    client = httpx.AsyncClient(verify=tls())
    provider = HttpTokenProvider(token_auth(refresh=refresh), BASE_URL, client, FakeClock(START))

    assert can_refresh == provider.can_refresh
    asyncio.run(client.aclose())
