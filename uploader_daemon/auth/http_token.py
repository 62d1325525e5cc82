"""Password login and token refresh over HTTP (flows T and C).

Login: ``POST {base}{login.path}`` with ``{"username": ..., "password": ...}``; the token
and its lifetime are read through the configured dotted paths. Refresh: the refresh
endpoint called with the current token in the configured header.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from uploader_daemon.auth.grant import TokenGrant, expiry_for
from uploader_daemon.clock import Clock
from uploader_daemon.config.auth import TokenAuth
from uploader_daemon.errors import TokenRequestError, UploaderError
from uploader_daemon.http import excerpt, send
from uploader_daemon.monitor import QUIET, TargetEvents
from uploader_daemon.redaction import REDACTED
from uploader_daemon.templating import MissingValueError, dig, dig_optional
from uploader_daemon.urls import join_url

# Visible ASCII only: what a token must be to travel in a header.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


class HttpTokenProvider:
    """Logs in and refreshes against the target's API."""

    def __init__(
        self,
        settings: TokenAuth,
        base_url: str,
        client: httpx.AsyncClient,
        clock: Clock,
        events: TargetEvents = QUIET,
    ) -> None:
        self._settings = settings
        self._base_url = base_url
        self._client = client
        self._clock = clock
        self._events = events

    @property
    def can_refresh(self) -> bool:
        return self._settings.refresh.path is not None

    async def login(self) -> TokenGrant:
        login = self._settings.login
        body = {login.username_field: login.username, login.password_field: login.password.value}
        return await self._request(
            "login",
            login.method,
            login.path,
            {"json": body},
            token_field=login.token_field,
            expires_in_field=login.expires_in_field,
        )

    async def refresh(self, grant: TokenGrant) -> TokenGrant:
        refresh = self._settings.refresh
        assert refresh.path is not None
        header = self._settings.header.replace("{token}", grant.token)
        return await self._request(
            "refresh",
            refresh.method,
            refresh.path,
            {"headers": {self._settings.header_name: header}},
            token_field=refresh.token_field or self._settings.login.token_field,
            expires_in_field=refresh.expires_in_field or self._settings.login.expires_in_field,
        )

    async def _request(
        self,
        what: str,
        method: str,
        path: str,
        options: dict[str, Any],
        *,
        token_field: str,
        expires_in_field: str | None,
    ) -> TokenGrant:
        sent_at = self._clock.now()
        try:
            response = await send(self._client, method, join_url(self._base_url, path), **options)
        except UploaderError as error:  # no answer, or a request HTTP cannot carry
            self._events.request_answered(what, None)
            raise TokenRequestError(f"{what} request failed: {error}") from None
        status = response.status_code
        self._events.request_answered(what, status)
        if not 200 <= status < 300:
            body = self._excerpt(response, 200)
            raise TokenRequestError(
                f"{what} answered {status} {response.reason_phrase}: {body}".rstrip(": "),
                status=status,
                rejected=status in (400, 401, 403),
            )
        try:
            data = response.json()
        except ValueError:
            raise TokenRequestError(
                f"{what} answered {status} but the body is not JSON: {self._excerpt(response, 100)}",
                status=status,
            ) from None
        try:
            token = dig(data, token_field)
        except MissingValueError:
            raise TokenRequestError(
                f"{what} answered {status} without a token at {token_field!r}", status=status
            ) from None
        if not isinstance(token, str) or not _HEADER_SAFE.fullmatch(token):
            # Non-ASCII or control characters would break (or inject into) every request.
            raise TokenRequestError(
                f"{what} answered {status} but {token_field!r} is not a token", status=status
            )
        expires_in = dig_optional(data, expires_in_field)
        try:
            expires_at = expiry_for(token, sent_at, expires_in, self._settings.default_lifetime)
        except ValueError as error:
            raise TokenRequestError(f"{what} answered {status} but {error}", status=status) from None
        return TokenGrant(token=token, expires_at=expires_at, obtained_at=sent_at)

    def _excerpt(self, response: httpx.Response, limit: int) -> str:
        """The start of the body for an error message, without the password.

        Some frameworks quote the request body in their errors (FastAPI's 422 ``input``),
        and the message reaches logs and exceptions that may not pass the redactor.
        """
        password = self._settings.login.password.value
        # Scrub before shortening, so a password cut at the end cannot survive in part.
        text = excerpt(response, limit + 4 * len(password))
        for form in {password, json.dumps(password)[1:-1]} - {""}:
            text = text.replace(form, REDACTED)
        return text[:limit] + ("..." if len(text) > limit else "")
