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
    def mime_type(self) -> str:
        # Keyed on the last two suffixes: ".tar.gz" is a tar archive, ".gz" alone is not.
        return _mime_type("".join(PurePosixPath(self.path.name).suffixes[-2:]))

    def template_values(self) -> dict[str, object]:
        """The ``file`` namespace of templates."""
        pure = PurePosixPath(self.path.name)
        return {
            "name": self.path.name,
            "stem": pure.stem,
            "extension": pure.suffix,
            "size": self.size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "relative_path": self.relative_path,
        }


async def file_facts(
    path: Path, relative_path: str, *, descriptor: int, size: int, with_sha256: bool
) -> FileFacts:
    """Facts about the open file; the SHA-256 (a full read) only when a template uses it."""
    digest = await asyncio.to_thread(_sha256, descriptor) if with_sha256 else None
    return FileFacts(path=path, relative_path=relative_path, size=size, sha256=digest, descriptor=descriptor)


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
