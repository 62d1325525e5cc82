"""Saving a downloaded result: its name, its bytes streamed to disk off the loop, its checks.

A server-chosen name is reduced to a plain file name (no folders, no hidden files, short
enough for any filesystem); the body streams into a ``.part`` file whose every write and
fsync run in a worker thread; a short body is refused; a partial file never survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.utils
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import httpx

from uploader_daemon.errors import TransientDeliveryError

# Each chunk is written by a worker thread: big chunks keep the thread hops few.
DOWNLOAD_CHUNK = 1024 * 1024
# Filesystems allow 255 bytes per name; the rest is for ".1234" and ".abcd1234.part".
_MAX_NAME_BYTES = 200
_MAX_SUFFIX_BYTES = 20


def attachment_name(response: httpx.Response) -> str | None:
    """The Content-Disposition file name; ``filename*`` (RFC 5987) wins over ``filename``."""
    header = response.headers.get("Content-Disposition")
    if not header:
        return None
    message = email.message.Message()
    message["Content-Disposition"] = header
    plain: str | None = None
    extended: str | None = None
    for key, value in message.get_params(header="content-disposition", failobj=[])[1:]:
        if key.lower() != "filename":
            continue
        if isinstance(value, tuple):
            extended = extended or email.utils.collapse_rfc2231_value(value, errors="replace")
        else:
            plain = plain or value
    filename = extended or plain
    return safe_name(filename) if filename else None


def safe_name(name: str) -> str:
    """A server-chosen name reduced to a plain file name: no folders, no hidden files,
    short enough for any filesystem (with room for the ``.part`` and counter suffixes)."""
    plain = PurePosixPath(name.replace("\\", "/")).name.lstrip(".").strip()
    plain = "".join(character for character in plain if character.isprintable())
    if len(plain.encode()) <= _MAX_NAME_BYTES:
        return plain
    suffix = PurePosixPath(plain).suffix
    if len(suffix.encode()) > _MAX_SUFFIX_BYTES:
        suffix = ""
    stem = plain[: len(plain) - len(suffix)]
    return stem.encode()[: _MAX_NAME_BYTES - len(suffix.encode())].decode("utf-8", "ignore") + suffix


async def stream_to(response: httpx.Response, path: Path) -> int:
    """Write the (decoded) body into a new ``path``, synced; returns the bytes written.

    The loop only receives: opening, each write and the fsync run in a worker thread.
    """
    handle = await asyncio.to_thread(_create, path)
    try:
        written = 0
        async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
            await asyncio.to_thread(handle.write, chunk)
            written += len(chunk)
        await asyncio.to_thread(_sync, handle)
    finally:
        handle.close()  # cheap: _sync flushed everything (a failed download is discarded)
    return written


def check_complete(step: str, response: httpx.Response) -> None:
    """Raise :class:`TransientDeliveryError` when fewer bytes came than Content-Length said.

    Content-Length counts the bytes on the wire: with a Content-Encoding (gzip) the file
    holds the decoded, longer content, so the raw count is what is compared.
    """
    received = response.num_bytes_downloaded
    expected = response.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and int(expected) != received:
        raise TransientDeliveryError(
            f"step {step}: the download stopped after {received} of {expected} bytes", step=step
        )


def _create(path: Path) -> BinaryIO:
    """A new file at ``path`` (its folder made if missing); never an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def discard(path: Path) -> None:
    """Remove a partial download (freeing gigabytes can take a moment: a worker thread).

    A partial that cannot be removed (or never existed) must not hide the error that
    stopped the download, so the removal's own failure is ignored.
    """
    with contextlib.suppress(OSError):
        path.unlink()
