"""Logging: structured events, one JSON object per line for journald, readable on a TTY.

Ours (structlog) and the libraries' (stdlib ``logging``: apscheduler, httpx, watchdog)
share the same processors and renderer, so all output looks alike and every line
passes the :class:`~uploader_daemon.redaction.Redactor`. Libraries that echo URLs or response bodies (httpx,
botocore...) stay at WARNING even at debug level: a secret they print may not be known
to the redactor yet. Configured once by the CLI, never at import time.

**journald priorities.** When stdout is the journal (systemd's ``$JOURNAL_STREAM``
names stdout's device and inode), each line starts with the ``<N>`` prefix of
``sd-daemon(3)``: ``<3>`` for errors, ``<4>`` for warnings, ``<6>`` info, ``<7>`` debug,
``<2>`` critical. journald strips it and files the line at that priority, so
``journalctl -p err`` finds the errors and ``journalctl -o cat`` still prints the bare
JSON for ``jq``. A terminal, a pipe or a file gets plain lines. (The prefix rather than
the native journal protocol: it needs no socket and no library, and the line stays one
JSON object that any log shipper reading the journal's MESSAGE understands.)
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
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
# Libraries whose warnings repeat what one of our events says once: psycopg's pool warns
# at every reconnection attempt while the database is down (``journal_unreachable`` and
# ``journal_reachable`` say it once each). Their warnings show at debug.
_OUTAGE_REPEATING_LIBRARIES = ("psycopg",)

# sd-daemon(3) priorities by structlog method name / stdlib level.
_PRIORITIES = {
    "debug": 7,
    "info": 6,
    "msg": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}


def _priority_of_level(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to journald: ``$JOURNAL_STREAM`` is its ``device:inode``."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, separator, inode = value.partition(":")
    if not separator or not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a StringIO), or closed
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def configure_logging(
    level: str,
    log_format: str,
    redactor: Redactor,
    stream: TextIO | None = None,
    *,
    cache_loggers: bool = True,
    journal: bool | None = None,
) -> None:
    """Send every log line to ``stream`` (stdout) through ``redactor``, then render it.

    ``log_format`` is ``json``, ``console`` or ``auto`` (console when ``stream`` is a
    TTY). Our own events take structlog's direct path (a few microseconds per line: the
    daemon logs per file); the libraries' stdlib records go through a
    ``ProcessorFormatter`` with the same processors, so both look alike. Both writers
    share one lock, so lines never interleave. ``cache_loggers=False`` is for tests
    that configure logging more than once in a process. ``journal`` says whether to
    prefix each line with its journald priority (see the module docstring); by default,
    when ``stream`` is the journal.
    """
    output = stream if stream is not None else sys.stdout
    prefixed = stream_is_journal(output) if journal is None else journal
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
        logger_factory=_LineWriterFactory(output, lock, prefixed),
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
    handler = _PrefixingHandler(output, prefixed)
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
    for name in _OUTAGE_REPEATING_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
    logging.captureWarnings(True)


class _LineWriter:
    """Writes each rendered event as one line and flushes it (journald reads a pipe).

    structlog calls the method named for the event's level, which gives the prefix.
    """

    def __init__(self, stream: TextIO, lock: threading.RLock, prefixed: bool) -> None:
        self._stream = stream
        self._lock = lock
        self._prefixed = prefixed

    def _write(self, method: str, message: str) -> None:
        prefix = f"<{_PRIORITIES[method]}>" if self._prefixed else ""
        with self._lock:
            self._stream.write(prefix + message + "\n")
            self._stream.flush()

    def debug(self, message: str) -> None:
        self._write("debug", message)

    def info(self, message: str) -> None:
        self._write("info", message)

    def warning(self, message: str) -> None:
        self._write("warning", message)

    def error(self, message: str) -> None:
        self._write("error", message)

    def critical(self, message: str) -> None:
        self._write("critical", message)

    def msg(self, message: str) -> None:
        self._write("msg", message)

    warn = warning
    exception = error
    fatal = critical
    log = msg


class _LineWriterFactory:
    def __init__(self, stream: TextIO, lock: threading.RLock, prefixed: bool) -> None:
        self._writer = _LineWriter(stream, lock, prefixed)

    def __call__(self, *args: object) -> _LineWriter:
        return self._writer


class _PrefixingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The libraries' records, with the same journald prefix as our own lines."""

    def __init__(self, stream: TextIO, prefixed: bool) -> None:
        super().__init__(stream)
        self._prefixed = prefixed

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"<{_priority_of_level(record.levelno)}>{line}" if self._prefixed else line


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
