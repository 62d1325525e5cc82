"""httpx on plain asyncio: a small HTTP/1.1 connection pool over asyncio streams and h11.

httpx talks to the network through a transport. Its own (httpcore's pool, on AnyIO)
costs more CPU per request than the daemon's whole bookkeeping for a small file: a
task-group checkpoint and a lock for each state change, a search of every connection
for each request, four stream wrappers around each body. :class:`AsyncioTransport`
keeps the protocol work where it was (h11 frames requests and parses answers, as in
httpcore) and does the rest directly on asyncio:

- a connection slot per request (``max_connections``; waiting for one is the pool
  timeout), the idle connections kept last-used-first up to ``max_keepalive_connections``
  and for ``keepalive_expiry`` seconds; one the server has closed is never reused;
- a request's head goes out in one write with the first piece of its body, so a small
  upload is one segment on the wire (one read for the server);
- a write the server cut short is not an error yet: the server may have answered
  (a 413 before the body ends), so the answer is read, as httpcore does;
- a connection is kept only when both sides finished the exchange; an interrupted one
  (an error, a cancelled task, a body left unread) is closed;
- failures are httpx's own exceptions (``ConnectError``, ``ReadTimeout``, ...), chained
  to the ``OSError`` that caused them.

HTTP/1.1 only, as the daemon's client is; proxies from the environment keep httpx's own
transports (mounted per scheme).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import h11
import httpx

_READ_CHUNK = 64 * 1024
# A response head larger than this is refused (httpcore's bound).
_MAX_HEAD_SIZE = 100 * 1024
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# Closing a connection waits this long for the peer at most (a stop must not hang).
_CLOSE_WAIT = 1.0

Origin = tuple[bytes, bytes, int]  # scheme, host, port


class _Connection:
    """One keep-alive connection to one origin: an asyncio stream pair and its h11 state."""

    def __init__(self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.origin = origin
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_SIZE)
        self.idle_since = 0.0

    def open(self) -> bool:
        """Whether an idle connection can carry another request (the server has not closed it)."""
        return not (self._writer.is_closing() or self._reader.at_eof())

    def finished(self) -> bool:
        """Whether the last exchange ended cleanly on both sides (the connection can be reused)."""
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    def next_cycle(self) -> None:
        self._h11.start_next_cycle()

    async def send(self, request: httpx.Request, timeout: float | None) -> None:
        """Send the request's head and body; a write the server cut short is left for the answer."""
        head = self._h11.send(
            h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw)
        )
        assert isinstance(request.stream, httpx.AsyncByteStream)
        try:
            pending = head
            async for chunk in request.stream:
                data = self._h11.send(h11.Data(data=chunk))
                if data:
                    await self._write(pending + data if pending else data, timeout, request)
                    pending = b""
            pending += self._h11.send(h11.EndOfMessage())
            await self._write(pending, timeout, request)
        except h11.LocalProtocolError as error:  # the body is longer or shorter than it said
            raise httpx.LocalProtocolError(str(error), request=request) from error
        except httpx.WriteError:
            pass  # the server may have answered before it closed: the read below says

    async def receive_head(self, request: httpx.Request, timeout: float | None) -> h11.Response:
        """The response's status line and headers (informational answers skipped)."""
        while True:
            event = await self.next_event(request, timeout)
            if isinstance(event, h11.Response):
                return event

    async def next_event(self, request: httpx.Request, timeout: float | None) -> h11.Event | type[h11.PAUSED]:
        """The next thing the server said, reading from the socket as needed."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as error:
                raise httpx.RemoteProtocolError(str(error), request=request) from error
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # mypy does not narrow on ``is not``
            data = await self._read(timeout, request)
            if not data and self._h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            self._h11.receive_data(data)

    async def _write(self, data: bytes, timeout: float | None, request: httpx.Request) -> None:
        if not data:
            return
        try:
            self._writer.write(data)
            if timeout is None:
                await self._writer.drain()
            else:
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("timed out writing the request", request=request) from None
        except OSError as error:
            raise httpx.WriteError(str(error), request=request) from error

    async def _read(self, timeout: float | None, request: httpx.Request) -> bytes:
        try:
            if timeout is None:
                return await self._reader.read(_READ_CHUNK)
            async with asyncio.timeout(timeout):
                return await self._reader.read(_READ_CHUNK)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the response", request=request) from None
        except OSError as error:
            raise httpx.ReadError(str(error), request=request) from error

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            # Bounded: a peer that never acknowledges the close must not hold up a stop.
            async with asyncio.timeout(_CLOSE_WAIT):
                await self._writer.wait_closed()


class _ResponseBody(httpx.AsyncByteStream):
    """A response's body as it arrives; closing it hands the connection back to the pool."""

    def __init__(
        self, pool: AsyncioTransport, connection: _Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._request = request
        self._timeout = timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._connection.next_event(self._request, self._timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self._connection)


class AsyncioTransport(httpx.AsyncBaseTransport):
    """httpx's transport for HTTP/1.1 over asyncio (see the module's docstring)."""

    def __init__(self, *, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._ssl = verify
        self._slots = asyncio.Semaphore(limits.max_connections) if limits.max_connections else None
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: list[_Connection] = []  # the last one used at the end
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        await self._acquire(request, timeouts.get("pool"))
        origin = _origin(request.url)
        connection: _Connection | None = None
        try:
            connection = self._idle_connection(origin) or await self._connect(
                origin, request, timeouts.get("connect")
            )
            await connection.send(request, timeouts.get("write"))
            head = await connection.receive_head(request, timeouts.get("read"))
        except BaseException:  # an error or a cancellation: the exchange is cut off
            if connection is not None:
                self._discard(connection)
            self._release_slot()
            raise
        return httpx.Response(
            status_code=head.status_code,
            headers=head.headers.raw_items(),
            stream=_ResponseBody(self, connection, request, timeouts.get("read")),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    def release(self, connection: _Connection) -> None:
        """A response was closed: keep its connection for the next request if the exchange ended well."""
        self._release_slot()
        if connection.finished() and connection.open() and self._keeps_another():
            connection.next_cycle()
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            self._discard(connection)

    async def aclose(self) -> None:
        connections = list(self._open)
        for connection in connections:
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.gather(*(connection.wait_closed() for connection in connections))

    async def _acquire(self, request: httpx.Request, timeout: float | None) -> None:
        if self._slots is None:
            return
        if not self._slots.locked():
            await self._slots.acquire()  # free: no wait, no timer
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("timed out waiting for a free connection", request=request) from None

    def _release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _keeps_another(self) -> bool:
        return self._max_idle is None or len(self._idle) < self._max_idle

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        """The most recently used idle connection to ``origin``; expired or closed ones are dropped."""
        now = time.monotonic()
        for index in range(len(self._idle) - 1, -1, -1):
            connection = self._idle[index]
            expired = self._expiry is not None and now - connection.idle_since > self._expiry
            if expired or not connection.open():
                del self._idle[index]
                self._discard(connection)
            elif connection.origin == origin:
                del self._idle[index]
                return connection
        return None

    async def _connect(self, origin: Origin, request: httpx.Request, timeout: float | None) -> _Connection:
        scheme, raw_host, port = origin
        host = raw_host.decode("ascii")
        secure = scheme == b"https"
        server_hostname: Any = request.extensions.get("sni_hostname") or host
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl if secure else None,
                    server_hostname=server_hostname if secure else None,
                    limit=_READ_CHUNK,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}", request=request) from None
        except (OSError, ssl.SSLError) as error:
            raise httpx.ConnectError(str(error), request=request) from error
        connection = _Connection(origin, reader, writer)
        self._open.add(connection)
        return connection

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)


def _origin(url: httpx.URL) -> Origin:
    return url.raw_scheme, url.raw_host, url.port or _DEFAULT_PORTS.get(url.raw_scheme, 80)
