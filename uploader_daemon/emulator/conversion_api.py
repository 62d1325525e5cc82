"""Flow C: a conversion service behind a JWT login (the seed's Flask/Celery API).

The JWT's ``exp`` claim is the only expiry a client gets (no ``expires_in``). A task
reports PENDING, then STARTED, then SUCCESS; a file whose name contains "reject" ends
in FAILURE. The "converted" file is the original with a one-line prefix, streamed
from disk so a large file is never loaded into memory.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePath
from urllib.parse import quote

from uploader_daemon.emulator.multipart import MultipartError
from uploader_daemon.emulator.state import EmulatorState, safe_filename
from uploader_daemon.emulator.tokens import encode_jwt, numeric_date
from uploader_daemon.emulator.wire import (
    Request,
    Response,
    Route,
    json_error,
    json_response,
    multipart_error,
    route,
)

FLOW = "C"
REJECT_MARKER = "reject"
LOGIN_MESSAGE = "Inicio de sesión exitoso"
FAILURE_RESULT = "{'error': 'unsupported codec'}"


@dataclass
class _Task:
    task_id: str
    owner: str
    name: str
    conversion_type: str
    path: Path
    polls: int = 0
    state: str = "PENDING"

    @property
    def converted_name(self) -> str:
        return f"{PurePath(self.name).stem}.{self.conversion_type}"


class ConversionApi:
    """``POST /api/auth/login``, ``/api/tasks`` (POST, GET, DELETE), ``GET /api/download``."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._tasks: dict[str, _Task] = {}

    def routes(self) -> list[Route]:
        """The flow's endpoints."""
        return [
            route("POST", r"/api/auth/login", self.login),
            route("POST", r"/api/tasks", self.create_task),
            route("GET", r"/api/tasks/(?P<id>[^/]+)", self.get_task),
            route("DELETE", r"/api/tasks/(?P<id>[^/]+)", self.delete_task),
            route("GET", r"/api/download", self.download),
        ]

    def login(self, request: Request, _match: re.Match[str]) -> Response:
        """Answer good credentials with an HS256 JWT whose ``exp`` is its only expiry."""
        username = self._state.authenticate(request)
        with self._state.lock:
            now = self._state.now()
            expires_at = now + self._state.settings.jwt_lifetime
            claims = {
                "sub": username,
                "iat": numeric_date(now),
                "exp": numeric_date(expires_at),
                # Two logins in the same second must still get distinct tokens.
                "jti": secrets.token_hex(8),
            }
            token = encode_jwt(claims, self._state.jwt_secret)
            self._state.tokens.remember(token, FLOW, username, expires_at)
        return json_response(
            200, {"message": LOGIN_MESSAGE, "token": token, "id": self._state.user_id(username)}
        )

    def create_task(self, request: Request, _match: re.Match[str]) -> Response:
        """Receive a file and a ``conversion_type``; start a conversion task."""
        _token, issued = self._state.require_bearer(request, FLOW)
        try:
            form = request.read_multipart(self._state.spool_dir)
        except MultipartError as error:
            raise multipart_error(error) from error
        try:
            conversion_type = form.fields.get("conversion_type", "").strip()
            if not form.files:
                raise json_error(400, "the form has no file part")
            if not re.fullmatch(r"[A-Za-z0-9]{1,16}", conversion_type):
                raise json_error(400, "the form needs a conversion_type such as 'mp4'")
            task_id = str(uuid.uuid4())
            part = form.files[0]
            name = safe_filename(part.filename)
            received = self._state.receive(FLOW, part, form, request, "tasks", task_id, name)
            with self._state.lock:
                self._tasks[task_id] = _Task(
                    task_id, issued.username, received.name, conversion_type, received.path
                )
                self._state.add_received(received)
                self._state.counters["tasks_created"] += 1
        finally:
            form.discard()
        return json_response(200, {"message": "Conversion started", "task_id": task_id})

    def get_task(self, request: Request, match: re.Match[str]) -> Response:
        """Report the task's state; each poll moves it one step towards done."""
        _token, issued = self._state.require_bearer(request, FLOW)
        with self._state.lock:
            task = self._owned_task(match.group("id"), issued.username)
            self._state.counters["task_polls"] += 1
            task.polls += 1
            result: str | None = None
            if task.polls <= self._state.settings.task_polls_until_done:
                task.state = "PENDING" if task.polls == 1 else "STARTED"
            elif REJECT_MARKER in task.name.lower():
                task.state, result = "FAILURE", FAILURE_RESULT
            else:
                task.state = "SUCCESS"
                result = f"{{'status': 'File saved to converted/{task.converted_name}'}}"
            return json_response(200, {"state": task.state, "result": result})

    def delete_task(self, request: Request, match: re.Match[str]) -> Response:
        """Forget a task (its received file stays on disk for the test to inspect)."""
        _token, issued = self._state.require_bearer(request, FLOW)
        with self._state.lock:
            task = self._owned_task(match.group("id"), issued.username)
            del self._tasks[task.task_id]
        return Response(204)

    def download(self, request: Request, _match: re.Match[str]) -> Response:
        """Stream the converted file once the task reported SUCCESS; 409 before that."""
        _token, issued = self._state.require_bearer(request, FLOW)
        task_id = request.query.get("task_id", "")
        if not task_id:
            raise json_error(422, "the query string needs task_id")
        with self._state.lock:
            task = self._owned_task(task_id, issued.username)
            if task.state != "SUCCESS":
                raise json_error(409, f"the task is {task.state}, not SUCCESS")
            self._state.counters["downloads"] += 1
        prefix = b"CONVERTED:" + task.conversion_type.encode() + b"\n"
        return Response(
            200,
            prefix,
            {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": attachment_disposition(task.converted_name),
            },
            file=task.path,
        )

    def _owned_task(self, task_id: str, username: str) -> _Task:
        task = self._tasks.get(task_id)
        # Another user's task is as invisible as a missing one.
        if task is None or task.owner != username:
            raise json_error(404, f"no task {task_id}")
        return task


def attachment_disposition(filename: str) -> str:
    """``attachment; filename="..."``, plus an RFC 5987 ``filename*`` for non-ASCII names.

    HTTP headers are Latin-1 on the wire, so a non-ASCII name gets an ASCII fallback in
    ``filename`` and its exact UTF-8 spelling in ``filename*``.
    """
    escaped = filename.replace("\\", "\\\\").replace('"', '\\"')
    if filename.isascii() and filename.isprintable():
        return f'attachment; filename="{escaped}"'
    fallback = escaped.encode("ascii", "replace").decode("ascii")
    fallback = "".join(character if character.isprintable() else "_" for character in fallback)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
