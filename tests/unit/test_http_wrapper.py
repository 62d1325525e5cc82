"""The one HTTP wrapper: status classification, Retry-After, excerpts, safe URLs, transport errors."""

from __future__ import annotations

import asyncio
import email.utils
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx

from tests.helpers import tls
from uploader_daemon.config.schema import ApiSettings
from uploader_daemon.errors import (
    AuthRejectedError,
    InvalidRequestError,
    NetworkError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from uploader_daemon.http import CookiesWhenSet, build_client, check_status, excerpt, retry_after, send
from uploader_daemon.urls import join_url, safe_url, same_origin

API = "https://api.example.test"


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """A read response to a request, as ``send`` returns one."""
    return httpx.Response(status, content=body, headers=headers, request=httpx.Request("POST", f"{API}/x"))


def http_date(delta_seconds: float) -> str:
    """An RFC 7231 HTTP-date ``delta_seconds`` from now."""
    return email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=delta_seconds), usegmt=True)


# --- check_status -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_accepted_when_no_expect_list_is_given(status: int) -> None:
    """Without ``expect``, every 2xx status passes."""
    assert check_status(answer(status), "create") is None


def test_an_expect_list_replaces_the_2xx_rule() -> None:
    """With ``expect: [201]``, 201 passes and 200 is refused for good."""
    check_status(answer(201), "create", (201,))
    with pytest.raises(PermanentDeliveryError) as caught:
        check_status(answer(200), "create", (201,))
    assert 200 == caught.value.status


def test_a_401_on_a_credentialed_request_is_an_auth_rejection() -> None:
    """401 with the credential attached means the token was refused."""
    with pytest.raises(AuthRejectedError) as caught:
        check_status(answer(401, b'{"error": "token expired"}'), "upload")
    assert "upload" == caught.value.step
    assert 401 == caught.value.status
    assert "token expired" in (caught.value.body_excerpt or "")
    assert "step upload" in str(caught.value)


def test_a_401_without_the_credential_is_permanent_not_an_auth_rejection() -> None:
    """No token was sent, so there is no token to discard: the request is refused."""
    with pytest.raises(PermanentDeliveryError):
        check_status(answer(401), "store", credentialed=False)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_timeouts_throttling_and_server_errors_are_transient(status: int) -> None:
    """408, 425, 429 and every 5xx are worth retrying."""
    with pytest.raises(TransientDeliveryError) as caught:
        check_status(answer(status, b"busy"), "create")
    assert status == caught.value.status
    assert "create" == caught.value.step
    assert f"answered {status}" in str(caught.value)


@pytest.mark.parametrize("status", [400, 403, 404, 405, 409, 410, 413, 422])
def test_other_client_errors_are_permanent_with_the_body_excerpt(status: int) -> None:
    """A 4xx other than 401/408/425/429 cannot be fixed by retrying."""
    with pytest.raises(PermanentDeliveryError) as caught:
        check_status(answer(status, b'{"error": "no such task"}'), "confirm")
    assert status == caught.value.status
    assert '{"error": "no such task"}' == caught.value.body_excerpt
    assert f"step confirm: the server refused the request with {status}" in str(caught.value)


def test_retry_after_in_seconds_is_carried_by_the_transient_error() -> None:
    """``Retry-After: 120`` on a 429 becomes ``retry_after == 120``."""
    with pytest.raises(TransientDeliveryError) as caught:
        check_status(answer(429, headers={"Retry-After": "120"}), "create")
    assert 120.0 == caught.value.retry_after


def test_retry_after_as_an_http_date_becomes_seconds_from_now() -> None:
    """``Retry-After: <HTTP-date>`` two minutes ahead is about 120 seconds."""
    with pytest.raises(TransientDeliveryError) as caught:
        check_status(answer(503, headers={"Retry-After": http_date(120)}), "create")
    assert caught.value.retry_after is not None
    assert 110 <= caught.value.retry_after <= 120


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("0", 0.0), (" 30 ", 30.0), ("soon", None), ("-5", None)],
)
def test_retry_after_ignores_what_it_cannot_read(value: str | None, expected: float | None) -> None:
    """Missing or unreadable ``Retry-After`` values give ``None``, never an exception."""
    headers = {"Retry-After": value} if value is not None else None
    assert expected == retry_after(answer(503, headers=headers))


