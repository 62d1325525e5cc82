"""Flow R: Runrun.it-style documents with static ``app-key``/``user-token`` headers.

A document is created with its name and size and answered with presigned POST fields;
the client uploads to the storage endpoint, then confirms with ``mark_as_uploaded``.
"""

from __future__ import annotations

import hmac
import itertools
import re
from dataclasses import dataclass
from typing import Any

from uploader_daemon.emulator.state import EmulatorState, safe_filename
from uploader_daemon.emulator.wire import Request, Response, Route, json_error, json_response, route

FLOW = "R"


@dataclass
class _Document:
    document_id: int
    task_id: str
    name: str
    size: int
    key: str
    confirmed: bool = False


class DocumentsApi:
    """``POST /tasks``, ``POST /documents?task_id=``, ``POST /documents/{id}/mark_as_uploaded``."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self._documents: dict[int, _Document] = {}
        self._document_ids = itertools.count(1)
        self._task_ids = itertools.count(1)

    def routes(self) -> list[Route]:
        """The flow's endpoints."""
        return [
            route("POST", r"/tasks", self.create_task),
            route("POST", r"/documents", self.create_document),
            route("POST", r"/documents/(?P<id>[^/]+)/mark_as_uploaded", self.mark_as_uploaded),
        ]

    def create_task(self, request: Request, _match: re.Match[str]) -> Response:
        """Create a task to attach documents to; answer ``{"id": int, ...task}``."""
        self._require_api_keys(request)
        task = request.read_json().get("task")
        if not isinstance(task, dict):
            raise json_error(422, "the body needs a 'task' object")
        with self._state.lock:
            task_id = next(self._task_ids)
        return json_response(200, {**task, "id": task_id})

    def create_document(self, request: Request, _match: re.Match[str]) -> Response:
        """Create a document record and answer the presigned fields to upload it with."""
        self._require_api_keys(request)
        task_id = request.query.get("task_id", "")
        if not task_id:
            raise json_error(422, "the query string needs task_id")
        document = request.read_json().get("document")
        if not isinstance(document, dict):
            raise json_error(422, "the body needs a 'document' object")
        name, size = _validated_document(document)
        with self._state.lock:
            document_id = next(self._document_ids)
            key = f"documents/{document_id}/{safe_filename(name)}"
            policy = self._state.policies.issue(
                flow=FLOW,
                key=key,
                now=self._state.now(),
                lifetime=self._state.settings.storage_policy_lifetime,
            )
            self._documents[document_id] = _Document(document_id, task_id, name, size, key)
            self._state.counters["documents_created"] += 1
        return json_response(200, {"id": document_id, "fields": policy.fields})

    def mark_as_uploaded(self, request: Request, match: re.Match[str]) -> Response:
        """Confirm a document; only possible once its object is in storage."""
        self._require_api_keys(request)
        raw_id = match.group("id")
        with self._state.lock:
            numeric = raw_id.isascii() and raw_id.isdigit()
            document = self._documents.get(int(raw_id)) if numeric else None
            if document is None:
                raise json_error(404, f"no document {raw_id}")
            if document.key not in self._state.objects:
                raise json_error(422, "the file was not uploaded to storage yet")
            if document.confirmed:
                # Harmless for the server, but a client confirming twice has a retry bug.
                self._state.counters["duplicate_confirms"] += 1
            else:
                document.confirmed = True
                self._state.counters["documents_confirmed"] += 1
        return json_response(200, {"id": document.document_id, "uploaded": True})

    def _require_api_keys(self, request: Request) -> None:
        settings = self._state.settings
        app_key = request.headers.get("app-key", "")
        user_token = request.headers.get("user-token", "")
        # compare_digest on both, always, so the check takes the same time either way.
        app_key_ok = hmac.compare_digest(app_key.encode(), settings.app_key.encode())
        user_token_ok = hmac.compare_digest(user_token.encode(), settings.user_token.encode())
        if not (app_key_ok and user_token_ok):
            raise json_error(401, "invalid app-key or user-token")


def _validated_document(document: dict[str, Any]) -> tuple[str, int]:
    """Return the document's name and size, or raise a 422 naming what is wrong."""
    name = document.get("data_file_name")
    size = document.get("data_file_size")
    problems: list[str] = []
    if not (isinstance(name, str) and name):
        problems.append("data_file_name must be a non-empty string")
    # bool is an int subclass; True is not a size.
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
        problems.append("data_file_size must be a non-negative integer")
    if not isinstance(document.get("warning_duplicate"), bool):
        problems.append("warning_duplicate must be true or false")
    # The isinstance checks repeat the ones above so the type checker sees them.
    if problems or not isinstance(name, str) or not isinstance(size, int):
        raise json_error(422, "; ".join(problems))
    return name, size
