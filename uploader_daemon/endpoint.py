"""The metrics endpoint (``metrics.listen``): ``/metrics``, ``/healthz``, ``/readyz``.

Served by the daemon's own event loop (``asyncio.start_server``), on purpose: a loop
that is wedged does not answer ``/healthz``, which is what a liveness probe must see. The
HTTP it speaks is the least a scraper and a probe need, and bounded in every direction:

- one request per connection, answered and closed (``Connection: close``);
- ``GET`` only (anything else: 405), no body read; the request line and headers must
  fit in :data:`MAX_HEAD` bytes (else 431) and arrive within :data:`HEAD_TIMEOUT`
  seconds (else the connection is closed);
- at most :data:`MAX_CONNECTIONS` at once; more are closed unanswered.

Routes are plain functions returning a :class:`Reply`; they run on the loop and must be
quick (they read memory, never the network).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from uploader_daemon.errors import AdminError
from uploader_daemon.logs import get_logger

log = get_logger(__name__)

MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class ListenError(AdminError):
    """``metrics.listen`` cannot be bound (exit 3, like another unusable resource)."""

    exit_code = 3


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    headers: Mapping[str, str]  # names in lower case


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[Request], Reply]


class Endpoint:
    """The HTTP server of ``metrics.listen``; started and stopped by the daemon."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        self._host = host
        self._port = port
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port bound (the configured one, or the one picked for port 0)."""
        assert self._server is not None, "the endpoint has not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen; raises :class:`ListenError` with a sentence naming ``metrics.listen``."""
        listen = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        try:
            self._server = await asyncio.start_server(
                self._accepted, self._host, self._port, reuse_address=True, limit=MAX_HEAD
            )
        except OSError as error:
            hint = {
                errno.EADDRINUSE: "another program (or another uploader-daemon) uses that port; "
                "choose another one",
                errno.EADDRNOTAVAIL: "no interface of this host has that address",
                errno.EACCES: "ports below 1024 need privileges the daemon does not have; "
                "choose a higher one",
            }.get(error.errno or 0, "check the address")
            raise ListenError(
                f"metrics.listen {listen}: cannot listen there ({error.strerror or error}); {hint}"
            ) from None
        log.info(
            "metrics_listening",
            listen=listen,
            port=self.port,
            paths=sorted(self._routes),
            loopback_only=_is_loopback(self._host),
        )
        if not _is_loopback(self._host):
            log.warning(
                "metrics_exposed",
                listen=listen,
                hint="the metrics name your targets and folders and need no password; allow only "
                "your Prometheus to reach this port (firewall), or listen on 127.0.0.1",
            )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # --- one connection --------------------------------------------------------------

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        task = asyncio.create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except asyncio.LimitOverrunError:
                reply = Reply(431, b"request head too large\n")
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return  # gone, or too slow: nobody to answer
            else:
                reply = self._answer(head)
            writer.write(_encode(reply))
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
        except Exception as error:  # a route's bug must not end the endpoint
            log.error("metrics_request_failed", error=str(error), error_type=type(error).__name__)
            log.debug("metrics_request_traceback", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> Reply:
        request = parse_head(head)
        if isinstance(request, Reply):
            return request
        route = self._routes.get(request.path)
        if route is None:
            return Reply(404, b"not found; try /metrics, /healthz or /readyz\n")
        if request.method != "GET":
            return Reply(405, b"only GET\n", headers={"Allow": "GET"})
        return route(request)


def parse_head(head: bytes) -> Request | Reply:
    """The request line and headers of ``head`` (ending in a blank line), or a 4xx reply."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover -- latin-1 decodes every byte
        return Reply(400, b"bad request\n")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        return Reply(400, b"bad request line\n")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return Reply(505, b"HTTP/1.0 or HTTP/1.1 only\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, separator, value = line.partition(":")
        if not separator or not name or name != name.strip():
            return Reply(400, b"bad header line\n")
        headers[name.lower()] = value.strip()
    return Request(method, target.split("?", 1)[0], headers)


def _encode(reply: Reply) -> bytes:
    reason = _REASONS.get(reply.status, "")
    headers = {
        "Content-Type": reply.content_type,
        "Content-Length": str(len(reply.body)),
        "Connection": "close",
        "Cache-Control": "no-store",
        **reply.headers,
    }
    head = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + reply.body


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
