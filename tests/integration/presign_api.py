"""A presign API stand-in for the ``gateway_presigned`` preset, signing real S3 POST policies.

``POST {route}?upload_key=NAME&folder=FOLDER`` answers ``{"url": ..., "fields": ...}``
from boto3's ``generate_presigned_post`` for the object ``FOLDER/NAME``, path-style, so
the URL is ``{storage endpoint}/{bucket}``. What a test varies is :class:`GrantTerms`:
the signature version, extra fields (each also a policy condition, so a field the
daemon dropped fails the policy), conditions such as ``content-length-range``, the
lifetime, and how many grants are handed out already expired.

Every call is recorded with its headers and the grant handed out, so a test can assert
what the API saw and compare it with what the storage got.
"""

from __future__ import annotations

import json
import threading
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROUTE = "/presign"
# Far enough in the past that no clock skew between us and the storage can hide it.
EXPIRED_BY = 120


@dataclass(frozen=True)
class GrantTerms:
    """What each presigned POST allows."""

    expires_in: int = 300
    expired_first: int = 0
    fields: Mapping[str, str] = field(default_factory=dict)
    conditions: Sequence[object] = ()


@dataclass(frozen=True)
class PresignCall:
    """One request the stand-in answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    status: int
    grant: dict[str, Any] | None
    expired: bool


class PresignApi:
    """The stand-in on 127.0.0.1 and a free port; use as a context manager.

    ``s3`` is a boto3 S3 client whose endpoint is where the daemon must send the file
    (the storage itself or a proxy in front of it) and whose signature version is the
    one the grants use. With ``required_headers`` a call lacking one of them gets 401.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        terms: GrantTerms | None = None,
        required_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.bucket = bucket
        self.terms = terms or GrantTerms()
        self._s3 = s3
        self._required = {name.lower(): value for name, value in (required_headers or {}).items()}
        self._calls: list[PresignCall] = []
        self._granted = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="presign-api", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def calls(self) -> list[PresignCall]:
        """A copy of every call so far, in the order answered."""
        with self._lock:
            return list(self._calls)

    def __enter__(self) -> PresignApi:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def answer(self, method: str, target: str, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Judge one request; returns the status and the JSON body to send."""
        split = urlsplit(target)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        lowered = {name.lower(): value for name, value in headers.items()}
        with self._lock:
            status, body, expired = self._judge(method, split.path, query, lowered)
            grant = body if status == 200 else None
            self._calls.append(PresignCall(method, split.path, query, lowered, status, grant, expired))
        return status, body

    def _judge(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], bool]:
        if method != "POST" or path != ROUTE:
            return 404, {"message": "Not Found"}, False
        if any(headers.get(name) != value for name, value in self._required.items()):
            return 401, {"message": "Unauthorized"}, False
        name, folder = query.get("upload_key", ""), query.get("folder", "")
        if not name or not folder:
            return 400, {"message": "upload_key and folder are required"}, False
        expired = self._granted < self.terms.expired_first
        self._granted += 1
        terms = self.terms
        post = self._s3.generate_presigned_post(
            Bucket=self.bucket,
            Key=f"{folder}/{name}",
            Fields=dict(terms.fields),
            Conditions=[*({key: value} for key, value in terms.fields.items()), *terms.conditions],
            ExpiresIn=-EXPIRED_BY if expired else terms.expires_in,
        )
        return 200, {"url": post["url"], "fields": post["fields"]}, expired


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: PresignApi) -> None:
        self.api = api
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: calls are recorded instead."""

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        assert isinstance(self.server, _Server)
        status, body = self.server.api.answer(self.command, self.path, dict(self.headers.items()))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
