"""The ``Emulator``: a real HTTP server on 127.0.0.1 speaking flows T, R, P and C.

The stdlib ``ThreadingHTTPServer`` runs one thread per connection with HTTP/1.1
keep-alive. Each request is turned into a ``wire.Request``, answered by a scripted
response or by the flow that owns the path, recorded, and only then written back, so
by the time a client holds a response the record and the counters already show it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import shutil
import socket
import threading
import types
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from uploader_daemon.emulator.conversion_api import ConversionApi
from uploader_daemon.emulator.documents_api import DocumentsApi
from uploader_daemon.emulator.models import (
    EmulatorSettings,
    ReceivedFile,
    RequestRecord,
    ScriptedResponse,
)
from uploader_daemon.emulator.presigned_api import PresignedApi
from uploader_daemon.emulator.state import EmulatorState
from uploader_daemon.emulator.storage_api import StorageApi
from uploader_daemon.emulator.token_api import TokenApi
from uploader_daemon.emulator.wire import (
    BodyReader,
    HttpError,
    Request,
    Response,
    Route,
    dispatch,
    json_response,
)

logger = logging.getLogger(__name__)

# How long stop() waits for handler threads to notice their connection was closed.
_STOP_GRACE = 5.0
_COPY_CHUNK = 64 * 1024
_Connection = socket.socket | tuple[bytes, socket.socket]


class _Application:
    """Routes requests to scripted responses or flows; owns nothing but the route table."""

    def __init__(self, state: EmulatorState, stopping: threading.Event) -> None:
        self.state = state
        self.stopping = stopping
        self._routes: list[Route] = [
            *TokenApi(state).routes(),
            *DocumentsApi(state).routes(),
            *PresignedApi(state).routes(),
            *ConversionApi(state).routes(),
            *StorageApi(state).routes(),
        ]

    def handle(self, request: Request) -> Response:
        """Answer one request; never raises (a handler bug becomes a JSON 500)."""
        scripted = self.state.pop_script(request.method, request.path)
        if scripted is not None:
            body, headers = scripted.encoded()
            return Response(scripted.status, body, headers, delay=scripted.delay)
        try:
            return dispatch(self._routes, request)
        except HttpError as error:
            return error.response
        except Exception as error:
            # A bug in the emulator must show up in the test as a 500 with its cause,
            # and in the log with its traceback, not as a hung connection.
            logger.exception("emulator_handler_failed", extra={"path": request.path})
            return json_response(500, {"error": f"emulator bug: {error!r}"})


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that stops at once and closes its keep-alive connections.

    ``serve_forever`` notices a shutdown only at its next poll (0.5 s by default), which
    every test would pay per emulator, and polling faster burns CPU while the demo sits
    idle; so the accept loop here also waits on a wake-up socket. Open connections are
    closed on stop because otherwise a stopped emulator would keep answering on
    connections a client pooled earlier, and a test simulating an outage would not get one.
    """

    daemon_threads = True
    allow_reuse_address = True
    # handle_request() is only called once the listener is readable; it must not block.
    timeout = 0.0

    def __init__(self, address: tuple[str, int], application: _Application) -> None:
        self.application = application
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__(address, _RequestHandler)

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


class _RequestHandler(BaseHTTPRequestHandler):
    """Adapts one HTTP exchange to ``_Application.handle``."""

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

    @property
    def _application(self) -> _Application:
        assert isinstance(self.server, _Server)
        return self.server.application

    def _serve(self) -> None:
        application = self._application
        arrived = application.state.now()
        split = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(
            self.command,
            split.path,
            dict(parse_qsl(split.query, keep_blank_values=True)),
            headers,
            BodyReader(self.rfile, 0),
        )
        framing_problem = self._frame_body(request)
        if framing_problem is not None:
            response = framing_problem
            # The body's end is unknown, so the connection cannot carry another request.
            self.close_connection = True
        else:
            response = application.handle(request)
            if not request.body.drain():
                self.close_connection = True
        if response.delay > 0:
            # Wakes early when the emulator stops, so stop() never waits out a delay.
            application.stopping.wait(response.delay)
        application.state.record(
            RequestRecord(
                arrived,
                request.method,
                request.path,
                request.query,
                response.status,
                headers.get("authorization"),
                headers,
            )
        )
        self._send(response)

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
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                # Framing is this method's job; a scripted header must not contradict it.
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            has_body = response.status >= 200 and response.status not in (204, 304)
            if has_body:
                self.send_header("Content-Length", str(len(response.body) + file_size))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if has_body:
                self.wfile.write(response.body)
                if response.file is not None:
                    with response.file.open("rb") as source:
                        shutil.copyfileobj(source, self.wfile, _COPY_CHUNK)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test, or a stop()); nothing is owed to it.
            self.close_connection = True


