"""Idempotency-Key deduplication for the create calls, as Stripe-style APIs offer it.

With ``EmulatorSettings(deduplicate_by_idempotency_key=True)``, a create call that
carries an ``Idempotency-Key`` header is looked up by (method, path, key) before it is
handled: a key already answered 2xx gets that very answer again (status, headers and
body) and nothing is created or stored; a key whose first request is still being
handled gets a 409, as a concurrent retry would from a real server. Non-2xx answers
are not kept, so a retry after a failure is handled afresh. Request bodies are not
compared with the first request's: only the key counts.
"""

from __future__ import annotations

import dataclasses
import threading

from uploader_daemon.emulator.wire import Response, json_error

# The calls that create something: a replay there must not create it twice.
DEDUPLICATED_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/api/envio"),  # T: one uploaded file
        ("POST", "/tasks"),  # R: a task
        ("POST", "/documents"),  # R: a document and its presigned fields
        ("POST", "/upload"),  # P: an upload slot
        ("POST", "/api/tasks"),  # C: a conversion task with its file
    }
)

Slot = tuple[str, str, str]


class ReplayBook:
    """Answers kept by (method, path, Idempotency-Key); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[Slot, Response] = {}
        self._in_flight: set[Slot] = set()

    def begin(self, slot: Slot) -> Response | None:
        """Return a copy of the answer kept for ``slot``, or None and mark it in flight.

        Raises:
            HttpError: 409 while another request with the same slot is being handled.
        """
        with self._lock:
            kept = self._answers.get(slot)
            if kept is not None:
                return dataclasses.replace(kept, headers=dict(kept.headers))
            if slot in self._in_flight:
                raise json_error(409, "a request with this Idempotency-Key is still being handled")
            self._in_flight.add(slot)
            return None

    def finish(self, slot: Slot, response: Response | None) -> None:
        """End the request that ``begin`` let through; keep its answer if it was a 2xx.

        ``response`` is None when handling failed without an answer. Streamed answers
        (a file, a generated body) are never kept: they cannot be sent twice.
        """
        with self._lock:
            self._in_flight.discard(slot)
            if (
                response is not None
                and 200 <= response.status < 300
                and response.file is None
                and response.stream is None
            ):
                self._answers[slot] = response
