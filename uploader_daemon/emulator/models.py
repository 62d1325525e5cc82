"""The emulator's public value types: its settings, its canned answers and what it records.

Everything here is immutable (or copied on the way out), so tests can keep what they
read from a running emulator without racing the handler threads.

A ``ScriptedResponse`` can also misbehave the way broken servers do: a generated body
of any size streamed in chunks (``body_size``), with or without a Content-Length
(``framing``), or no answer at all after the request was handled (``reset_after_body``).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Every counter the emulator keeps; all are present from the start at 0, so a test can
# assert `counters["credential_leaks"] == 0` without guarding for a missing key.
#   logins / failed_logins    T and C logins that did / did not yield a token (a
#                             malformed body or disabled logins count as failed)
#   refreshes                 successful T token refreshes
#   uploads                   files accepted by T's POST /api/envio
#   expired_token_uses        requests bearing a T token or C JWT past its expiry
#   revoked_token_uses        requests bearing a token revoked by revoke_tokens()
#                             (expiry is checked first: a token both expired and
#                             revoked counts as expired)
#   documents_created         R documents and P upload slots handed out
#   documents_confirmed       first confirmations (R mark_as_uploaded, P confirm-upload)
#   duplicate_confirms        confirmations of an already confirmed id
#   storage_posts             every POST to the storage endpoint, accepted or not
#   storage_rejections        storage POSTs refused (policy, signature, size, form)
#   credential_leaks          storage POSTs carrying Authorization, app-key or user-token
#   status_polls              P consult-status answers for a known file_id
#   tasks_created / task_polls / downloads   C conversion tasks, state polls, downloads
#   outage_answers            requests answered by fail_all() instead of their endpoint
#   hung_requests             requests read and then left unanswered by hang_all()
#   answers_dropped           requests handled normally whose answer was replaced by a
#                             connection reset (ScriptedResponse(reset_after_body=True))
#   replays_answered          requests answered with the stored answer of an earlier
#                             request with the same Idempotency-Key (deduplication on)
# Scripted responses replace normal handling, so they move no counter (except a
# reset_after_body one, which handles the request normally and drops the answer).
COUNTER_NAMES: tuple[str, ...] = (
    "logins",
    "failed_logins",
    "refreshes",
    "uploads",
    "expired_token_uses",
    "revoked_token_uses",
    "documents_created",
    "documents_confirmed",
    "duplicate_confirms",
    "storage_posts",
    "storage_rejections",
    "credential_leaks",
    "status_polls",
    "tasks_created",
    "task_polls",
    "downloads",
    "outage_answers",
    "hung_requests",
    "answers_dropped",
    "replays_answered",
)

STORAGE_GENERATIONS: tuple[str, ...] = ("v4", "v2")


def _default_users() -> dict[str, str]:
    return {"uploader": "s3cret"}


@dataclass(frozen=True)
class EmulatorSettings:
    """How the emulator behaves; every field has a demo-friendly default.

    Times are seconds. ``clock`` is the wall clock used for every expiry decision (token,
    JWT, storage policy) and for the ``time`` of each request record, so tests inject a
    fake clock instead of waiting. ``host``/``port`` choose where to listen; port 0 asks
    the kernel for a free port.

    ``deduplicate_by_idempotency_key`` makes the create calls (T ``POST /api/envio``, R
    ``POST /tasks`` and ``POST /documents``, P ``POST /upload``, C ``POST /api/tasks``)
    honour an ``Idempotency-Key`` header: a request whose key (on the same method and
    path) was already answered 2xx gets that same answer again and changes nothing,
    counted in ``replays_answered``; a request whose key is still being handled gets a
    409. The request body is not compared; only the key counts.

    Raises:
        ValueError: a field is out of range (checked at construction).
    """

    storage_dir: Path
    users: Mapping[str, str] = field(default_factory=_default_users)
    token_lifetime: float = 3600.0
    jwt_lifetime: float = 3600.0
    app_key: str = "app-key-123"
    user_token: str = "user-token-456"
    storage_policy_lifetime: float = 300.0
    storage_generation: str = "v4"
    status_polls_until_done: int = 2
    task_polls_until_done: int = 2
    clock: Callable[[], float] = time.time
    host: str = "127.0.0.1"
    port: int = 0
    deduplicate_by_idempotency_key: bool = False

    def __post_init__(self) -> None:
        if self.storage_generation not in STORAGE_GENERATIONS:
            raise ValueError(
                f"storage_generation must be one of {STORAGE_GENERATIONS}, not {self.storage_generation!r}"
            )
        for name in ("status_polls_until_done", "task_polls_until_done", "port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("token_lifetime", "jwt_lifetime", "storage_policy_lifetime"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")


class BodyFraming(enum.StrEnum):
    """How a scripted answer tells the client where its body ends."""

    # A Content-Length header with the exact size (what every endpoint does).
    CONTENT_LENGTH = "content-length"
    # Transfer-Encoding: chunked, one chunk per generated piece, then the last chunk.
    CHUNKED = "chunked"
    # Neither header: the body ends when the server closes the connection.
    UNTIL_CLOSE = "until-close"


# Generated bodies go out in pieces of this size, each a slice of one filler block, so
# the emulator's memory does not grow with ``body_size``.
GENERATED_CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class ScriptedResponse:
    """A canned answer that replaces normal handling for one matching request.

    ``body`` may be bytes, text (sent as UTF-8) or a dict (sent as JSON with a JSON
    content type unless ``headers`` names one). ``delay`` seconds pass, after the request
    body was read, before the answer is sent: a slow server, for client timeout tests.

    A huge body without the memory: with ``body_size`` set, the body is ``body``
    (encoded as above: a prefix such as ``b'{"error": "'``), then ``filler`` repeated,
    then ``body_end``, exactly ``body_size`` bytes in all, generated while it is sent.
    ``ScriptedResponse(500, b'{"error": "', body_size=300 * 1024 * 1024)`` is an error
    document whose start looks like JSON; with ``filler=b" "`` and ``body_end=b"}"``
    after a prefix ``b'{"id": 1'`` it is a valid, too big, JSON answer.

    ``framing`` chooses how the body's end is marked (see ``BodyFraming``); with
    ``UNTIL_CLOSE`` the connection is closed after the body. A client that stops
    reading early is normal: the emulator stops writing and closes the connection.

    ``reset_after_body=True`` simulates an answer lost on the way back: the request is
    handled normally (its body read, the upload stored and counted, an idempotent
    answer remembered), then the connection is reset without a byte of answer. The
    other fields are then ignored; the request record shows status 0 (nothing sent).

    Raises:
        ValueError: a field is out of range (checked at construction).
    """

    status: int
    body: bytes | str | dict[str, Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body_size: int | None = None
    filler: bytes = b"x"
    body_end: bytes = b""
    framing: BodyFraming = BodyFraming.CONTENT_LENGTH
    reset_after_body: bool = False

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        if not self.filler:
            raise ValueError("filler must not be empty")
        if self.body_size is not None:
            fixed = len(self.encoded()[0]) + len(self.body_end)
            if self.body_size < fixed:
                raise ValueError(f"body_size {self.body_size} is smaller than body plus body_end ({fixed})")

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """Return the body (the prefix, with ``body_size``) as bytes and the headers to send."""
        headers = dict(self.headers)
        has_content_type = any(name.lower() == "content-type" for name in headers)
        if isinstance(self.body, dict):
            if not has_content_type:
                headers["Content-Type"] = "application/json"
            return json.dumps(self.body).encode(), headers
        if isinstance(self.body, str):
            if not has_content_type:
                headers["Content-Type"] = "text/plain; charset=utf-8"
            return self.body.encode(), headers
        return bytes(self.body), headers

    def generated_chunks(self, chunk_size: int = GENERATED_CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the ``body_size`` body in pieces of at most about ``chunk_size`` bytes.

        Memory stays at one filler block whatever ``body_size`` is: every full piece is
        the same block object. Without ``body_size`` this yields the encoded body once.
        """
        prefix = self.encoded()[0]
        if self.body_size is None:
            yield prefix
            return
        if prefix:
            yield prefix
        filler_bytes = self.body_size - len(prefix) - len(self.body_end)
        # A whole number of fillers per block keeps the pattern aligned across pieces.
        block = self.filler * max(1, chunk_size // len(self.filler))
        while filler_bytes >= len(block):
            yield block
            filler_bytes -= len(block)
        if filler_bytes:
            yield block[:filler_bytes]
        if self.body_end:
            yield self.body_end


@dataclass(frozen=True)
class ReceivedFile:
    """A file the emulator accepted, as stored on disk.

    ``flow`` is "T", "R", "P" or "C"; ``name`` the multipart filename as text (see
    ``multipart.parse_content_disposition``: UTF-8, else latin-1, HTML5 escapes undone);
    ``raw_filename`` the filename parameter's bytes exactly as they were on the wire;
    ``fields`` the other form fields; ``part_order`` every part's field name in the
    order received; ``headers`` the request headers with lowercase names;
    ``idempotency_key`` the request's ``Idempotency-Key`` header, if it had one (for R
    and P that is the storage POST's header, the request that carried the file).
    ``path`` is where it is stored, under a name made safe by ``state.safe_filename``.
    """

    flow: str
    name: str
    size: int
    sha256: str
    path: Path
    fields: dict[str, str]
    part_order: tuple[str, ...]
    headers: dict[str, str]
    raw_filename: bytes = b""
    idempotency_key: str | None = None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it and answered it.

    ``time`` is the injected clock's value when the request arrived; ``path`` excludes
    the query string, which is parsed into ``query``; ``headers`` have lowercase names.
    ``status`` is 0 when no answer was sent (``hang_all``, ``reset_after_body``).
    """

    time: float
    method: str
    path: str
    query: dict[str, str]
    status: int
    authorization: str | None
    headers: dict[str, str]
