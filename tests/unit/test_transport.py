"""The daemon's HTTP/1.1 transport against a real loopback server: reuse, limits, broken exchanges."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from uploader_daemon.transport import AsyncioTransport

DEADLINE = 10.0
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running ``handler`` per connection; counts connections and open ones."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Server]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        async with server:
            yield self


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def answering(answer: bytes) -> Handler:
    """Keep-alive: answer every request on the connection with ``answer``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()

    return handler


answer_each = answering(OK)


def client(connections: int = 4, idle: int = 4, **timeouts: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=idle)
    transport = AsyncioTransport(verify=httpx.create_ssl_context(), limits=limits)
    timeout = httpx.Timeout(DEADLINE, **timeouts)
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(DEADLINE):
            await scenario()

    asyncio.run(bounded())


async def eventually(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


def test_sequential_requests_share_one_keep_alive_connection() -> None:
    server = Server(answer_each)

    async def scenario() -> None:
        async with server.running(), client() as http:
            answers = [await http.post(server.url, content=b"x" * 100) for _ in range(5)]
        assert [200] * 5 == [answer.status_code for answer in answers]
        assert [b"ok"] * 5 == [answer.content for answer in answers]
        assert "HTTP/1.1" == answers[0].http_version
        assert "OK" == answers[0].reason_phrase

    run(scenario)
    assert 1 == server.connections


def test_concurrent_requests_never_open_more_than_max_connections() -> None:
    server = Server(answer_each)

    async def scenario() -> None:
        async with server.running(), client(connections=2) as http:
            answers = await asyncio.gather(*(http.get(server.url) for _ in range(12)))
        assert [200] * 12 == [answer.status_code for answer in answers]

    run(scenario)
    assert 2 == server.most_open


def test_waiting_longer_than_the_pool_timeout_for_a_connection_is_a_pool_timeout() -> None:
    server = Server(answer_each)

    async def scenario() -> None:
        async with server.running(), client(connections=1, pool=0.05) as http:
            held = await http.send(http.build_request("GET", server.url), stream=True)  # not closed yet
            with pytest.raises(httpx.PoolTimeout):
                await http.get(server.url)
            await held.aclose()
            assert 200 == (await http.get(server.url)).status_code  # the slot came back

    run(scenario)


def test_a_small_body_goes_out_in_the_same_write_as_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(answer_each)
    writes: list[bytes] = []
    write = asyncio.StreamWriter.write

    def recording(writer: asyncio.StreamWriter, data: bytes) -> None:
        if data != OK:  # the server's answers go through StreamWriter too
            writes.append(bytes(data))
        write(writer, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", recording)

    async def scenario() -> None:
        async with server.running(), client() as http:
            await http.post(server.url, content=b"B" * 4096)

    run(scenario)
    (only,) = writes
    assert only.startswith(b"POST / HTTP/1.1\r\n")
    assert only.endswith(b"\r\n\r\n" + b"B" * 4096)


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()  # and close, without saying so in a header

    server = Server(answer_once)

    async def scenario() -> None:
        async with server.running(), client() as http:
            transport = http._transport
            assert isinstance(transport, AsyncioTransport)
            assert 200 == (await http.get(server.url)).status_code
            await eventually(lambda: server.open_now == 0, "the server closed the connection")
            await eventually(lambda: not transport._idle[0].open(), "the client noticed the close")
            assert 200 == (await http.get(server.url)).status_code

    run(scenario)
    assert 2 == server.connections


def test_connection_close_in_the_answer_ends_the_connection() -> None:
    server = Server(answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))

    async def scenario() -> None:
        async with server.running(), client() as http:
            for _ in range(3):
                assert b"ok" == (await http.get(server.url)).content

    run(scenario)
    assert 3 == server.connections


def test_a_server_that_closes_without_answering_is_a_remote_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    server = Server(hang_up)

    async def scenario() -> None:
        async with server.running(), client() as http:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await http.get(server.url)

    run(scenario)


def test_a_read_timeout_is_httpx_read_timeout_and_the_connection_is_dropped() -> None:
    answered = 0

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await read_request(reader)
        if answered == 0:
            answered += 1
            await asyncio.Event().wait()  # never answers this connection
        writer.write(OK)
        await writer.drain()
        await answer_each(reader, writer)

    server = Server(slow_first)

    async def scenario() -> None:
        async with server.running(), client(read=0.1) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(server.url)
            assert 200 == (await http.get(server.url)).status_code

    run(scenario)
    assert 2 == server.connections


def test_a_body_left_unread_closes_its_connection_and_frees_the_slot() -> None:
    server = Server(
        answering(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
    )

    async def scenario() -> None:
        async with server.running(), client(connections=1) as http:
            partial = await http.send(http.build_request("GET", server.url), stream=True)
            await partial.aclose()  # nothing read: the connection cannot carry another request
            assert b"hello world" == (await http.get(server.url)).content
            assert b"hello world" == (await http.get(server.url)).content

    run(scenario)
    assert 2 == server.connections


def test_a_cancelled_request_frees_its_slot() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    server = Server(never)
    ok_server = Server(answer_each)

    async def scenario() -> None:
        async with server.running(), ok_server.running(), client(connections=1, pool=1.0) as http:
            hanging = asyncio.create_task(http.get(server.url))
            await eventually(lambda: server.connections == 1, "the request reached the server")
            hanging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hanging
            assert 200 == (await http.get(ok_server.url)).status_code

    run(scenario)


def test_a_refused_connection_is_a_connect_error_caused_by_the_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it once closed

    async def scenario() -> None:
        async with client() as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await http.get(f"http://127.0.0.1:{port}/")
        cause = caught.value.__cause__
        assert isinstance(cause, OSError)
        assert errno.ECONNREFUSED == cause.errno

    run(scenario)


def test_a_body_longer_than_its_content_length_is_a_local_protocol_error() -> None:
    server = Server(answer_each)

    class Lying(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"0123456789"

    async def scenario() -> None:
        async with server.running(), client() as http:
            request = http.build_request("POST", server.url, headers={"Content-Length": "4"})
            request.stream = Lying()
            with pytest.raises(httpx.LocalProtocolError):
                await http.send(request)

    run(scenario)
