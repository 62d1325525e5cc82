"""What tells one version of a file from another at the same path.

A file version is its inode, size and mtime (nanoseconds). The journal stores it, so
"is the delivered version still there?" (archive, keep, failed) has one answer before
and after a restart. The device number is kept as a hint only and never compared: NFS
clients of one share see different device numbers for the same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """One version of a file; ``inode`` is ``None`` for journal rows older than schema 3."""

    size: int
    mtime_ns: int
    inode: int | None = None
    device: int | None = None

    @classmethod
    def of(cls, info: os.stat_result) -> FileIdentity:
        """The identity of what ``os.stat``/``os.fstat``/``DirEntry.stat`` saw."""
        return cls(info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)

    def same_version(self, other: FileIdentity) -> bool:
        """Size and mtime equal, and the inode too where both know it (never the device)."""
        if (self.size, self.mtime_ns) != (other.size, other.mtime_ns):
            return False
        return self.inode is None or other.inode is None or self.inode == other.inode
