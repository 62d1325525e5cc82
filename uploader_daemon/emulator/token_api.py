"""Flow T: login for an opaque bearer token, refresh it, send files with it."""

from __future__ import annotations

import re
import uuid

from uploader_daemon.emulator.multipart import MultipartError
from uploader_daemon.emulator.state import EmulatorState, safe_filename
from uploader_daemon.emulator.tokens import numeric_date
from uploader_daemon.emulator.wire import (
    Request,
    Response,
    Route,
    json_error,
    json_response,
    multipart_error,
    route,
)

FLOW = "T"


class TokenApi:
    """``POST /auth/login``, ``GET /auth/tokenRefresh``, ``POST /api/envio``."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def routes(self) -> list[Route]:
        """The flow's endpoints."""
        return [
            route("POST", r"/auth/login", self.login),
            route("GET", r"/auth/tokenRefresh", self.refresh),
            route("POST", r"/api/envio", self.send),
        ]

    def login(self, request: Request, _match: re.Match[str]) -> Response:
        """Answer good credentials with a new token and its lifetime in seconds."""
        username = self._state.authenticate(request)
        return self._token_response(username)

    def refresh(self, request: Request, _match: re.Match[str]) -> Response:
        """Trade a valid token for a new one; the old one stays valid until it expires."""
        _token, issued = self._state.require_bearer(request, FLOW)
        self._state.bump("refreshes")
        return self._token_response(issued.username)

    def send(self, request: Request, _match: re.Match[str]) -> Response:
        """Receive one file; the token is checked before a byte of the body is read."""
        self._state.require_bearer(request, FLOW)
        try:
            form = request.read_multipart(self._state.spool_dir)
        except MultipartError as error:
            raise multipart_error(error) from error
        try:
            if not form.files:
                raise json_error(400, "the form has no file part")
            upload_id = str(uuid.uuid4())
            part = form.files[0]
            name = safe_filename(part.filename)
            received = self._state.receive(FLOW, part, form, request, "envio", upload_id, name)
            with self._state.lock:
                self._state.add_received(received)
                self._state.counters["uploads"] += 1
        finally:
            form.discard()
        return json_response(
            200, {"id": upload_id, "name": part.filename, "size": part.size, "sha256": part.sha256}
        )

    def _token_response(self, username: str) -> Response:
        lifetime = self._state.settings.token_lifetime
        with self._state.lock:
            token = self._state.tokens.issue_opaque(FLOW, username, self._state.now() + lifetime)
        return json_response(200, {"access_token": token, "expires_in": numeric_date(lifetime)})
