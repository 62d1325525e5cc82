"""Flow P: a presigned upload service that scans files after upload and reports status.

No credential is required (any Authorization header is accepted and ignored). A file
whose name contains "reject" fails its scan, so tests can drive the error path.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from uploader_daemon.emulator.state import EmulatorState, safe_filename
from uploader_daemon.emulator.wire import Request, Response, Route, json_error, json_response, route

FLOW = "P"
REJECT_MARKER = "reject"


@dataclass
class _Upload:
    file_id: str
    file_name: str
    key: str
    confirmed: bool = False
    polls_after_confirm: int = 0


class PresignedApi:
    """``POST /upload``, ``POST /confirm-upload``, ``GET /consult-status?file_id=``."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._uploads: dict[str, _Upload] = {}

    def routes(self) -> list[Route]:
        """The flow's endpoints."""
        return [
            route("POST", r"/upload", self.request_upload),
            route("POST", r"/confirm-upload", self.confirm_upload),
            route("GET", r"/consult-status", self.consult_status),
        ]

    def request_upload(self, request: Request, _match: re.Match[str]) -> Response:
        """Answer presigned fields, the new file id, and the storage URL."""
        body = request.read_json()
        problems = [
            f"{name} must be {kind.__name__}"
            for name, kind in (("file_name", str), ("extension", str), ("len", int), ("type", str))
            if not isinstance(body.get(name), kind) or isinstance(body.get(name), bool)
        ]
        if problems:
            raise json_error(422, "; ".join(problems))
        file_name: str = body["file_name"]
        file_id = str(uuid.uuid4())
        key = f"uploads/{file_id}/{safe_filename(file_name)}"
        with self._state.lock:
            policy = self._state.policies.issue(
                flow=FLOW,
                key=key,
                now=self._state.now(),
                lifetime=self._state.settings.storage_policy_lifetime,
            )
            self._uploads[file_id] = _Upload(file_id, file_name, key)
            self._state.counters["documents_created"] += 1
        return json_response(
            200,
            {
                "fields": policy.fields,
                "file_id": file_id,
                "file_name": file_name,
                "url": self._state.storage_url,
            },
        )

    def confirm_upload(self, request: Request, _match: re.Match[str]) -> Response:
        """Start processing a file once its object is in storage."""
        file_id = request.read_json().get("file_id")
        if not isinstance(file_id, str):
            raise json_error(422, "the body needs a string 'file_id'")
        with self._state.lock:
            upload = self._uploads.get(file_id)
            if upload is None:
                raise json_error(404, f"no file {file_id}")
            if upload.key not in self._state.objects:
                raise json_error(422, "the file was not uploaded to storage yet")
            if upload.confirmed:
                self._state.counters["duplicate_confirms"] += 1
            else:
                upload.confirmed = True
                self._state.counters["documents_confirmed"] += 1
        return json_response(200, {"file_id": file_id, "status": "processing"})

    def consult_status(self, request: Request, _match: re.Match[str]) -> Response:
        """Report pending, then processing for a few polls, then completed or error."""
        file_id = request.query.get("file_id", "")
        if not file_id:
            raise json_error(422, "the query string needs file_id")
        with self._state.lock:
            upload = self._uploads.get(file_id)
            if upload is None:
                raise json_error(404, f"no file {file_id}")
            self._state.counters["status_polls"] += 1
            if not upload.confirmed:
                return json_response(200, {"status": "pending", "details": None})
            upload.polls_after_confirm += 1
            if upload.polls_after_confirm <= self._state.settings.status_polls_until_done:
                return json_response(200, {"status": "processing", "details": None})
            stored = self._state.objects.get(upload.key)
            names = upload.file_name + " " + (stored.name if stored else "")
        if REJECT_MARKER in names.lower():
            return json_response(200, {"status": "error", "details": "virus scan failed"})
        return json_response(200, {"status": "completed", "details": "scan clean"})
