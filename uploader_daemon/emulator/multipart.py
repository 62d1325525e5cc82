"""A streaming ``multipart/form-data`` parser that spools file parts to disk.

The emulator receives uploads of any size, so the body is never held in memory: it is
read in chunks of at most ``chunk_size`` bytes, file parts go straight to a spool file
while their size and SHA-256 are computed, and only small text fields are kept. Memory
stays bounded by ``chunk_size`` plus the boundary length, whatever the upload size.

The delimiter is ``CRLF "--" boundary`` (RFC 2046). The parser pretends the body starts
with a CRLF so the first delimiter looks like every other one and needs no special
case; this also makes a preamble before the first delimiter harmless.

Filenames are kept exactly as sent (``FilePart.raw_filename``, bytes) and as text
(``FilePart.filename``). Part headers are bytes of no declared charset, so the text is
found the way servers do it (see ``parse_content_disposition``): RFC 5987/7578
``filename*=charset''percent-encoded`` wins; otherwise the quoted value with its
backslash escapes undone, then the HTML5 form escapes that browsers and httpx 0.28
write (``%22`` for a quote, ``%0A`` and friends for control characters) undone, then
decoded as UTF-8, or as latin-1 if that fails (a client sending raw latin-1 bytes).
"""

from __future__ import annotations

import enum
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from uploader_daemon.emulator.disposition import (
    MultipartError as MultipartError,
)
from uploader_daemon.emulator.disposition import (
    decode_wire_text,
    parse_header_parameters,
)
from uploader_daemon.emulator.disposition import (
    parse_content_disposition as parse_content_disposition,
)

DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_MAX_FIELD_BYTES = 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_PARTS = 1000
# RFC 2046: a boundary is 1 to 70 characters.
_MAX_BOUNDARY_LENGTH = 70


@dataclass(frozen=True)
class FilePart:
    """A part with a ``filename``: its content is in the spool file at ``path``."""

    name: str
    filename: str
    content_type: str | None
    path: Path
    size: int
    sha256: str
    # The filename parameter's value exactly as on the wire (see parse_content_disposition).
    raw_filename: bytes = b""


@dataclass(frozen=True)
class MultipartForm:
    """A parsed form: text fields, spooled files, and every part's name in order.

    The caller owns the spool files: move the ones it keeps, then call ``discard`` to
    delete whatever is left.
    """

    fields: dict[str, str]
    files: tuple[FilePart, ...]
    part_order: tuple[str, ...]

    def discard(self) -> None:
        """Delete the spool files that were not moved away."""
        for part in self.files:
            part.path.unlink(missing_ok=True)


def boundary_from_content_type(content_type: str | None) -> str:
    """Return the boundary of a ``multipart/form-data`` Content-Type header.

    Raises:
        MultipartError: the type is not multipart/form-data or has no usable boundary.
    """
    if not content_type:
        raise MultipartError("the request has no Content-Type; multipart/form-data is needed")
    media_type, parameters = parse_header_parameters(content_type)
    if media_type != "multipart/form-data":
        raise MultipartError(f"the Content-Type is {media_type!r}, not multipart/form-data")
    boundary = parameters.get("boundary", "")
    if not 1 <= len(boundary) <= _MAX_BOUNDARY_LENGTH:
        raise MultipartError("the multipart boundary is missing or longer than 70 characters")
    return boundary


