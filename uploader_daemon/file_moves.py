"""Moving files out of the drop folder (archive, failed) and results into output folders.

Nothing is ever overwritten: a name already taken gets a counter (``report.1.csv``).
The move is a hard link followed by an unlink, because ``link`` refuses an existing
name atomically where ``rename`` would silently replace it; across filesystems the
file is copied (through a descriptor opened without following symlinks) to a
temporary name in the destination, synced, then linked into place.

Only the file that was meant is moved. With ``expect`` (the identity: inode, size, mtime of
the delivered file) a path that now leads elsewhere (a new version renamed over it, a
sub-folder swapped for a symlink) raises :class:`FileChangedError` and nothing moves;
and the source name is removed only while it still holds the moved file, so a new
version that arrives during a long copy stays where it is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from uploader_daemon.identity import FileIdentity

_MAX_CANDIDATES = 10_000
_NO_HARD_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK)
_COPY_CHUNK = 1024 * 1024


class FileChangedError(OSError):
    """The path no longer leads to the file that was meant; nothing was moved."""


class CopyNeededError(OSError):
    """The move needs a copy (another filesystem): slow, so the caller may want a thread."""


class SidecarError(OSError):
    """The failed file was moved, but its ``.error.json`` could not be written."""

    def __init__(self, destination: Path, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.destination = destination


def place(
    source: Path,
    directory: Path,
    name: str,
    *,
    keep_free: tuple[str, ...] = (),
    allow_copy: bool = True,
    expect: FileIdentity | None = None,
) -> Path:
    """Move ``source`` into ``directory`` (made when missing) as ``name`` (or ``name`` with a counter).

    ``keep_free`` lists suffixes whose companions must also be free (``.error.json``).
    With ``allow_copy=False`` a move that would need a copy raises
    :class:`CopyNeededError` instead, leaving everything as it was: a hard link takes
    microseconds and can run on the event loop, a copy of a large file cannot.
    Returns the final path. Raises ``OSError`` when the move is impossible, with
    nothing changed: if the source cannot be removed from its folder, the new name is
    taken back, so a retry does not leave one more copy behind each time.
    """
    try:
        return _place_in_existing(source, directory, name, keep_free, allow_copy, expect)
    except FileNotFoundError:
        # The usual directory exists already: making sure first would cost a failed
        # mkdir and a stat for every file. When the link fails, was it the directory?
        if directory.is_dir():
            raise  # no: the source is gone
    directory.mkdir(parents=True, exist_ok=True)
    return _place_in_existing(source, directory, name, keep_free, allow_copy, expect)


def _place_in_existing(
    source: Path,
    directory: Path,
    name: str,
    keep_free: tuple[str, ...],
    allow_copy: bool,
    expect: FileIdentity | None,
) -> Path:
    for candidate in _candidates(name):
        destination = directory / candidate
        if any(destination.with_name(destination.name + suffix).exists() for suffix in keep_free):
            continue
        try:
            moved = _link_or_copy(source, destination, allow_copy, expect)
        except FileExistsError:
            if not _same_file(source, destination):
                continue
            # A crash between link and unlink last time: the move is half done already.
            moved = FileIdentity.of(os.lstat(destination))
        _remove_source(source, destination, moved)
        return destination
    raise OSError(errno.EEXIST, f"no free name for {name} in {directory}")


def archive(
    source: Path,
    archive_dir: Path,
    relative_path: str,
    *,
    allow_copy: bool = True,
    expect: FileIdentity | None = None,
) -> Path:
    """Move a delivered file into ``archive_dir``, keeping its sub-folder and name."""
    relative = PurePosixPath(relative_path)
    return place(
        source,
        archive_dir.joinpath(*relative.parts[:-1]),
        relative.name,
        allow_copy=allow_copy,
        expect=expect,
    )


def fail(
    source: Path,
    failed_dir: Path,
    relative_path: str,
    report: dict[str, Any],
    *,
    allow_copy: bool = True,
    expect: FileIdentity | None = None,
) -> Path:
    """Move a file that cannot be delivered to ``failed_dir`` with a ``.error.json`` beside it.

    Raises :class:`SidecarError` (carrying the new path) when the file moved but its
    sidecar could not be written, ``OSError`` when the file could not be moved.
    """
    relative = PurePosixPath(relative_path)
    destination = place(
        source,
        failed_dir.joinpath(*relative.parts[:-1]),
        relative.name,
        keep_free=(".error.json",),
        allow_copy=allow_copy,
        expect=expect,
    )
    try:
        write_atomically(
            destination.with_name(destination.name + ".error.json"),
            json.dumps(report, indent=2, default=str) + "\n",
        )
    except OSError as error:
        raise SidecarError(destination, error) from None
    return destination


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a synced temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _candidates(name: str) -> Iterator[str]:
    yield name
    pure = PurePosixPath(name)
    # "archive.tar.gz" -> "archive.1.tar.gz": the counter goes before a compound suffix,
    # but only a real one: "backup.2024-01-01.gz" -> "backup.2024-01-01.1.gz".
    compound = pure.suffixes[-2:] if len(pure.suffixes) > 1 else []
    suffixes = (
        "".join(compound)
        if compound
        and compound[0].lower() == ".tar"
        and compound[1].lower() in (".gz", ".bz2", ".xz", ".zst")
        else pure.suffix
    )
    stem = name[: len(name) - len(suffixes)] if suffixes else name
    for counter in range(1, _MAX_CANDIDATES):
        yield f"{stem}.{counter}{suffixes}"


def _link_or_copy(
    source: Path, destination: Path, allow_copy: bool, expect: FileIdentity | None
) -> FileIdentity:
    """Give ``destination`` the content of ``source``; returns the identity of what moved."""
    try:
        os.link(source, destination)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in _NO_HARD_LINK:
            raise
        if not allow_copy:
            raise CopyNeededError(
                error.errno, f"{destination.parent} needs a copy: {error.strerror}"
            ) from None
        return _copy(source, destination, expect)
    moved = FileIdentity.of(os.lstat(destination))
    if expect is not None and not moved.same_version(expect):
        destination.unlink()
        raise FileChangedError(errno.ESTALE, "the path no longer holds the delivered file", str(source))
    return moved


def _copy(source: Path, destination: Path, expect: FileIdentity | None) -> FileIdentity:
    """Another filesystem, or one without hard links: copy beside the destination from a
    descriptor, then claim the final name without overwriting."""
    descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as reader:
        info = os.fstat(descriptor)
        if expect is not None and not FileIdentity.of(info).same_version(expect):
            raise FileChangedError(errno.ESTALE, "the path no longer holds the delivered file", str(source))
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with temporary.open("wb") as writer:
                shutil.copyfileobj(reader, writer, _COPY_CHUNK)
                writer.flush()
                os.fsync(writer.fileno())
            os.utime(temporary, ns=(info.st_atime_ns, info.st_mtime_ns))
            try:
                os.link(temporary, destination)
            except OSError as link_error:
                if isinstance(link_error, FileExistsError):
                    raise
                if destination.exists():
                    raise FileExistsError(errno.EEXIST, str(destination)) from None
                os.rename(temporary, destination)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    return FileIdentity.of(info)


def _remove_source(source: Path, destination: Path, moved: FileIdentity) -> None:
    """Unlink ``source`` if it still holds what moved; undo the move if it cannot be unlinked."""
    try:
        current = FileIdentity.of(os.lstat(source))
    except FileNotFoundError:
        return  # gone meanwhile: what moved is safe at the destination
    if not current.same_version(moved):
        return  # a new version took the name during the move: it is not ours to remove
    try:
        source.unlink()
    except FileNotFoundError:
        return
    except OSError:
        with contextlib.suppress(OSError):
            destination.unlink()
        raise
