"""The emulator's view of HTTP: requests in, responses out, independent of http.server.

Flow handlers take a ``Request`` and return a ``Response`` (or raise ``HttpError``
with one), so they read like the wire contracts and never touch sockets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from uploader_daemon.emulator.models import BodyFraming
from uploader_daemon.emulator.multipart import (
    MultipartError,
    MultipartForm,
    boundary_from_content_type,
    parse_multipart,
)

# JSON request bodies are small by contract; a bigger one is a client bug, not an upload.
MAX_JSON_BYTES = 1024 * 1024
_DRAIN_CHUNK = 64 * 1024


class Readable(Protocol):
    """Anything with a binary ``read(size)``, such as a socket's buffered reader."""

    def read(self, size: int, /) -> bytes:
        """Return at most ``size`` bytes; ``b""`` at end of stream."""
        ...


class BodyReader:
    """Reads a request body of known length without ever reading past it.

    Reading past the body would eat the next request on a keep-alive connection, so
    every read is capped by what is left.
    """

    def __init__(self, stream: Readable, length: int) -> None:
        self._stream = stream
        self.length = length
        self.remaining = length

    def read(self, size: int) -> bytes:
        """Return at most ``size`` bytes of the body (``b""`` once it is all read)."""
        if self.remaining <= 0:
            return b""
        data = self._stream.read(min(size, self.remaining))
        self.remaining -= len(data)
        return data

    def read_all(self, limit: int) -> bytes:
        """Return the whole body.

        Raises:
            HttpError: 413 when the body is over ``limit`` bytes, 400 when it ends early.
        """
        if self.length > limit:
            raise HttpError(json_response(413, {"error": f"the body is over {limit} bytes"}))
        data = bytearray()
        while self.remaining > 0:
            chunk = self.read(self.remaining)
            if not chunk:
                raise HttpError(json_response(400, {"error": "the body ended early"}))
            data += chunk
        return bytes(data)

    def drain(self) -> bool:
        """Read and discard what is left; return False if the client hung up first."""
        while self.remaining > 0:
            if not self.read(_DRAIN_CHUNK):
                return False
        return True


@dataclass
class Request:
    """One HTTP request: ``path`` has no query string; header names are lowercase."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: BodyReader

    def read_json(self) -> dict[str, Any]:
        """Return the body parsed as a JSON object.

        Raises:
            HttpError: 400 when the body is not a JSON object.
        """
        raw = self.body.read_all(MAX_JSON_BYTES)
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HttpError(json_response(400, {"error": f"the body is not valid JSON: {error}"})) from error
        if not isinstance(value, dict):
            raise HttpError(json_response(400, {"error": "the body must be a JSON object"}))
        return value

    def read_multipart(self, spool_dir: Path) -> MultipartForm:
        """Stream the body as multipart/form-data, spooling file parts into ``spool_dir``.

        Raises:
            MultipartError: the body is not well-formed multipart/form-data.
        """
        boundary = boundary_from_content_type(self.headers.get("content-type"))
        return parse_multipart(self.body.read, self.body.remaining, boundary, spool_dir)


@dataclass
class Response:
    """What to send back.

    The body is ``body``, then ``file`` streamed from disk, then the pieces of
    ``stream()`` (exactly ``stream_length`` bytes in all), framed as ``framing`` says.
    ``reset`` drops the answer: the connection is reset instead of sending anything.
    """

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    # Seconds to wait before answering (scripted slow responses).
    delay: float = 0.0
    stream: Callable[[], Iterator[bytes]] | None = None
    stream_length: int = 0
    framing: BodyFraming = BodyFraming.CONTENT_LENGTH
    reset: bool = False


class HttpError(Exception):
    """Raised inside a handler to answer with ``response`` right away."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    """A JSON response with the right Content-Type."""
    return Response(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def json_error(status: int, message: str) -> HttpError:
    """An ``HttpError`` carrying ``{"error": message}``, for ``raise json_error(...)``."""
    return HttpError(json_response(status, {"error": message}))


def multipart_error(error: MultipartError) -> HttpError:
    """Turn a parser error into the 400 a client gets for a malformed form."""
    return json_error(400, f"malformed multipart/form-data: {error}")


Handler = Callable[[Request, "re.Match[str]"], Response]


@dataclass(frozen=True)
class Route:
    """Requests whose method and path match go to ``handler`` with the path match."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler


def route(method: str, pattern: str, handler: Handler) -> Route:
    """Build a route; ``pattern`` must match the whole path."""
    return Route(method, re.compile(pattern), handler)


def dispatch(routes: list[Route], request: Request) -> Response:
    """Call the handler of the first route matching the request.

    An unknown path is a JSON 404; a known path with another method a JSON 405 with
    the Allow header, so a client bug reads as such instead of as a missing resource.
    """
    allowed: list[str] = []
    for candidate in routes:
        match = candidate.pattern.fullmatch(request.path)
        if match is None:
            continue
        if candidate.method == request.method:
            return candidate.handler(request, match)
        allowed.append(candidate.method)
    if allowed:
        return json_response(
            405,
            {"error": f"{request.method} is not allowed on {request.path}"},
            {"Allow": ", ".join(sorted(set(allowed)))},
        )
    return json_response(404, {"error": f"no such endpoint: {request.method} {request.path}"})
