"""How the emulator answers one request: faults first, then scripts, replays and the flows.

``Application.handle`` turns a ``wire.Request`` into a ``wire.Response`` and never
raises. Precedence: an outage (``fail_all``) answers everything; then a queued
``ScriptedResponse``; then an Idempotency-Key replay (``replays``); then the route of
the flow that owns the path. ``hang_all`` is the transport's business (it answers
nothing at all), see ``http_server``.
"""

from __future__ import annotations

import logging

from uploader_daemon.emulator.conversion_api import ConversionApi
from uploader_daemon.emulator.documents_api import DocumentsApi
from uploader_daemon.emulator.faults import FaultSwitches, Outage
from uploader_daemon.emulator.models import ScriptedResponse
from uploader_daemon.emulator.presigned_api import PresignedApi
from uploader_daemon.emulator.replays import DEDUPLICATED_ROUTES, ReplayBook
from uploader_daemon.emulator.state import EmulatorState
from uploader_daemon.emulator.storage_api import StorageApi, s3_error
from uploader_daemon.emulator.token_api import TokenApi
from uploader_daemon.emulator.wire import HttpError, Request, Response, Route, dispatch, json_response

logger = logging.getLogger(__name__)


class Application:
    """Answers requests: faults first, then scripts, replays and the flows' routes."""

    def __init__(self, state: EmulatorState, faults: FaultSwitches, replays: ReplayBook) -> None:
        self.state = state
        self.faults = faults
        self.replays = replays
        self._storage_routes = StorageApi(state).routes()
        self._routes: list[Route] = [
            *TokenApi(state).routes(),
            *DocumentsApi(state).routes(),
            *PresignedApi(state).routes(),
            *ConversionApi(state).routes(),
            *self._storage_routes,
        ]

    def outage_answer(self, request: Request) -> Response | None:
        """The answer ``fail_all`` gives ``request`` (counted), or None when there is no outage."""
        outage = self.faults.outage()
        if outage is None:
            return None
        self.state.bump("outage_answers")
        return self._outage_response(request, outage)

    def handle(self, request: Request) -> Response:
        """Answer one request; never raises (a handler bug becomes a JSON 500)."""
        outage = self.outage_answer(request)
        if outage is not None:
            return outage
        scripted = self.state.pop_script(request.method, request.path)
        if scripted is not None and not scripted.reset_after_body:
            return scripted_response(scripted)
        response = self._deduplicated(request)
        if scripted is not None:
            # The request was handled for real; only its answer is lost on the way.
            return Response(0, reset=True)
        return response

    def _deduplicated(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if (
            key is None
            or not self.state.settings.deduplicate_by_idempotency_key
            or (request.method, request.path) not in DEDUPLICATED_ROUTES
        ):
            return self._dispatch(request)
        slot = (request.method, request.path, key)
        try:
            kept = self.replays.begin(slot)
        except HttpError as error:
            return error.response
        if kept is not None:
            self.state.bump("replays_answered")
            return kept
        response: Response | None = None
        try:
            response = self._dispatch(request)
        finally:
            self.replays.finish(slot, response)
        return response

    def _dispatch(self, request: Request) -> Response:
        try:
            return dispatch(self._routes, request)
        except HttpError as error:
            return error.response
        except Exception as error:
            # A bug in the emulator must show up in the test as a 500 with its cause,
            # and in the log with its traceback, not as a hung connection.
            logger.exception("emulator_handler_failed", extra={"path": request.path})
            return json_response(500, {"error": f"emulator bug: {error!r}"})

    def _outage_response(self, request: Request, outage: Outage) -> Response:
        # Storage clients parse S3's XML errors, API clients JSON: each gets its kind.
        if any(candidate.pattern.fullmatch(request.path) for candidate in self._storage_routes):
            code = "ServiceUnavailable" if outage.status == 503 else "InternalError"
            response = s3_error(outage.status, code, "Emulated outage.")
        else:
            response = json_response(outage.status, {"error": "emulated outage"})
        response.headers.update(outage.headers())
        return response


def scripted_response(scripted: ScriptedResponse) -> Response:
    """The response a script stands for; a ``body_size`` body is generated while it is sent."""
    body, headers = scripted.encoded()
    if scripted.body_size is None:
        return Response(scripted.status, body, headers, delay=scripted.delay, framing=scripted.framing)
    return Response(
        scripted.status,
        b"",
        headers,
        delay=scripted.delay,
        stream=scripted.generated_chunks,
        stream_length=scripted.body_size,
        framing=scripted.framing,
    )
