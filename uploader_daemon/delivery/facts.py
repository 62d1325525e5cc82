"""What a delivery's templates can say about the file: ``{file.name}``, ``{file.size}``..."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileFacts:
    """A file about to be delivered, as templates see it, and its content.

    ``descriptor`` is the file as opened when the delivery began (``O_NOFOLLOW``): every
    step reads through it, so swapping the path for another file or a symlink in the
    meantime cannot change what is sent.
    """

    path: Path
    relative_path: str
    size: int
    sha256: str | None = None
    descriptor: int | None = None

    def open(self) -> BinaryIO:
        """The content from its first byte, as a file object the caller closes."""
        if self.descriptor is None:
            return self.path.open("rb")
        handle = os.fdopen(os.dup(self.descriptor), "rb")
        handle.seek(0)
        return handle

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def wire_name(self) -> str:
        """The file name as it goes on the wire (see :func:`wire_text`)."""
        return wire_text(self.path.name)

    @property
    def mime_type(self) -> str:
        # Keyed on the last two suffixes: ".tar.gz" is a tar archive, ".gz" alone is not.
        return _mime_type("".join(PurePosixPath(self.path.name).suffixes[-2:]))

    def template_values(self) -> dict[str, object]:
        """The ``file`` namespace of templates."""
        pure = PurePosixPath(self.wire_name)
        return {
            "name": pure.name,
            "stem": pure.stem,
            "extension": pure.suffix,
            "size": self.size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "relative_path": wire_text(self.relative_path),
        }


async def file_facts(
    path: Path, relative_path: str, *, descriptor: int, size: int, with_sha256: bool
) -> FileFacts:
    """Facts about the open file; the SHA-256 (a full read) only when a template uses it."""
    digest = await asyncio.to_thread(_sha256, descriptor) if with_sha256 else None
    return FileFacts(path=path, relative_path=relative_path, size=size, sha256=digest, descriptor=descriptor)


def wire_text(name: str) -> str:
    """A file name as text for the wire (multipart file names, JSON bodies, URLs).

    Linux names are bytes; one that is not valid UTF-8 (a legacy SMB or latin-1 client
    wrote it) reaches Python with surrogate escapes, which no HTTP body can carry. Such
    a name is decoded as latin-1 instead, which maps every byte to one character and is
    what those clients meant: ``b"caf\\xe9.csv"`` goes out as ``café.csv``. The file
    itself keeps its original bytes on disk, in the archive and in failed_dir.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("latin-1")
    return name


@functools.lru_cache(maxsize=256)
def _mime_type(suffix: str) -> str:
    guessed, _ = mimetypes.guess_type(f"file{suffix}", strict=False)
    return guessed or "application/octet-stream"


def _sha256(descriptor: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    # pread leaves the descriptor's shared file offset alone.
    while chunk := os.pread(descriptor, _HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
