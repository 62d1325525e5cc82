"""``uploader-daemon retry``: move parked files from ``failed_dir`` back for delivery.

A parked file is a file in the target's ``failed_dir`` (sub-folders included), other
than the ``.error.json`` sidecars and the daemon's temporary files. It goes back to
the drop folder under the path it was delivered from (the sidecar's ``file``; the
name in ``failed_dir`` when there is no sidecar), renamed in, so a running daemon sees
it arrive like any file renamed into the folder and delivers it with fresh attempts;
a stopped one finds it at its next start. The sidecar is never moved: it is removed
once its file is back. Nothing in the drop folder is ever replaced: a name that is taken
there is refused, and the parked file stays where it is.

Only folders are touched, never the journal, so this works whether the daemon runs or
not, and needs no lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.drop_folder import OWN_ARTEFACTS
from uploader_daemon.file_moves import place

SIDECAR_SUFFIX = ".error.json"


@dataclass(frozen=True)
class Parked:
    """A file in ``failed_dir`` and where it came from."""

    path: Path  # where it is now
    name: str  # its path inside failed_dir
    original: str  # its path inside the drop folder, where it goes back to
    sidecar: Path | None
    error: str | None  # the reason its sidecar gives


@dataclass(frozen=True)
class Moved:
    parked: Parked
    destination: Path
    sidecar_removed: bool


def parked_files(target: TargetSettings) -> list[Parked]:
    """Every parked file of ``target``, sorted by name."""
    root = target.failed_dir
    if not root.is_dir():
        return []
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for file_name in sorted(files):
            path = Path(directory) / file_name
            if _is_artefact(file_name) or not path.is_file() or path.is_symlink():
                continue
            found.append(_parked(root, path))
    return found


def select(target: TargetSettings, names: list[str]) -> tuple[list[Parked], list[str]]:
    """The parked files ``names`` mean, and a sentence for each name that is not parked.

    A name is a path inside ``failed_dir``, an absolute path in it, or the path the file
    had in the drop folder.
    """
    parked = parked_files(target)
    by_name = {item.name: item for item in parked}
    by_path = {str(item.path): item for item in parked}
    by_original: dict[str, list[Parked]] = {}
    for item in parked:
        by_original.setdefault(item.original, []).append(item)
    chosen: list[Parked] = []
    problems = []
    for name in names:
        match = by_name.get(name) or by_path.get(os.path.abspath(name))
        if match is None and len(by_original.get(name, [])) == 1:
            match = by_original[name][0]
        if match is None:
            problems.append(_not_parked(target, name, by_original.get(name, [])))
        elif match not in chosen:
            chosen.append(match)
    return chosen, problems


def move_back(target: TargetSettings, parked: Parked) -> Moved:
    """Move one parked file back into the drop folder, then remove its sidecar.

    Raises ``FileExistsError`` when its path in the drop folder is taken, ``OSError``
    when it cannot be moved; either way nothing changed.
    """
    destination = target.folder / parked.original
    if destination.parent != target.folder:
        destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        _rename_no_replace(parked.path, destination)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        _copy_in(parked.path, destination)
    removed = False
    if parked.sidecar is not None:
        with contextlib.suppress(FileNotFoundError):
            parked.sidecar.unlink()
            removed = True
    return Moved(parked, destination, removed)


def _parked(root: Path, path: Path) -> Parked:
    name = path.relative_to(root).as_posix()
    candidate = path.with_name(path.name + SIDECAR_SUFFIX)
    sidecar = candidate if candidate.is_file() else None
    report: dict[str, object] = {}
    if sidecar is not None:
        try:
            loaded = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        report = loaded if isinstance(loaded, dict) else {}
    original = report.get("file")
    if not isinstance(original, str) or not _safe_relative(original):
        original = name  # no report, or one that says nothing usable
    error = report.get("error")
    status = report.get("status")
    reason = None
    if isinstance(error, str):
        reason = f"{status}: {error}" if isinstance(status, int) else error
    return Parked(path=path, name=name, original=original, sidecar=sidecar, error=reason)


def _safe_relative(path: str) -> bool:
    """A path that stays inside the drop folder (a sidecar is a file anyone may edit)."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts and "." not in pure.parts


def _is_artefact(file_name: str) -> bool:
    return any(fnmatch.fnmatchcase(file_name, pattern) for pattern in OWN_ARTEFACTS)


def _not_parked(target: TargetSettings, name: str, same_origin: list[Parked]) -> str:
    if len(same_origin) > 1:
        names = ", ".join(item.name for item in same_origin)
        return f"{name}: several parked files came from there ({names}); name the one in failed_dir"
    return (
        f"{name}: not parked in {target.failed_dir}; "
        f"`uploader-daemon list --target {target.name} --state failed` shows what failed"
    )


def _rename_no_replace(source: Path, destination: Path) -> None:
    """Rename ``source`` to ``destination`` unless that name is taken.

    A rename is what a watcher sees as "renamed in" (complete at once); ``renameat2``
    with ``RENAME_NOREPLACE`` makes "unless taken" atomic. Where it is missing (old
    kernels, some network filesystems) the check before the rename leaves a window of
    microseconds.
    """
    if _renameat2(source, destination):
        return
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, "the name is taken in the drop folder", str(destination))
    os.rename(source, destination)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _renameat2(source: Path, destination: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)``; ``False`` when the system cannot do it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    if code == errno.EEXIST:
        raise FileExistsError(code, "the name is taken in the drop folder", str(destination))
    raise OSError(code, os.strerror(code), str(source))


def _copy_in(source: Path, destination: Path) -> None:
    """Across filesystems: copy under a name the daemon never picks up, then rename it in."""
    temporary = f".{destination.name}.{uuid.uuid4().hex[:8]}.tmp"  # an own artefact (.*.tmp)
    staged = place(source, destination.parent, temporary)
    try:
        _rename_no_replace(staged, destination)
    except BaseException:
        # Put it back where it was, so a refused retry changes nothing.
        with contextlib.suppress(OSError):
            place(staged, source.parent, source.name)
        raise
