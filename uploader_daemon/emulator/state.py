"""Everything the handler threads share, behind one lock.

One re-entrant lock guards all of it, and a Condition on that lock is notified after
every request, so a test can wait for "the third file arrived" without sleeping. The
lock is re-entrant because ``Emulator.wait_for`` evaluates the caller's predicate with
the lock held, and the predicate reads snapshots that take the lock again.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import threading
from collections import deque
from pathlib import Path

from uploader_daemon.emulator.models import (
    COUNTER_NAMES,
    EmulatorSettings,
    ReceivedFile,
    RequestRecord,
    ScriptedResponse,
)
from uploader_daemon.emulator.multipart import FilePart, MultipartForm
from uploader_daemon.emulator.policy import PolicyBook
from uploader_daemon.emulator.tokens import IssuedToken, TokenRegistry, TokenStatus
from uploader_daemon.emulator.wire import HttpError, Request, json_error

_BEARER = re.compile(r"bearer\s+(\S+)\s*", re.IGNORECASE)
# Control characters (C0, DEL, C1) and lone surrogates, which JSON bodies may carry
# ("\udce9") and which no file system encoding can write.
_UNSAFE_NAME_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Linux allows 255 bytes per name; staying below leaves room for a suffix or prefix.
MAX_FILENAME_BYTES = 200
_MAX_KEPT_EXTENSION = 16


def safe_filename(name: str, fallback: str = "upload.bin") -> str:
    """The last path component of a client-supplied filename, safe to create on disk.

    Clients may send ``../../etc/passwd`` or ``C:\\Users\\x.txt``; only the base name
    is kept. Control characters and lone surrogates become "_"; names that are empty or
    all dots fall back to ``fallback``; a name over ``MAX_FILENAME_BYTES`` in UTF-8 is
    shortened at a character boundary, keeping a short extension. Any text works,
    whether it was decoded from UTF-8, latin-1 or JSON.
    """
    base = re.split(r"[/\\]", name)[-1]
    base = _UNSAFE_NAME_CHARACTERS.sub("_", base).strip()
    if not base.strip("."):
        return fallback
    if len(base.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return base
    stem, dot, extension = base.rpartition(".")
    suffix = dot + extension if stem and len(extension) <= _MAX_KEPT_EXTENSION else ""
    budget = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
    head = base[: len(base) - len(suffix)].encode("utf-8")[:budget].decode("utf-8", "ignore")
    return head + suffix


class EmulatorState:
    """Counters, records, credentials, scripts and policies, guarded by ``lock``."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.received: list[ReceivedFile] = []
        self.requests: list[RequestRecord] = []
        self.tokens = TokenRegistry()
        # Fresh secrets per emulator: credentials from one test never work in another.
        self.jwt_secret = secrets.token_bytes(32)
        self.policies = PolicyBook(secrets.token_bytes(32), settings.storage_generation)
        # Storage key -> the object last stored under it.
        self.objects: dict[str, ReceivedFile] = {}
        self.login_enabled = True
        # Known once the server is bound; presigned answers point clients at it.
        self.base_url = ""
        self._scripts: dict[tuple[str, str], deque[ScriptedResponse]] = {}
        self.spool_dir = settings.storage_dir / ".spool"

    @property
    def storage_url(self) -> str:
        """The storage POST endpoint clients upload presigned forms to."""
        return f"{self.base_url}/storage/"

    def now(self) -> float:
        """The injected wall clock."""
        return self.settings.clock()

    def prepare_directories(self) -> None:
        """Create the storage and spool directories (called when the server starts)."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)

    def bump(self, counter: str) -> None:
        """Add one to a counter."""
        with self.lock:
            self.counters[counter] += 1

    def add_scripts(self, method: str, path: str, responses: tuple[ScriptedResponse, ...]) -> None:
        """Queue canned responses for the next requests to ``method path``."""
        with self.lock:
            queue = self._scripts.setdefault((method.upper(), path), deque())
            queue.extend(responses)

    def pop_script(self, method: str, path: str) -> ScriptedResponse | None:
        """Take the next canned response for ``method path``, if any is queued."""
        with self.lock:
            queue = self._scripts.get((method, path))
            if not queue:
                return None
            return queue.popleft()

    def record(self, record: RequestRecord) -> None:
        """Keep a request record and wake everyone waiting for a change."""
        with self.changed:
            self.requests.append(record)
            self.changed.notify_all()

    def add_received(self, received: ReceivedFile) -> None:
        """Keep a successfully delivered file."""
        with self.lock:
            self.received.append(received)

    def place_file(self, part: FilePart, *relative: str) -> Path:
        """Move a spooled file part to ``storage_dir/relative...`` and return its path.

        Raises:
            ValueError: the destination would fall outside the storage directory.
        """
        root = self.settings.storage_dir.resolve()
        destination = root.joinpath(*relative).resolve()
        if root not in destination.parents:
            raise ValueError(f"refusing to store outside the storage directory: {relative}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part.path, destination)
        return destination

    def receive(
        self, flow: str, part: FilePart, form: MultipartForm, request: Request, *relative: str
    ) -> ReceivedFile:
        """Store a file part of ``form`` at ``storage_dir/relative...`` and describe it."""
        path = self.place_file(part, *relative)
        return ReceivedFile(
            flow,
            part.filename,
            part.size,
            part.sha256,
            path,
            dict(form.fields),
            form.part_order,
            dict(request.headers),
            raw_filename=part.raw_filename,
            idempotency_key=request.headers.get("idempotency-key"),
        )

    def authenticate(self, request: Request) -> str:
        """Check a login body ``{"username", "password"}``; return the username.

        Raises:
            HttpError: 400 for a malformed body, 401 for wrong credentials or while
                logins are disabled. Both count as failed logins.
        """
        try:
            body = request.read_json()
        except HttpError:
            self.bump("failed_logins")
            raise
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            self.bump("failed_logins")
            raise json_error(400, "the body needs string fields 'username' and 'password'")
        with self.lock:
            expected = self.settings.users.get(username)
            accepted = (
                self.login_enabled
                and expected is not None
                and hmac.compare_digest(expected.encode(), password.encode())
            )
            self.counters["logins" if accepted else "failed_logins"] += 1
        if not accepted:
            raise json_error(401, "invalid username or password")
        return username

    def user_id(self, username: str) -> str:
        """A stable user id (``user-1`` for the first configured user)."""
        return f"user-{list(self.settings.users).index(username) + 1}"

    def require_bearer(self, request: Request, flow: str) -> tuple[str, IssuedToken]:
        """Return the valid bearer token of ``request`` for ``flow`` and what it is.

        Raises:
            HttpError: 401 when the token is missing, unknown, expired or revoked; the
                last two are counted, since a client should never send them.
        """
        match = _BEARER.fullmatch(request.headers.get("authorization", ""))
        if match is None:
            raise json_error(401, "missing bearer token")
        token = match.group(1)
        with self.lock:
            status, issued = self.tokens.check(token, flow, self.now())
            if status is TokenStatus.EXPIRED:
                self.counters["expired_token_uses"] += 1
            elif status is TokenStatus.REVOKED:
                self.counters["revoked_token_uses"] += 1
        if status is not TokenStatus.VALID or issued is None:
            raise json_error(401, f"the token is {status.value}")
        return token, issued
