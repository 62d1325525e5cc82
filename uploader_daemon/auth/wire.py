"""The credential on the wire: one ``httpx.Auth`` that attaches it, guards it and hears 401s.

Every request a step sends "with the credential" goes through :class:`CredentialAuth`:

- it refuses to send the credential to any origin but ``api.base_url``'s
  (:func:`uploader_daemon.urls.same_origin`, the rule config validation also applies):
  :class:`ForeignOriginError`, and nothing is sent;
- it attaches the headers of the current token, logging in first when needed
  (:class:`~uploader_daemon.errors.LoginFailedError` when that fails: nothing is sent);
- every answer counts as API activity, which keeps the token renewed while in use;
- on a 401 it tells the credential which token was refused, so exactly that one is
  discarded. The caller turns the 401 into an ``AuthRejectedError`` (see ``http.py``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

import httpx

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import Credential
from uploader_daemon.errors import UploaderError
from uploader_daemon.urls import Origin, safe_url, same_origin


class ForeignOriginError(UploaderError):
    """A credentialed request was addressed to another origin than the API's."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"refusing to send the credential to {safe_url(url)}, which is not api.base_url's host"
        )
        self.url = safe_url(url)


class CredentialAuth(httpx.Auth):
    """The target's credential, for the requests that carry it."""

    def __init__(self, credential: Credential, origin: Origin | None, activity: ApiActivity) -> None:
        self._credential = credential
        self._origin = origin
        self._activity = activity

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        url = str(request.url)
        if not same_origin(url, self._origin):
            raise ForeignOriginError(url)
        used = await self._credential.headers()
        request.headers.update(used.headers)
        response = yield request
        self._activity.touch()
        if response.status_code == 401:
            self._credential.rejected(used)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # httpx's default would send the request without the credential.
        raise RuntimeError("the credential is only sent by the daemon's async client")
