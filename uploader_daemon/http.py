"""The one place HTTP requests are sent: timeouts, logging, and turning failures into errors.

Transport problems (refused, reset, DNS, TLS, timeout) become :class:`NetworkError` with
a sentence naming the host; statuses are classified by :func:`check_status` into the
error tree of :mod:`uploader_daemon.errors`. Request logs carry the method, the URL
without its query string (presigned URLs carry signatures there) and the status; body
excerpts quoted into errors have recognisable credentials cut out.
"""

from __future__ import annotations

import email.utils
import os
import re
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from uploader_daemon.config.schema import ApiSettings
from uploader_daemon.errors import (
    ApiUnavailableError,
    AuthRejectedError,
    InvalidRequestError,
    NetworkError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from uploader_daemon.logs import get_logger
from uploader_daemon.redaction import scrub_text
from uploader_daemon.transport import AsyncioTransport
from uploader_daemon.urls import cut, host_of, safe_url

log = get_logger(__name__)

EXCERPT_LENGTH = 500
# A step's JSON answer (a grant, a status) is small: past this the server is broken, and
# reading on would only fill memory. Of an error answer only the start matters.
ANSWER_LIMIT = 1024 * 1024
ERROR_BODY_LIMIT = 64 * 1024
_TRUNCATED = "uploader_daemon.truncated"
# Headers that described the body as it came over the wire, not as it is kept.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Answers that speak for the whole service, not for the request: an outage or throttling.
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


def build_client(api: ApiSettings, connections: int) -> httpx.AsyncClient:
    """An ``AsyncClient`` for one target: its timeout, TLS settings and a pool sized to
    its concurrency (plus room for the login and poll requests)."""
    if api.verify_tls and api.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(api.ca_file))
    else:
        verify = httpx.create_ssl_context(verify=api.verify_tls)
    limits = httpx.Limits(max_connections=connections + 2, max_keepalive_connections=connections + 2)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(api.timeout),
        verify=verify,
        limits=limits,
        # Proxies from the environment keep httpx's own transports (mounted per scheme).
        transport=AsyncioTransport(verify=verify, limits=limits),
        follow_redirects=False,
        headers={"User-Agent": "uploader-daemon"},
    )
    # The setter would copy the jar into a plain Cookies; the attribute keeps ours
    # (private: test_http_wrapper.py fails if httpx stops reading it).
    client._cookies = CookiesWhenSet()
    return client