class Emulator:
    """A local server speaking the project's HTTP APIs, for the demo and the tests.

    Use it as a context manager (``with Emulator(settings) as emu:``) or call
    ``start()``/``stop()``. State (records, counters, tokens) survives a stop, and a
    restart listens on the same port, so a test can simulate an outage.
    """

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self._state = EmulatorState(settings)
        self._stopping = threading.Event()
        self._application = _Application(self._state, self._stopping)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = settings.port
        self._lifecycle = threading.Lock()

    def start(self) -> Emulator:
        """Bind and serve in a daemon thread; return self.

        Raises:
            RuntimeError: the emulator is already running.
            OSError: the address cannot be bound.
        """
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("the emulator is already running")
            self._state.prepare_directories()
            self._stopping.clear()
            server = _Server((self.settings.host, self._port), self._application)
            self._port = int(server.server_address[1])
            self._state.base_url = f"http://{self.settings.host}:{self._port}"
            thread = threading.Thread(
                target=server.serve_until_woken, name=f"emulator-{self._port}", daemon=True
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and join the server thread (idempotent)."""
        with self._lifecycle:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self._stopping.set()
            server.wake()
            thread.join()
            if not server.close_connections(_STOP_GRACE):
                logger.warning("emulator_stop_abandoned_handlers", extra={"port": self._port})
            server.server_close()
            self._server = self._thread = None
        with self._state.changed:
            self._state.changed.notify_all()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: the emulator was never started (there is no port yet).
        """
        if not self._state.base_url:
            raise RuntimeError("the emulator has no address until start() is called")
        return self._state.base_url

    @property
    def storage_url(self) -> str:
        """The S3-like storage POST endpoint, ``{base_url}/storage/``."""
        return f"{self.base_url}/storage/"

    @property
    def received(self) -> list[ReceivedFile]:
        """A copy of the files delivered successfully, in arrival order."""
        with self._state.lock:
            return list(self._state.received)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of every request record, in the order they were answered."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters (every key in ``models.COUNTER_NAMES``)."""
        with self._state.lock:
            return dict(self._state.counters)

    def wait_for(self, predicate: Callable[[Emulator], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` is true, re-checking after every request.

        Returns the predicate's last value: False means ``timeout`` seconds passed.
        """
        with self._state.changed:
            return self._state.changed.wait_for(lambda: predicate(self), timeout)

    def script(self, method: str, path: str, *responses: ScriptedResponse) -> None:
        """Answer the next ``len(responses)`` requests to ``method path`` with these.

        Matching ignores the query string; queued responses are used first in, first
        out, before any normal handling (and without touching counters or records
        other than the request record).

        Raises:
            ValueError: ``path`` has a query string or does not start with "/".
        """
        if "?" in path or not path.startswith("/"):
            raise ValueError(f"script paths start with '/' and have no query string: {path!r}")
        self._state.add_scripts(method, path, responses)

    def revoke_tokens(self) -> None:
        """Invalidate every T token and C JWT issued so far; their next use gets 401."""
        with self._state.lock:
            self._state.tokens.revoke_all()

    def set_login_enabled(self, enabled: bool) -> None:
        """While disabled, T and C logins answer 401 whatever the credentials."""
        with self._state.lock:
            self._state.login_enabled = enabled
