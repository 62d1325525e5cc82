"""The ``Emulator``: a real HTTP server on 127.0.0.1 speaking flows T, R, P and C.

This is the test-facing object: lifecycle, what was received and recorded, and the
switches. The transport is ``http_server`` (one thread per connection, HTTP/1.1
keep-alive) and the answers come from ``application``. Each request is recorded before
its answer is written back, so by the time a client holds a response the record and
the counters already show it.

Faults for tests, each switched on and off from any thread (see ``faults``):
``refuse_connections()``/``accept_connections()`` (the port is closed, then reopened
as the same port), ``fail_all(status)``/``fail_all(None)``, ``hang_all(seconds)``/
``hang_all(None)``; per request, scripted answers with huge generated bodies or a
reset instead of the answer (``models.ScriptedResponse``); and Idempotency-Key replays
(``replays``). Which one wins: a hang, then an outage, then a script, then a replay,
then the endpoint.
"""

from __future__ import annotations

import collections
import logging
import threading
import types
from collections.abc import Callable

from uploader_daemon.emulator.application import Application
from uploader_daemon.emulator.faults import FaultSwitches, Outage
from uploader_daemon.emulator.http_server import HttpServer
from uploader_daemon.emulator.models import EmulatorSettings, ReceivedFile, RequestRecord, ScriptedResponse
from uploader_daemon.emulator.replays import ReplayBook
from uploader_daemon.emulator.state import EmulatorState

logger = logging.getLogger(__name__)

# How long stop() waits for handler threads to notice their connection was closed.
_STOP_GRACE = 5.0


class Emulator:
    """A local server speaking the project's HTTP APIs, for the demo and the tests.

    Use it as a context manager (``with Emulator(settings) as emu:``) or call
    ``start()``/``stop()``. State (records, counters, tokens) survives a stop, and a
    restart listens on the same port, so a test can simulate an outage. The fault
    switches (``refuse_connections``, ``fail_all``, ``hang_all``) are the finer tools
    for that: see the module docstring.
    """

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self._state = EmulatorState(settings)
        self._faults = FaultSwitches()
        self._application = Application(self._state, self._faults, ReplayBook())
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._port = settings.port
        # Started, but the listener is closed by refuse_connections().
        self._refusing = False
        self._lifecycle = threading.Lock()

    def start(self) -> Emulator:
        """Bind and serve in a daemon thread; return self.

        Raises:
            RuntimeError: the emulator is already running (or refusing connections).
            OSError: the address cannot be bound.
        """
        with self._lifecycle:
            if self._server is not None or self._refusing:
                raise RuntimeError("the emulator is already running")
            self._listen()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and join the server thread (idempotent).

        Handlers held by a scripted delay or ``hang_all`` are released, so this takes
        well under a second even while requests hang.
        """
        with self._lifecycle:
            self._refusing = False
            self._close()

    def refuse_connections(self) -> None:
        """Close the listening port and every open connection until ``accept_connections()``.

        New connections get ECONNREFUSED; a client's pooled keep-alive connection is
        closed too, so it fails instead of being served. Requests in progress lose their
        answer. Idempotent while refusing.

        Raises:
            RuntimeError: the emulator is not running.
        """
        with self._lifecycle:
            if self._refusing:
                return
            if self._server is None:
                raise RuntimeError("start() the emulator before refusing connections")
            self._close()
            self._refusing = True

    def accept_connections(self) -> None:
        """Listen again on the same port (so ``base_url`` stays valid); a no-op unless refusing.

        Raises:
            OSError: the port was taken by someone else in the meantime.
        """
        with self._lifecycle:
            if not self._refusing:
                return
            self._listen()
            self._refusing = False

    def fail_all(self, status: int | None = 503, retry_after: int | str | None = None) -> None:
        """Answer every request (every route, storage and logins too) with ``status``.

        The answer is a small JSON error (S3 XML for storage) with a Retry-After header
        if ``retry_after`` is given (an int of seconds, or a str sent verbatim). Nothing
        else happens: no state changes, no script is used up; each answer counts in
        ``outage_answers``. ``fail_all(None)`` ends the outage.

        Raises:
            ValueError: ``status`` is not a three-digit number.
        """
        self._faults.fail_all(None if status is None else Outage(status, retry_after))

    def hang_all(self, seconds: float | None) -> None:
        """Read every request, then answer nothing for ``seconds`` and close its connection.

        Each hung request counts in ``hung_requests`` and is recorded with status 0 as
        soon as it is read, so a test can wait for it. ``hang_all(None)`` ends the
        fault and releases the requests already hanging (their connections close
        without an answer).

        Raises:
            ValueError: ``seconds`` is not positive.
        """
        self._faults.hang_all(seconds)

    def _listen(self) -> None:
        self._state.prepare_directories()
        server = HttpServer((self.settings.host, self._port), self._application)
        self._port = int(server.server_address[1])
        self._state.base_url = f"http://{self.settings.host}:{self._port}"
        thread = threading.Thread(target=server.serve_until_woken, name=f"emulator-{self._port}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread

    def _close(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.begin_closing()
        server.wake()
        thread.join()
        # The listener goes first, so from here on a new connection is refused rather
        # than queued in the backlog while the open ones are being closed.
        server.server_close()
        if not server.close_connections(_STOP_GRACE):
            logger.warning("emulator_stop_abandoned_handlers", extra={"port": self._port})
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
        other than the request record). A ``reset_after_body`` response is the
        exception: the request is handled normally and only its answer is dropped.

        Raises:
            ValueError: ``path`` has a query string or does not start with "/".
        """
        if "?" in path or not path.startswith("/"):
            raise ValueError(f"script paths start with '/' and have no query string: {path!r}")
        self._state.add_scripts(method, path, responses)

    def uploads_by_key(self) -> dict[str | None, int]:
        """How many received files each ``Idempotency-Key`` delivered (None: sent without one)."""
        with self._state.lock:
            return dict(collections.Counter(received.idempotency_key for received in self._state.received))

    def revoke_tokens(self) -> None:
        """Invalidate every T token and C JWT issued so far; their next use gets 401."""
        with self._state.lock:
            self._state.tokens.revoke_all()

    def set_login_enabled(self, enabled: bool) -> None:
        """While disabled, T and C logins answer 401 whatever the credentials."""
        with self._state.lock:
            self._state.login_enabled = enabled