def test_retry_after_in_the_past_is_zero() -> None:
    """An HTTP-date already gone means "retry now", not a negative delay."""
    assert 0.0 == retry_after(answer(503, headers={"Retry-After": http_date(-3600)}))


def test_a_storage_error_detail_is_appended_to_the_message() -> None:
    """``detail`` (the storage's error code) ends the sentence an admin reads."""
    with pytest.raises(PermanentDeliveryError) as caught:
        check_status(answer(400), "store", credentialed=False, detail=" (EntityTooLarge: too big)")
    assert str(caught.value).endswith("(EntityTooLarge: too big)")


# --- excerpt, safe_url, join_url, same_origin ----------------------------------------


def test_an_excerpt_is_one_line_and_cut_at_the_limit() -> None:
    """Whitespace collapses to single spaces and long bodies end with an ellipsis."""
    response = answer(500, b"<html>\n  <body>\t502   Bad Gateway</body>\n</html>" + b"x" * 600)
    text = excerpt(response, limit=40)
    assert "<html> <body> 502 Bad Gateway</body> </h..." == text


def test_an_excerpt_cuts_the_credentials_a_body_quotes_before_shortening() -> None:
    """Echoed tokens, presigned signatures and Bearer headers never reach an error or a sidecar."""
    body = (
        b'{"error": "denied", "token": "t-0123456789", "upload": "https://s3.test/k?X-Amz-Date=2030'
        b'&X-Amz-Signature=0f1e2d3c", "echo": "Authorization: Bearer abcdefgh123", '
        b'"refresh_token": "r-9876543210"}'
    )
    text = excerpt(answer(403, body), limit=200)
    for secret in ("t-0123456789", "0f1e2d3c", "abcdefgh123", "r-9876543210", "r-98"):
        assert secret not in text
    assert text.startswith(
        '{"error": "denied", "token": "[REDACTED]", "upload": "https://s3.test/k?X-Amz-Date=2030&'
    )


def test_a_refused_request_quoting_a_presigned_url_keeps_its_signature_out_of_the_error() -> None:
    """check_status's body excerpt is scrubbed like every other."""
    body = b"<Error><Code>AccessDenied</Code><SignatureProvided>0f1e2d3c</SignatureProvided></Error>"
    with pytest.raises(PermanentDeliveryError) as caught:
        check_status(answer(403, body), "store", credentialed=False)
    assert "0f1e2d3c" not in (caught.value.body_excerpt or "")
    assert "<Code>AccessDenied</Code>" in (caught.value.body_excerpt or "")


def test_an_excerpt_of_an_unread_stream_is_empty() -> None:
    """A streamed body not yet read gives an empty excerpt instead of an error."""

    async def chunks() -> object:
        yield b"never read"

    response = httpx.Response(500, content=chunks())  # type: ignore[arg-type]
    assert "" == excerpt(response)


def test_a_safe_url_drops_the_query_and_the_user_info() -> None:
    """Presigned signatures and passwords never reach a log line."""
    url = "https://user:hunter2@bucket.s3.example.test:8443/up/load?X-Amz-Signature=abc#frag"
    assert "https://bucket.s3.example.test:8443/up/load" == safe_url(url)


def test_a_safe_url_keeps_the_brackets_of_an_ipv6_host() -> None:
    """``[::1]:8080`` stays a readable (and valid) address."""
    assert "http://[::1]:8080/p" == safe_url("http://user:pw@[::1]:8080/p?sig=x")


def test_join_url_keeps_the_base_path_prefix() -> None:
    """Unlike urljoin, ``/documents`` is appended to ``/api/v1.0``."""
    assert "https://runrun.it/api/v1.0/documents" == join_url("https://runrun.it/api/v1.0/", "/documents")
    assert "https://runrun.it/api/v1.0/documents" == join_url("https://runrun.it/api/v1.0", "documents")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.test/v1/x", True),
        ("https://API.example.test/v1/x", True),
        ("https://api.example.test:443/v1/x", True),
        ("http://api.example.test/v1/x", False),
        ("https://api.example.test:8443/v1/x", False),
        ("https://evil.example.test/v1/x", False),
        ("https://api.example.test.evil.test/v1/x", False),
    ],
)
def test_same_origin_compares_scheme_host_and_effective_port(url: str, expected: bool) -> None:
    """Host case and an explicit default port do not change the origin; anything else does."""
    assert expected == same_origin(url, ("https", "api.example.test", None))


