"""What a delivery's templates can say about the file: ``{file.name}``, ``{file.size}``..."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileFacts:
    """A file about to be delivered, as templates see it."""

    path: Path
    relative_path: str
    size: int
    sha256: str | None = None

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


async def file_facts(path: Path, relative_path: str, *, with_sha256: bool) -> FileFacts:
    """Facts about ``path``; the SHA-256 (a full read) only when a template uses it."""
    size = path.stat().st_size
    digest = await asyncio.to_thread(_sha256, path) if with_sha256 else None
    return FileFacts(path=path, relative_path=relative_path, size=size, sha256=digest)


@functools.lru_cache(maxsize=256)
def _mime_type(suffix: str) -> str:
    guessed, _ = mimetypes.guess_type(f"file{suffix}", strict=False)
    return guessed or "application/octet-stream"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
