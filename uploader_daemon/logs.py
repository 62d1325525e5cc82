"""Logging: structured events, one JSON object per line for journald, readable on a TTY.

Ours (structlog) and the libraries' (stdlib ``logging``: apscheduler, httpx, watchdog)
share the same processors and renderer, so all output looks alike and every line
passes the :class:`~uploader_daemon.redaction.Redactor`. Libraries that echo URLs or response bodies (httpx,
botocore...) stay at WARNING even at debug level: a secret they print may not be known
to the redactor yet. Configured once by the CLI, never at import time.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from uploader_daemon.redaction import Redactor

# Libraries whose INFO and DEBUG output is noise for an admin (a line per scheduler tick,
# per file event) but useful when debugging.
_CHATTY_LIBRARIES = ("apscheduler", "watchdog", "pycognito")
# Libraries kept at WARNING even at debug: their debug and info lines print request URLs
# with presigned query strings (httpx's "HTTP Request: GET ...?X-Amz-Signature=...") and
# whole response bodies (botocore's Cognito answer with the refresh token, before the
# daemon has it to register). Our own ``http_request`` debug event says what they would.
_SECRET_ECHOING_LIBRARIES = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer")


def configure_logging(
    level: str,
    log_format: str,
    redactor: Redactor,
    stream: TextIO | None = None,
    *,
    cache_loggers: bool = True,
) -> None:
    """Send every log line to ``stream`` (stdout) through ``redactor``, then render it.

    ``log_format`` is ``json``, ``console`` or ``auto`` (console when ``stream`` is a
    TTY). Our own events take structlog's direct path (a few microseconds per line: the
    daemon logs per file); the libraries' stdlib records go through a
    ``ProcessorFormatter`` with the same processors, so both look alike. Both writers
    share one lock, so lines never interleave. ``cache_loggers=False`` is for tests
    that configure logging more than once in a process.
    """
    output = stream if stream is not None else sys.stdout
    use_console = log_format == "console" or (log_format == "auto" and output.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(
            colors=output.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        if use_console
        else structlog.processors.JSONRenderer()
    )
    # Tracebacks are rendered to text before redaction, so secrets in them are cut too.
    finish: list[Processor] = [
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
    ]
    lock = threading.RLock()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *finish,
            redactor,
            _standard_keys_first,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_LineWriterFactory(output, lock),
        cache_logger_on_first_use=cache_loggers,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            *finish,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redactor,
            _standard_keys_first,
            renderer,
        ],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    handler.lock = lock
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    chatty_level = logging.DEBUG if level == "debug" else logging.WARNING
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(chatty_level)
    for name in _SECRET_ECHOING_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)


class _LineWriter:
    """Writes each rendered event as one line and flushes it (journald reads a pipe)."""

    def __init__(self, stream: TextIO, lock: threading.RLock) -> None:
        self._stream = stream
        self._lock = lock

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LineWriterFactory:
    def __init__(self, stream: TextIO, lock: threading.RLock) -> None:
        self._writer = _LineWriter(stream, lock)

    def __call__(self, *args: object) -> _LineWriter:
        return self._writer


def _standard_keys_first(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``timestamp``, ``level``, ``event`` lead every line, so a person can scan them."""
    ordered = {key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict}
    ordered.update(event_dict)
    return ordered


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger for a module of this package (``get_logger(__name__)``).

    The name is not logged: our events are identified by their event names.
    """
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