def parse_multipart(
    read: Callable[[int], bytes],
    length: int,
    boundary: str,
    spool_dir: Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> MultipartForm:
    """Read exactly ``length`` bytes with ``read`` and parse them as a multipart body.

    ``read(n)`` returns at most ``n`` bytes and ``b""`` at end of stream (a socket file's
    ``read`` fits). The parser never asks for more than ``length`` bytes in total, so
    the next request on a keep-alive connection is left untouched. File parts are
    written to new files in ``spool_dir``; on any error those files are removed.

    Raises:
        MultipartError: the body is malformed, truncated, or over a size limit.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    try:
        boundary_bytes = boundary.encode("ascii")
    except UnicodeEncodeError as error:
        raise MultipartError("the multipart boundary is not ASCII") from error
    parser = _StreamingParser(boundary_bytes, spool_dir, max_field_bytes, max_header_bytes, max_parts)
    try:
        _feed_body(parser, read, length, chunk_size)
        return parser.finish()
    except BaseException:
        # Whatever went wrong (including a dropped connection), leave no spool files.
        parser.abort()
        raise


def _feed_body(parser: _StreamingParser, read: Callable[[int], bytes], length: int, chunk_size: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = read(min(chunk_size, remaining))
        if not chunk:
            raise MultipartError(f"the body ended after {length - remaining} of {length} bytes")
        remaining -= len(chunk)
        parser.feed(chunk)


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    AFTER_DELIMITER = enum.auto()
    HEADERS = enum.auto()
    BODY = enum.auto()
    EPILOGUE = enum.auto()


class _FieldSink:
    """Collects a small text field in memory, refusing to grow past a limit."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self._limit = limit
        self._data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self._data) + len(data) > self._limit:
            raise MultipartError(
                f"the form field {self.name!r} is over {self._limit} bytes; send large content as a file part"
            )
        self._data += data

    def value(self) -> str:
        try:
            return self._data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise MultipartError(f"the form field {self.name!r} is not UTF-8") from error


