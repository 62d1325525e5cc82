"""Logging: structured events, one JSON object per line for journald, readable on a TTY.

Ours (structlog) and the libraries' (stdlib ``logging``: apscheduler, httpx, watchdog)
share the same processors and renderer, so all output looks alike and every line
passes the :class:`Redactor`. Configured once by the CLI, never at import time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

REDACTED = "[REDACTED]"

# Keys whose values are secrets whatever they contain.
_SENSITIVE_KEY = re.compile(
    r"^(password|passwd|secret|token|access_token|refresh_token|id_token|authorization|"
    r"proxy_authorization|cookie|set_cookie|api_key|app_key|user_token|client_secret|"
    r"x_amz_signature|signature|policy|credentials?)$|(_password|_secret|_token|_api_?key|_apikey)$"
)
# Credentials that can show up inside free text (an exception message, a body excerpt).
# The token characters are RFC 6750's b64token (base64url included: "-" and "_"). The
# scheme needs a space after it, so identifiers such as bearer_token_missing survive.
_BEARER = re.compile(r"(?i)\b(?:(bearer|basic)\s+|(tok:)\s*)[A-Za-z0-9._~+/=_-]{6,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_MIN_SECRET_LENGTH = 4

# Libraries whose INFO output is noise for an admin (a line per HTTP request, per
# scheduler tick) or could echo URLs with presigned query strings.
_QUIET_LIBRARIES = ("apscheduler", "httpx", "httpcore", "watchdog", "botocore", "urllib3", "pycognito")


class Redactor:
    """A structlog processor that removes secrets from every event.

    Three nets: keys named like secrets are blanked; every value the daemon knows to be
    secret (passwords, header values, tokens as they are issued) is cut out of any text;
    ``Bearer ...`` and JWT-shaped strings are cut out even when not registered.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._longest_first: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Register a secret value (a token as soon as it is obtained)."""
        if len(secret) >= _MIN_SECRET_LENGTH:
            self._secrets.add(secret)
            self._longest_first = sorted(self._secrets, key=len, reverse=True)

    def discard(self, secret: str) -> None:
        """Forget a secret that can no longer be used (a replaced token)."""
        self._secrets.discard(secret)
        self._longest_first = sorted(self._secrets, key=len, reverse=True)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            event_dict[key] = self._clean(key, event_dict[key])
        return event_dict

    def scrub(self, text: str) -> str:
        """Return ``text`` with every known and recognisable credential replaced."""
        for secret in self._longest_first:  # longest first: a secret may contain another
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "eyJ" in text:
            text = _JWT.sub(REDACTED, text)
        return _BEARER.sub(lambda match: f"{match.group(1) or match.group(2)} {REDACTED}", text)

    def _clean(self, key: object, value: Any) -> Any:
        if isinstance(key, str) and _SENSITIVE_KEY.search(key.lower().replace("-", "_")):
            return REDACTED if value not in (None, "") else value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, MutableMapping | dict):
            return {k: self._clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(None, item) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.scrub(bytes(value).decode("utf-8", "replace"))
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, os.PathLike):
            return self.scrub(os.fsdecode(value))
        # Anything else (an exception passed as error=..., an object) is rendered as its
        # repr by every renderer: render it here, so the secrets in it are cut too.
        return self.scrub(repr(value))


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
    library_level = logging.DEBUG if level == "debug" else logging.WARNING
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    # httpcore's debug output is a line per socket operation: useless even when debugging.
    logging.getLogger("httpcore").setLevel(logging.WARNING)
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
