"""The endpoint's tiny HTTP server against a real socket: what it answers, and what it refuses."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from uploader_daemon import endpoint as endpoint_module
from uploader_daemon.endpoint import Endpoint, ListenError, Reply, Request, parse_head

Exchange = Callable[[bytes], Awaitable[bytes]]


def ok(request: Request) -> Reply:
    return Reply(200, f"path={request.path} accept={request.headers.get('accept', '')}\n".encode())


def serve(test: Callable[[Endpoint, Exchange], Awaitable[None]]) -> None:
    """Run ``test`` with an endpoint on 127.0.0.1 and a free port, and a raw-bytes client."""

    async def main() -> None:
        server = Endpoint("127.0.0.1", 0, {"/ok": ok})
        await server.start()

        async def exchange(raw: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
            return answer

        try:
            await test(server, exchange)
        finally:
            await server.stop()

    asyncio.run(main())


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_get_is_answered_with_its_length_and_the_connection_closed() -> None:
    """GET /ok: 200, Content-Length, Connection: close, the query string ignored for routing."""
    answers: list[bytes] = []

    async def test(server: Endpoint, exchange: Exchange) -> None:
        answers.append(await exchange(b"GET /ok?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\n\r\n"))

    serve(test)
    head, body = answers[0].split(b"\r\n\r\n", 1)
    assert 200 == status_of(answers[0])
    assert b"path=/ok accept=text/plain\n" == body
    assert b"Content-Length: 27" in head
    assert b"Connection: close" in head


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
        (b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"garbage\r\n\r\n", 400),
        (b"GET ok HTTP/1.1\r\n\r\n", 400),
        (b"GET /ok HTTP/2.0\r\n\r\n", 505),
        (b"GET /ok HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /ok HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ],
    ids=["unknown path", "post", "no request line", "relative target", "http/2", "bad header", "huge head"],
)
def test_what_is_not_a_small_get_of_a_known_path_gets_a_4xx_or_5xx(raw: bytes, status: int) -> None:
    """Unknown paths, other methods, malformed or oversized heads are refused, never crash the server."""
    answers: list[bytes] = []

    async def test(server: Endpoint, exchange: Exchange) -> None:
        answers.append(await exchange(raw))
        answers.append(await exchange(b"GET /ok HTTP/1.0\r\n\r\n"))  # still serving

    serve(test)
    assert status == status_of(answers[0])
    assert 200 == status_of(answers[1])


def test_a_post_is_told_which_method_is_allowed() -> None:
    """405 carries Allow: GET."""
    answers: list[bytes] = []

    async def test(server: Endpoint, exchange: Exchange) -> None:
        answers.append(await exchange(b"DELETE /ok HTTP/1.1\r\n\r\n"))

    serve(test)
    assert b"Allow: GET" in answers[0]


def test_a_client_that_never_finishes_its_head_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow client gets nothing and its connection closed after HEAD_TIMEOUT."""
    monkeypatch.setattr(endpoint_module, "HEAD_TIMEOUT", 0.2)
    answers: list[bytes] = []

    async def test(server: Endpoint, exchange: Exchange) -> None:
        answers.append(await exchange(b"GET /ok HTTP/1.1\r\n"))

    serve(test)
    assert b"" == answers[0]


def test_connections_beyond_the_limit_are_closed_unanswered(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MAX_CONNECTIONS open and idle, one more is closed at once; the open ones are still served."""
    monkeypatch.setattr(endpoint_module, "MAX_CONNECTIONS", 2)
    answers: list[bytes] = []

    async def test(server: Endpoint, exchange: Exchange) -> None:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        deadline = asyncio.get_running_loop().time() + 5
        while len(server._connections) < 2:  # the server accepts them on its next turns
            assert asyncio.get_running_loop().time() < deadline, "the server did not accept in time"
            await asyncio.sleep(0.01)
        answers.append(await exchange(b"GET /ok HTTP/1.1\r\n\r\n"))
        for reader, writer in held:
            writer.write(b"GET /ok HTTP/1.1\r\n\r\n")
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()

    serve(test)
    assert b"" == answers[0]
    assert [200, 200] == [status_of(answer) for answer in answers[1:]]


def test_a_port_in_use_is_an_admin_error_naming_metrics_listen_with_exit_3() -> None:
    """Binding a taken port raises ListenError: one sentence with the key and what to do."""
    errors: list[ListenError] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            try:
                await Endpoint("127.0.0.1", port, {}).start()
            except ListenError as error:
                errors.append(error)

        asyncio.run(main())

    [error] = errors
    assert 3 == error.exit_code
    assert str(error).startswith(f"metrics.listen 127.0.0.1:{port}: cannot listen there (")
    assert "choose another one" in str(error)


def test_parse_head_keeps_header_names_in_lower_case_and_drops_the_query() -> None:
    """Header names are case-insensitive; the route is the path alone."""
    request = parse_head(b"GET /metrics?name[]=x HTTP/1.1\r\nACCEPT: text/plain\r\n\r\n")

    assert Request("GET", "/metrics", {"accept": "text/plain"}) == request
