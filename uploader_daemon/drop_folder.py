"""A drop folder's rules: which names are candidates, and listing them.

What is never a candidate: names outside ``include`` or inside ``exclude`` (checked on
the file name, or on the relative path for patterns with a ``/``, and on each sub-folder
name), sub-folders unless ``recursive``, the folders the daemon itself writes into
(archive, failed, download outputs), and the files it writes (:data:`OWN_ARTEFACTS`),
even when an admin moves them into a drop folder. Symlinks are reported apart: they are never
followed out of a drop folder.

Everything here is pure and keeps no state, so it runs in worker threads (listing a
big folder) as well as on the loop; logging is the watcher's job.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.identity import FileIdentity

# What the daemon itself writes, never a candidate whatever include/exclude say: failed
# files' reports, partial downloads, temporary copies.
OWN_ARTEFACTS = ("*.error.json", "*.part", ".*.tmp")

# A sub-folder that vanished between its parent's listing and its own: moved or deleted,
# which its own event reports; nothing to warn about.
GONE = (errno.ENOENT, errno.ENOTDIR)


@dataclass
class Listing:
    """What listing a folder found; built in a worker thread, read on the loop."""

    files: list[tuple[str, FileIdentity]] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, OSError]] = field(default_factory=list)  # sub-folders
    readable: list[str] = field(default_factory=list)  # sub-folders listed this time


class DropFolder:
    """One target's drop folder and its candidate rules."""

    def __init__(self, target: TargetSettings) -> None:
        self._target = target
        self.root = str(target.folder)
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._own_folders = {str(path) for path in target.output_folders.values()}

    def relative(self, path: str | bytes) -> str:
        """The path relative to the drop folder ("." for the folder, "" if outside it)."""
        text = os.fsdecode(path)
        if text.startswith(self._prefix):
            return text[len(self._prefix) :]  # watchdog reports absolute paths under the folder
        if not text:
            return ""
        relative = os.path.relpath(text, self.root)
        return "" if relative.startswith("..") else relative

    def full(self, relative_path: str) -> str:
        return os.path.join(self.root, relative_path)

    def wanted_name(self, relative_path: str) -> bool:
        """``include``, ``exclude`` and the parent folders allow this file name."""
        name = os.path.basename(relative_path)
        parent = os.path.dirname(relative_path)
        if parent and not self.wanted_directory(parent):
            return False
        if _matches(name, name, OWN_ARTEFACTS):
            return False
        return _matches(name, relative_path, self._target.include) and not _matches(
            name, relative_path, self._target.exclude
        )

    def wanted_directory(self, relative_dir: str) -> bool:
        """A sub-folder to look into: ``recursive``, not excluded, not one of ours."""
        if not self._target.recursive:
            return False
        full = self.full(relative_dir)
        if full in self._own_folders or any(full.startswith(own + os.sep) for own in self._own_folders):
            return False
        return not any(_matches(part, part, self._target.exclude) for part in Path(relative_dir).parts)

    def open(self, relative_path: str) -> int:
        """Open a file for reading without following any symlink on the way.

        Every sub-folder is opened relative to the one above with ``O_NOFOLLOW``, so a
        sub-folder swapped for a symlink cannot lead outside the drop folder. Raises
        ``OSError`` (``ELOOP`` or ``ENOTDIR`` for a symlink on the way).
        """
        parts = relative_path.split(os.sep)
        directory = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                inner = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory
                )
                os.close(directory)
                directory = inner
            return os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory
            )
        finally:
            os.close(directory)

    def snapshot(self, relative_path: str) -> FileIdentity | None:
        """The identity of a regular file, else ``None``."""
        try:
            info = os.lstat(self.full(relative_path))
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return FileIdentity.of(info)

    def list_files(self, directory: str) -> Listing:
        """Candidate files under ``directory`` with their identities. Blocking.

        Raises OSError only when ``directory`` itself cannot be listed; a sub-folder
        that cannot is recorded in the listing and skipped.
        """
        whole = Listing()
        for part in self.listings(directory):
            whole.files += part.files
            whole.symlinks += part.symlinks
            whole.unreadable += part.unreadable
            whole.readable += part.readable
        return whole

    def listings(self, directory: str, batch: int = 1000) -> Iterator[Listing]:
        """:meth:`list_files` in parts of about ``batch`` files, as the folder is read. Blocking.

        A big folder's first files can be on their way while the rest is still listed.
        Raises OSError (from the first ``next``) only when ``directory`` itself cannot be
        listed.
        """
        listing = Listing()
        pending = [directory]
        while pending:
            current = pending.pop()
            try:
                for relative, identity in self._entries(current, pending):
                    if identity is None:
                        listing.symlinks.append(relative)
                        continue
                    listing.files.append((relative, identity))
                    if len(listing.files) >= batch:
                        yield listing
                        listing = Listing()
            except OSError as error:
                if current == directory:
                    raise
                if error.errno not in GONE:
                    listing.unreadable.append((os.path.relpath(current, self.root), error))
            else:
                if current != self.root:
                    listing.readable.append(os.path.relpath(current, self.root))
        yield listing

    def _entries(self, directory: str, pending: list[str]) -> Iterator[tuple[str, FileIdentity | None]]:
        """One folder's candidate files (``None``: a symlink); its wanted sub-folders go to ``pending``."""
        with os.scandir(directory) as entries:
            for entry in entries:
                relative = os.path.relpath(entry.path, self.root)
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the folder was read
                if stat.S_ISDIR(info.st_mode):
                    if self.wanted_directory(relative):
                        pending.append(entry.path)
                elif not self.wanted_name(relative):
                    continue
                elif stat.S_ISLNK(info.st_mode):
                    yield relative, None
                elif stat.S_ISREG(info.st_mode):
                    yield relative, FileIdentity.of(info)


def _matches(name: str, relative_path: str, patterns: tuple[str, ...]) -> bool:
    """Glob match on the name, or on the relative path for patterns with a ``/``."""
    return any(
        fnmatch.fnmatchcase(relative_path if "/" in pattern else name, pattern) for pattern in patterns
    )