class _FileSink:
    """Streams a file part into a spool file while hashing and counting it."""

    def __init__(
        self, name: str, filename: str, raw_filename: bytes, content_type: str | None, spool_dir: Path
    ) -> None:
        self.name = name
        self.filename = filename
        self.raw_filename = raw_filename
        self.content_type = content_type
        descriptor, path = tempfile.mkstemp(prefix="part-", dir=spool_dir)
        self.path = Path(path)
        self._file: BinaryIO = os.fdopen(descriptor, "wb")
        self._digest = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._digest.update(data)
        self._size += len(data)

    def close(self) -> FilePart:
        self._file.close()
        return FilePart(
            self.name,
            self.filename,
            self.content_type,
            self.path,
            self._size,
            self._digest.hexdigest(),
            raw_filename=self.raw_filename,
        )

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class _StreamingParser:
    """The state machine behind ``parse_multipart``; fed chunk by chunk."""

    def __init__(
        self,
        boundary: bytes,
        spool_dir: Path,
        max_field_bytes: int,
        max_header_bytes: int,
        max_parts: int,
    ) -> None:
        if not 1 <= len(boundary) <= _MAX_BOUNDARY_LENGTH:
            raise MultipartError("the multipart boundary must be 1 to 70 characters")
        self._delimiter = b"\r\n--" + boundary
        self._spool_dir = spool_dir
        self._max_field_bytes = max_field_bytes
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        # The virtual leading CRLF: see the module docstring.
        self._buffer = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self._sink: _FieldSink | _FileSink | None = None
        self._fields: dict[str, str] = {}
        self._files: list[FilePart] = []
        self._order: list[str] = []

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while self._step():
            pass

    def finish(self) -> MultipartForm:
        if self._state is not _State.EPILOGUE:
            raise MultipartError("the body ended before the closing multipart boundary")
        return MultipartForm(dict(self._fields), tuple(self._files), tuple(self._order))

    def abort(self) -> None:
        if isinstance(self._sink, _FileSink):
            self._sink.abort()
        self._sink = None
        for part in self._files:
            part.path.unlink(missing_ok=True)

    def _step(self) -> bool:
        """Advance as far as the buffer allows; return True if another step may progress."""
        if self._state is _State.PREAMBLE:
            return self._skip_preamble()
        if self._state is _State.AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state is _State.HEADERS:
            return self._read_headers()
        if self._state is _State.BODY:
            return self._read_body()
        # Epilogue: ignored, but the caller still reads it so the connection stays usable.
        self._buffer.clear()
        return False

    def _skip_preamble(self) -> bool:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            self._keep_possible_delimiter_start()
            return False
        del self._buffer[: index + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] == b"--":
            self._state = _State.EPILOGUE
            self._buffer.clear()
            return False
        # RFC 2046 allows "transport padding" (spaces, tabs) before the CRLF.
        line_end = self._buffer.find(b"\r\n")
        padding = self._buffer if line_end < 0 else self._buffer[:line_end]
        if padding.strip(b" \t"):
            raise MultipartError("a multipart boundary is followed by garbage, not CRLF")
        if line_end < 0:
            if len(self._buffer) > self._max_header_bytes:
                raise MultipartError("too much padding after a multipart boundary")
            return False
        del self._buffer[: line_end + 2]
        self._state = _State.HEADERS
        return True

    def _read_headers(self) -> bool:
        if self._buffer.startswith(b"\r\n"):
            block = b""
            del self._buffer[:2]
        else:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self._max_header_bytes:
                    raise MultipartError(f"a part's headers are over {self._max_header_bytes} bytes")
                return False
            block = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
        self._start_part(_parse_part_headers(block))
        self._state = _State.BODY
        return True

    def _read_body(self) -> bool:
        assert self._sink is not None
        index = self._buffer.find(self._delimiter)
        if index >= 0:
            self._sink.write(bytes(self._buffer[:index]))
            del self._buffer[: index + len(self._delimiter)]
            self._finish_part()
            self._state = _State.AFTER_DELIMITER
            return True
        # Everything except a tail that might be the start of a delimiter split across
        # reads is content; the tail waits for the next chunk.
        safe = len(self._buffer) - (len(self._delimiter) - 1)
        if safe > 0:
            self._sink.write(bytes(self._buffer[:safe]))
            del self._buffer[:safe]
        return False

    def _keep_possible_delimiter_start(self) -> None:
        excess = len(self._buffer) - (len(self._delimiter) - 1)
        if excess > 0:
            del self._buffer[:excess]

    def _start_part(self, headers: dict[str, str]) -> None:
        if len(self._order) >= self._max_parts:
            raise MultipartError(f"the form has more than {self._max_parts} parts")
        disposition = headers.get("content-disposition")
        if disposition is None:
            raise MultipartError("a part has no Content-Disposition header")
        parsed = parse_content_disposition(disposition.encode("latin-1"))
        if parsed.kind != "form-data" or parsed.name is None:
            raise MultipartError("a part's Content-Disposition is not form-data with a name")
        content_type = headers.get("content-type")
        if content_type is not None:
            content_type = decode_wire_text(content_type.encode("latin-1"))
        if parsed.filename is not None and parsed.raw_filename is not None:
            self._sink = _FileSink(
                parsed.name, parsed.filename, parsed.raw_filename, content_type, self._spool_dir
            )
        else:
            self._sink = _FieldSink(parsed.name, self._max_field_bytes)

    def _finish_part(self) -> None:
        sink = self._sink
        assert sink is not None
        self._sink = None
        self._order.append(sink.name)
        if isinstance(sink, _FileSink):
            self._files.append(sink.close())
        else:
            self._fields[sink.name] = sink.value()


def _parse_part_headers(block: bytes) -> dict[str, str]:
    """Parse a part's header block into a dict with lowercase names.

    Values are the header bytes read as latin-1, one character per byte, so nothing is
    lost yet: ``_start_part`` decodes each value on its own (a raw UTF-8 filename and a
    raw latin-1 one are told apart there).
    """
    text = block.decode("latin-1")
    headers: dict[str, str] = {}
    last_name: str | None = None
    for line in text.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last_name is not None:
            # Obsolete header folding: a continuation of the previous header.
            headers[last_name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise MultipartError(f"a part header line has no colon: {line[:80]!r}")
        last_name = name.strip().lower()
        headers[last_name] = value.strip()
    return headers
