"""The stdlib HTTP server, adapted: an accept loop that stops at once, tracked connections.

``HttpServer`` runs one thread per connection with HTTP/1.1 keep-alive; each request
goes through ``RequestHandler``, which frames the body, asks the ``Application`` for
the answer, records it, and writes it: from memory, from a file, or from a generator
(huge scripted bodies), with a Content-Length, chunked, or until the connection closes.
It also carries out the faults that live on the wire: a hang (read the request, answer
nothing) and a reset instead of the answer.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from uploader_daemon.emulator.application import Application
from uploader_daemon.emulator.models import BodyFraming, RequestRecord
from uploader_daemon.emulator.wire import BodyReader, Request, Response, json_response

logger = logging.getLogger(__name__)

_COPY_CHUNK = 64 * 1024
_Connection = socket.socket | tuple[bytes, socket.socket]


class HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that stops at once and closes its keep-alive connections.

    ``serve_forever`` notices a shutdown only at its next poll (0.5 s by default), which
    every test would pay per emulator, and polling faster burns CPU while the demo sits
    idle; so the accept loop here also waits on a wake-up socket. Open connections are
    closed on stop because otherwise a stopped emulator would keep answering on
    connections a client pooled earlier, and a test simulating an outage would not get one.
    """

    daemon_threads = True
    # Lets refuse_connections()/accept_connections() and stop()/start() rebind the same
    # port at once, although the closed connections linger in TIME_WAIT.
    allow_reuse_address = True
    # handle_request() is only called once the listener is readable; it must not block.
    timeout = 0.0

    def __init__(self, address: tuple[str, int], application: Application) -> None:
        self.application = application
        # Set when this server closes: scripted delays and hangs wait on it, so they
        # never hold up stop() or refuse_connections().
        self.closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__(address, RequestHandler)

    def serve_until_woken(self) -> None:
        """Accept connections (each served on its own thread) until ``wake()`` is called."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _events in selector.select()}
                if self._wake_reader in ready:
                    return
                self.handle_request()

    def wake(self) -> None:
        """Make ``serve_until_woken`` return."""
        self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def process_request(self, request: _Connection, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_changed:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: _Connection) -> None:
        super().shutdown_request(request)
        if isinstance(request, socket.socket):
            with self._connections_changed:
                self._connections.discard(request)
                self._connections_changed.notify_all()

    def handle_error(self, request: _Connection, client_address: Any) -> None:
        """Log a handler's exception instead of printing it to stderr as the stdlib does.

        A client that hangs up (reset, broken pipe) is normal for a test server; anything
        else is an emulator bug and is logged with its traceback.
        """
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            logger.debug("emulator_client_went_away", extra={"client": client_address, "error": repr(error)})
        else:
            logger.exception("emulator_connection_failed", extra={"client": client_address})

    def begin_closing(self) -> None:
        """Release every handler waiting on a delay or a hang."""
        self.closing.set()
        self.application.faults.wake()

    def close_connections(self, timeout: float) -> bool:
        """Shut down every open connection; return True if all handlers finished in time."""
        with self._connections_changed:
            connections = list(self._connections)
        for connection in connections:
            # The peer may have closed it already; then there is nothing left to do.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        with self._connections_changed:
            return self._connections_changed.wait_for(lambda: not self._connections, timeout)


class RequestHandler(BaseHTTPRequestHandler):
    """Adapts one HTTP exchange to ``Application.handle``."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm the second
    # waits for the client's delayed ACK (40 ms on Linux) on every response.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's per-request stderr lines; requests are recorded instead."""

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve()

    def do_PUT(self) -> None:
        """Serve a PUT (no endpoint takes one: 405/404, or a scripted response)."""
        self._serve()

    def do_PATCH(self) -> None:
        """Serve a PATCH (as PUT)."""
        self._serve()

    def do_DELETE(self) -> None:
        """Serve a DELETE."""
        self._serve()

    def _serve(self) -> None:
        assert isinstance(self.server, HttpServer)
        server = self.server
        application = server.application
        arrived = application.state.now()
        split = urlsplit(self.path)
        request = Request(
            self.command,
            split.path,
            dict(parse_qsl(split.query, keep_blank_values=True)),
            {name.lower(): value for name, value in self.headers.items()},
            BodyReader(self.rfile, 0),
        )
        framing_problem = self._frame_body(request)
        hang = application.faults.hang()
        if hang is not None:
            if framing_problem is None:
                request.body.drain()
            application.state.bump("hung_requests")
            self._record(request, arrived, 0)
            application.faults.hold(hang, server.closing)
            # Whatever the client still expects, it gets no answer on this connection.
            self.close_connection = True
            return
        if framing_problem is not None:
            # The body's end is unknown, so the connection cannot carry another request.
            self.close_connection = True
            response = application.outage_answer(request) or framing_problem
        else:
            response = application.handle(request)
            if not request.body.drain():
                self.close_connection = True
        if response.reset:
            application.state.bump("answers_dropped")
            self._record(request, arrived, 0)
            self._reset_connection()
            return
        if response.delay > 0:
            # Wakes early when the emulator stops, so stop() never waits out a delay.
            server.closing.wait(response.delay)
        self._record(request, arrived, response.status)
        self._send(response)

    def _record(self, request: Request, arrived: float, status: int) -> None:
        """Record the request before its answer goes out (status 0: none will)."""
        assert isinstance(self.server, HttpServer)
        self.server.application.state.record(
            RequestRecord(
                arrived,
                request.method,
                request.path,
                request.query,
                status,
                request.headers.get("authorization"),
                request.headers,
            )
        )

    def _frame_body(self, request: Request) -> Response | None:
        """Size the request body from Content-Length; return an error response if unusable."""
        if "transfer-encoding" in request.headers:
            return json_response(
                411, {"error": "send a Content-Length; chunked request bodies are not accepted"}
            )
        raw_length = request.headers.get("content-length", "0").strip()
        if not raw_length.isascii() or not raw_length.isdigit():
            return json_response(400, {"error": f"invalid Content-Length {raw_length!r}"})
        request.body = BodyReader(self.rfile, int(raw_length))
        return None

    def _send(self, response: Response) -> None:
        file_size = response.file.stat().st_size if response.file is not None else 0
        has_body = response.status >= 200 and response.status not in (204, 304)
        framing = response.framing if has_body else BodyFraming.CONTENT_LENGTH
        if framing is BodyFraming.UNTIL_CLOSE:
            self.close_connection = True
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                # Framing is this method's job; a scripted header must not contradict it.
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            if has_body and framing is BodyFraming.CONTENT_LENGTH:
                length = len(response.body) + file_size + response.stream_length
                self.send_header("Content-Length", str(length))
            elif has_body and framing is BodyFraming.CHUNKED:
                self.send_header("Transfer-Encoding", "chunked")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if has_body:
                self._write_body(response, chunked=framing is BodyFraming.CHUNKED)
            self.wfile.flush()
        except ConnectionError:
            # The client gave up (a timeout test, a client that stopped reading a huge
            # body, or a stop()); nothing is owed to it.
            self.close_connection = True

    def _write_body(self, response: Response, chunked: bool) -> None:
        for piece in _body_pieces(response):
            if not piece:
                continue
            if chunked:
                self.wfile.write(b"%x\r\n" % len(piece))
                self.wfile.write(piece)
                self.wfile.write(b"\r\n")
            else:
                self.wfile.write(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _reset_connection(self) -> None:
        """Close the connection with a TCP reset, so the client gets no answer at all."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            # Linger on with a zero timeout: close() discards and sends RST, not FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


def _body_pieces(response: Response) -> Iterator[bytes]:
    """The response body piece by piece: ``body``, the file, then the generated stream."""
    yield response.body
    if response.file is not None:
        with response.file.open("rb") as source:
            while piece := source.read(_COPY_CHUNK):
                yield piece
    if response.stream is not None:
        yield from response.stream()
