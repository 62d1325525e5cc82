"""Request bodies that carry the file: multipart/form-data, read off the event loop.

The fields go first and the file last (S3 POST policies require it), in the format
httpx writes (HTML5 form encoding of names). The file's bytes are read with
``os.pread`` through the descriptor the delivery opened, in a worker thread, so a slow
disk or NFS mount never stalls the event loop. A small file is read in one go and sent
as one buffer (one thread hop, one write to the socket); a large one streams in chunks
with its ``Content-Length`` known up front.

A body over :data:`PROGRESS_FROM` bytes says how it goes (:class:`UploadProgress`): an
``upload_started`` line, then ``upload_progress`` every :data:`PROGRESS_EVERY` seconds
with the bytes sent, the rate and the time left, so a multi-GB upload never looks like
a hang.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping

import httpx

from uploader_daemon.delivery.facts import FileFacts
from uploader_daemon.logs import get_logger

log = get_logger(__name__)

# Bodies up to this size are read whole and sent as one buffer.
ONE_BUFFER_LIMIT = 256 * 1024
CHUNK_SIZE = 512 * 1024
# Bodies larger than this report their progress, every this many seconds.
PROGRESS_FROM = 8 * 1024 * 1024
PROGRESS_EVERY = 10.0
_MIB = 1024 * 1024

# HTML5 form encoding, as httpx and browsers write names: a quote and control
# characters percent-escaped, a backslash doubled.
_ESCAPES = {'"': "%22", "\\": "\\\\"} | {chr(code): f"%{code:02X}" for code in range(0x20) if code != 0x1B}
_ESCAPED = re.compile("|".join(re.escape(character) for character in _ESCAPES))


class FileShrankError(OSError):
    """The file ended before the size it had when the delivery began."""


class MultipartBody:
    """A multipart/form-data body: text fields, then the file."""

    def __init__(
        self,
        fields: Mapping[str, str],
        file_field: str,
        file: FileFacts,
        content_type: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (monotonic seconds) times the progress lines of a large body."""
        boundary = os.urandom(16).hex()
        head = b"".join(
            b"--%s\r\n%s\r\n\r\n%s\r\n" % (boundary.encode(), _disposition(name), value.encode())
            for name, value in fields.items()
        )
        head += b"--%s\r\n%s; %s\r\nContent-Type: %s\r\n\r\n" % (
            boundary.encode(),
            _disposition(file_field),
            _parameter("filename", file.wire_name),
            content_type.encode(),
        )
        self._head = head
        self._tail = b"\r\n--%s--\r\n" % boundary.encode()
        self._file = file
        self._clock = clock
        self.length = len(head) + file.size + len(self._tail)
        self.headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(self.length),
        }

    async def content(self) -> bytes | MultipartStream:
        """The body for ``httpx``'s ``content=``: one buffer when small, else a stream."""
        if self.length <= ONE_BUFFER_LIMIT:
            data = _read_cached(self._file)
            if data is None:
                data = await asyncio.to_thread(_read_exactly, self._file, 0, self._file.size)
            return b"".join((self._head, data, self._tail))
        return MultipartStream(self._head, self._file, self._tail, clock=self._clock)


class MultipartStream(httpx.AsyncByteStream):
    """A large multipart body: its head, the file in chunks read in a thread, its tail."""

    def __init__(
        self,
        head: bytes,
        file: FileFacts,
        tail: bytes,
        *,
        clock: Callable[[], float] = time.monotonic,
        progress_from: int = PROGRESS_FROM,
        progress_every: float = PROGRESS_EVERY,
    ) -> None:
        self._head = head
        self._file = file
        self._tail = tail
        self._clock = clock
        self._progress_from = progress_from
        self._progress_every = progress_every

    async def __aiter__(self) -> AsyncIterator[bytes]:
        progress = None
        if self._file.size > self._progress_from:
            # Made anew for each pass: a redirect or a retry sends the body again.
            progress = UploadProgress(self._file, self._clock, self._progress_every)
        yield self._head
        offset = 0
        while offset < self._file.size:
            length = min(CHUNK_SIZE, self._file.size - offset)
            chunk = await asyncio.to_thread(_read_exactly, self._file, offset, length)
            offset += len(chunk)
            yield chunk
            # The transport asks for the next chunk once this one is written.
            if progress is not None:
                progress.sent(offset)
        yield self._tail


class UploadProgress:
    """Says how far one large upload got: a line at the start, then one every ``every`` seconds."""

    def __init__(self, file: FileFacts, clock: Callable[[], float], every: float) -> None:
        self._file = file
        self._clock = clock
        self._every = every
        self._started = self._last_at = clock()
        self._last_sent = 0
        log.info("upload_started", file=file.relative_path, size=file.size, size_mib=_mib(file.size))

    def sent(self, sent: int) -> None:
        """``sent`` bytes of the file are on their way; log a line if one is due."""
        now = self._clock()
        if now - self._last_at < self._every or sent >= self._file.size:
            return  # the delivery's own line says when it is done
        rate = (sent - self._last_sent) / (now - self._last_at)  # over the last interval
        remaining = self._file.size - sent
        log.info(
            "upload_progress",
            file=self._file.relative_path,
            sent=sent,
            size=self._file.size,
            percent=round(100 * sent / self._file.size, 1),
            rate_mib_s=round(rate / _MIB, 2),
            eta_s=round(remaining / rate) if rate > 0 else None,
            elapsed_s=round(now - self._started),
        )
        self._last_at, self._last_sent = now, sent


def _mib(size: int) -> float:
    return round(size / _MIB, 1)


def _read_cached(file: FileFacts) -> bytes | None:
    """The whole (small) file if the page cache holds it, without blocking; else ``None``.

    ``RWF_NOWAIT`` reads only what is cached and refuses otherwise: a freshly written file
    costs no thread hop, a cold one or a slow mount (or a filesystem that does not know
    the flag) goes to a worker thread as before.
    """
    descriptor = file.descriptor
    if descriptor is None or file.size == 0 or not hasattr(os, "RWF_NOWAIT"):
        return None
    buffer = bytearray(file.size)
    try:
        read = os.preadv(descriptor, [buffer], 0, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: not supported here
        return None
    return bytes(buffer) if read == file.size else None


def _read_exactly(file: FileFacts, offset: int, length: int) -> bytes:
    """``length`` bytes from ``offset`` (blocking: call it in a thread)."""
    descriptor = file.descriptor
    if descriptor is None:
        with open(file.path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
    else:
        data = os.pread(descriptor, length, offset)
        while 0 < len(data) < length:  # pread may return less near a slow mount's edge
            more = os.pread(descriptor, length - len(data), offset + len(data))
            if not more:
                break
            data += more
    if len(data) != length:
        raise FileShrankError(f"{file.relative_path} is shorter than the {file.size} bytes it had")
    return data


def _disposition(name: str) -> bytes:
    return b"Content-Disposition: form-data; " + _parameter("name", name)


def _parameter(key: str, value: str) -> bytes:
    escaped = _ESCAPED.sub(lambda match: _ESCAPES[match.group(0)], value)
    return f'{key}="{escaped}"'.encode()