class CookiesWhenSet(httpx.Cookies):
    """httpx's cookie handling, but a response without ``Set-Cookie`` costs nothing.

    httpx hands every response to the jar, which first rebuilds the request and the
    response as urllib objects: about 4 % of the event loop's time per small file
    (py-spy, issue 10), for APIs that almost never set a cookie. A load balancer's
    sticky-session cookie is still kept and sent back.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stream: bool = False,
    auth: httpx.Auth | None = None,
    **options: Any,
) -> httpx.Response:
    """Send one request; returns the response whatever its status.

    With ``stream=True`` the body is not read (the caller streams and closes it);
    otherwise it is read up to a bound (:func:`read_bounded`), whatever the server sends.
    ``auth`` attaches the target's credential (:mod:`uploader_daemon.auth.wire`); its
    own refusals (another origin, a failed login) pass through unchanged.
    Raises :class:`NetworkError` when no response arrived, :class:`InvalidRequestError`
    when the URL or a header cannot go on the wire.
    """
    started = time.monotonic()
    request = _build(client, method, url, options)
    try:
        response = await client.send(request, stream=True, auth=auth)
    except httpx.TimeoutException as error:
        raise NetworkError(f"{method} {host_of(url)} timed out ({type(error).__name__})") from None
    except httpx.HTTPError as error:
        raise NetworkError(f"{method} {host_of(url)} failed: {_reason(error)}") from None
    log.debug(
        "http_request",
        method=method,
        url=safe_url(url),
        status=response.status_code,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
    return response if stream else await read_bounded(response)


async def read_bounded(response: httpx.Response, limit: int | None = None) -> httpx.Response:
    """The response with its (decoded) body read, at most ``limit`` bytes of it; closed.

    The default limit is :data:`ANSWER_LIMIT` for a 2xx and :data:`ERROR_BODY_LIMIT`
    otherwise: a broken server cannot make the daemon read (or decompress) hundreds of
    megabytes. :func:`truncated` tells whether more was there. Raises
    :class:`NetworkError` when the body breaks off.
    """
    if limit is None:
        limit = ANSWER_LIMIT if response.is_success else ERROR_BODY_LIMIT
    declared = response.headers.get("Content-Length")
    if (
        declared is not None
        and declared.isdigit()
        and int(declared) <= limit
        and not response.headers.get("Content-Encoding")
    ):
        # The usual answer: small and said so. httpx reads no further than Content-Length.
        try:
            await response.aread()
        except httpx.HTTPError as error:
            request = response.request
            raise NetworkError(
                f"{request.method} {host_of(str(request.url))} broke off: {_reason(error)}"
            ) from None
        finally:
            await response.aclose()
        return response
    chunks: list[bytes] = []
    size = 0
    complete = True
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                complete = False
                break
    except httpx.HTTPError as error:
        raise NetworkError(
            f"{response.request.method} {host_of(str(response.request.url))} broke off: {_reason(error)}"
        ) from None
    finally:
        await response.aclose()
    headers = [
        (name, value) for name, value in response.headers.multi_items() if name.lower() not in _WIRE_HEADERS
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=b"".join(chunks)[:limit],
        request=response.request,
        extensions={**response.extensions, _TRUNCATED: not complete},
    )


def _broke_off(response: httpx.Response, error: httpx.HTTPError) -> NetworkError:
    request = response.request
    return NetworkError(f"{request.method} {host_of(str(request.url))} broke off: {_reason(error)}")


def truncated(response: httpx.Response) -> bool:
    """Whether :func:`read_bounded` stopped before the end of the body."""
    return bool(response.extensions.get(_TRUNCATED, False))


def _build(client: httpx.AsyncClient, method: str, url: str, options: dict[str, Any]) -> httpx.Request:
    """The request, or :class:`InvalidRequestError` naming what cannot be sent."""
    try:
        urlsplit(url).port  # noqa: B018 -- raises ValueError for a bad IPv6 host or port
    except ValueError:
        raise InvalidRequestError(f"{method} {cut(url)!r} is not a valid URL") from None
    headers = options.get("headers") or {}
    for name, value in headers.items():
        if isinstance(value, str) and not value.isascii():
            raise InvalidRequestError(
                f"{method} {safe_url(url)}: the {name} header value is not ASCII text, which HTTP "
                "headers cannot carry; remove the non-ASCII value from the header template"
            )
    try:
        request = client.build_request(method, url, **options)
    except (httpx.InvalidURL, UnicodeEncodeError) as error:
        raise InvalidRequestError(f"{method} {cut(url)!r} cannot be sent: {error}") from None
    content = options.get("content")
    if isinstance(content, httpx.AsyncByteStream):
        # httpx wraps any async iterable in a generic stream; ours can be sent as it is
        # (and sent again), with the Content-Length it declared.
        request.stream = content
    return request


def check_status(
    response: httpx.Response,
    step: str,
    expect: tuple[int, ...] = (),
    *,
    credentialed: bool = True,
    detail: str = "",
) -> None:
    """Raise the right error unless ``response`` has an accepted status.

    Accepted: ``expect`` when given, else any 2xx. 401 on a credentialed request is
    :class:`AuthRejectedError`; 429/502/503/504 say the service is unavailable
    (:class:`ApiUnavailableError`); 408/425/other 5xx are transient; other statuses are
    permanent. ``detail`` is appended to the message (a storage's error code). The body
    must already be read.
    """
    status = response.status_code
    if (status in expect) if expect else 200 <= status < 300:
        return
    body = excerpt(response)
    if status == 401 and credentialed:
        raise AuthRejectedError(
            f"step {step}: the API answered 401 Unauthorized; the token was refused",
            step=step,
            status=status,
            body_excerpt=body,
        )
    if status in _RETRYABLE_STATUSES or status >= 500:
        kind = ApiUnavailableError if status in UNAVAILABLE_STATUSES else TransientDeliveryError
        raise kind(
            f"step {step}: the server answered {status}{_reason_phrase(response)}{detail}",
            step=step,
            status=status,
            body_excerpt=body,
            retry_after=retry_after(response),
        )
    raise PermanentDeliveryError(
        f"step {step}: the server refused the request with {status}{_reason_phrase(response)}{detail}",
        step=step,
        status=status,
        body_excerpt=body,
    )


def excerpt(response: httpx.Response, limit: int = EXCERPT_LENGTH) -> str:
    """The start of a (read) response body as one line of text, for logs and sidecars.

    Credentials the body quotes (a token field, a presigned URL's signature, a Bearer
    header echoed back) are replaced by ``[REDACTED]`` before the text is shortened,
    so a secret cut at the end cannot survive in part. An unread body gives ``""``.
    """
    try:
        text = response.content[: limit * 4].decode(response.encoding or "utf-8", "replace")
    except (httpx.ResponseNotRead, LookupError):
        return ""
    text = scrub_text(" ".join(text.split()))
    return text[:limit] + ("..." if len(text) > limit else "")


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP-date), or ``None``."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _reason(error: httpx.HTTPError) -> str:
    """What went wrong, in the words of the operating system when it said (Connection refused)."""
    link: BaseException | None = error
    while link is not None:
        if isinstance(link, OSError) and (link.errno or link.strerror):
            # asyncio words a refusal "Connect call failed (host, port)"; the errno says it plainly.
            return os.strerror(link.errno) if link.errno else str(link.strerror)
        link = link.__cause__ or link.__context__
    cause = error.__cause__ or error.__context__
    text = str(error) or (str(cause) if cause else "") or type(error).__name__
    # Strip errno prefixes: "[Errno 111] Connection refused" -> "Connection refused".
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text)


def _reason_phrase(response: httpx.Response) -> str:
    return f" {response.reason_phrase}" if response.reason_phrase else ""
