"""The emulator's public value types: its settings and what it records.

Everything here is immutable (or copied on the way out), so tests can keep what they
read from a running emulator without racing the handler threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
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
# Scripted responses replace normal handling, so they move no counter.
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


@dataclass(frozen=True)
class ScriptedResponse:
    """A canned answer that replaces normal handling for one matching request.

    ``body`` may be bytes, text (sent as UTF-8) or a dict (sent as JSON with a JSON
    content type unless ``headers`` names one). ``delay`` seconds pass, after the request
    body was read, before the answer is sent: a slow server, for client timeout tests.
    """

    status: int
    body: bytes | str | dict[str, Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """Return the body as bytes and the headers to send with it."""
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


@dataclass(frozen=True)
class ReceivedFile:
    """A file the emulator accepted, as stored on disk.

    ``flow`` is "T", "R", "P" or "C"; ``name`` the multipart filename; ``fields`` the
    other form fields; ``part_order`` every part's field name in the order received;
    ``headers`` the request headers with lowercase names.
    """

    flow: str
    name: str
    size: int
    sha256: str
    path: Path
    fields: dict[str, str]
    part_order: tuple[str, ...]
    headers: dict[str, str]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it and answered it.

    ``time`` is the injected clock's value when the request arrived; ``path`` excludes
    the query string, which is parsed into ``query``; ``headers`` have lowercase names.
    """

    time: float
    method: str
    path: str
    query: dict[str, str]
    status: int
    authorization: str | None
    headers: dict[str, str]
