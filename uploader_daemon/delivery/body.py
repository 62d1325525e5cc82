"""Request bodies that carry the file: multipart/form-data, read off the event loop.

The fields go first and the file last (S3 POST policies require it), in the format
httpx writes (HTML5 form encoding of names). The file's bytes are read with
``os.pread`` through the descriptor the delivery opened, in a worker thread, so a slow
disk or NFS mount never stalls the event loop. A small file is read in one go and sent
as one buffer (one thread hop, one write to the socket); a large one streams in chunks
with its ``Content-Length`` known up front.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Mapping

import httpx

from uploader_daemon.delivery.facts import FileFacts

# Bodies up to this size are read whole and sent as one buffer.
ONE_BUFFER_LIMIT = 256 * 1024
CHUNK_SIZE = 512 * 1024

# HTML5 form encoding, as httpx and browsers write names: a quote and control
# characters percent-escaped, a backslash doubled.
_ESCAPES = {'"': "%22", "\\": "\\\\"} | {chr(code): f"%{code:02X}" for code in range(0x20) if code != 0x1B}
_ESCAPED = re.compile("|".join(re.escape(character) for character in _ESCAPES))


class FileShrankError(OSError):
    """The file ended before the size it had when the delivery began."""


class MultipartBody:
    """A multipart/form-data body: text fields, then the file."""

    def __init__(
        self, fields: Mapping[str, str], file_field: str, file: FileFacts, content_type: str
    ) -> None:
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
        self.length = len(head) + file.size + len(self._tail)
        self.headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(self.length),
        }

    async def content(self) -> bytes | MultipartStream:
        """The body for ``httpx``'s ``content=``: one buffer when small, else a stream."""
        if self.length <= ONE_BUFFER_LIMIT:
            data = await asyncio.to_thread(_read_exactly, self._file, 0, self._file.size)
            return b"".join((self._head, data, self._tail))
        return MultipartStream(self._head, self._file, self._tail)


class MultipartStream(httpx.AsyncByteStream):
    """A large multipart body: its head, the file in chunks read in a thread, its tail."""

    def __init__(self, head: bytes, file: FileFacts, tail: bytes) -> None:
        self._head = head
        self._file = file
        self._tail = tail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        offset = 0
        while offset < self._file.size:
            length = min(CHUNK_SIZE, self._file.size - offset)
            chunk = await asyncio.to_thread(_read_exactly, self._file, offset, length)
            offset += len(chunk)
            yield chunk
        yield self._tail


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