def test_same_origin_treats_an_explicit_default_port_in_the_base_url_as_none() -> None:
    """A base URL written with ``:443`` still matches URLs without a port."""
    assert same_origin("https://api.example.test/x", ("https", "api.example.test", 443))


# --- send ----------------------------------------------------------------------------


def send_once(url: str, side_effect: Exception | None = None, **options: object) -> httpx.Response:
    """``send`` one POST through respx; ``side_effect`` is raised by the transport."""

    async def go() -> httpx.Response:
        with respx.mock() as router:
            route = router.post(url)
            if side_effect is not None:
                route.side_effect = side_effect
            else:
                route.respond(200, json={"ok": True})
            async with httpx.AsyncClient(verify=tls()) as client:
                return await send(client, "POST", url, **options)

    return asyncio.run(go())


def test_send_returns_the_response_whatever_its_status() -> None:
    """Classification is the caller's job; ``send`` only fails without a response."""
    response = send_once(f"{API}/upload")
    assert 200 == response.status_code
    assert {"ok": True} == response.json()


def test_a_refused_connection_names_the_host_without_a_traceback() -> None:
    """``[Errno 111]`` prefixes are dropped and the exception chain is cut."""
    with pytest.raises(NetworkError) as caught:
        send_once(f"{API}:8443/upload", httpx.ConnectError("[Errno 111] Connection refused"))
    assert "POST api.example.test:8443 failed: Connection refused" == str(caught.value)
    assert caught.value.__suppress_context__
    assert caught.value.__cause__ is None


def test_a_read_timeout_names_the_host_and_the_kind_of_timeout() -> None:
    """A timeout says so, with the host and no stack trace text."""
    with pytest.raises(NetworkError) as caught:
        send_once(f"{API}/upload", httpx.ReadTimeout("timed out"))
    assert "POST api.example.test timed out (ReadTimeout)" == str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_a_header_value_that_is_not_ascii_is_refused_with_a_sentence() -> None:
    """A templated header (``{file.name}`` of ``relatório.pdf``) cannot be sent as is."""
    with pytest.raises(InvalidRequestError) as caught:
        send_once(f"{API}/upload", headers={"X-File-Name": "relatório.pdf"})
    assert "X-File-Name" in str(caught.value)
    assert "ASCII" in str(caught.value)


def test_an_invalid_url_is_refused_with_a_sentence() -> None:
    """A malformed URL (``http://[bad``) is an error from the tree, not a ValueError."""

    async def go() -> None:
        async with httpx.AsyncClient(verify=tls()) as client:
            await send(client, "GET", "http://[bad/x")

    with pytest.raises(InvalidRequestError) as caught:
        asyncio.run(go())
    assert "not a valid URL" in str(caught.value)


# --- cookies --------------------------------------------------------------------------


def test_a_cookie_the_api_sets_is_sent_back_by_the_targets_client() -> None:
    """A sticky-session cookie survives the fast path for answers that set none."""
    seen: list[str | None] = []

    def answer_with_cookie(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Cookie"))
        if len(seen) == 1:
            return httpx.Response(200, headers={"Set-Cookie": "lb=node-2; Path=/"})
        return httpx.Response(200)

    async def three_requests() -> None:
        client = build_client(ApiSettings.model_validate({"base_url": API}), connections=1)
        # httpx keeps the jar in a private attribute: if that changes, this says so.
        assert isinstance(client.cookies, CookiesWhenSet)
        async with client:
            for _ in range(3):
                await send(client, "GET", f"{API}/x")

    with respx.mock(using="httpx") as mock:
        mock.get(f"{API}/x").mock(side_effect=answer_with_cookie)
        asyncio.run(three_requests())
    assert [None, "lb=node-2", "lb=node-2"] == seen
