"""Moving files out of the drop folder: names kept, nothing ever overwritten."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from uploader_daemon import file_moves
from uploader_daemon.file_moves import archive, fail, place, write_atomically
from uploader_daemon.identity import FileIdentity


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def dropped(drop: Path, relative: str, content: str = "new content") -> Path:
    path = drop / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def names(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_archive_keeps_the_name_and_sub_folder(drop: Path, tmp_path: Path) -> None:
    """A delivered sub/a.csv lands at archive_dir/sub/a.csv, and leaves the drop folder."""
    source = dropped(drop, "2024/05/a.csv")
    destination = archive(source, tmp_path / "sent", "2024/05/a.csv")
    assert destination == tmp_path / "sent" / "2024" / "05" / "a.csv"
    assert destination.read_text(encoding="utf-8") == "new content"
    assert not source.exists()


@pytest.mark.parametrize(
    ("name", "taken", "expected"),
    [
        ("a.csv", 1, "a.1.csv"),
        ("a.csv", 3, "a.3.csv"),
        ("archive.tar.gz", 1, "archive.1.tar.gz"),
        ("archive.tar.gz", 2, "archive.2.tar.gz"),
        ("README", 1, "README.1"),
        ("backup.2024-01-01.gz", 1, "backup.2024-01-01.1.gz"),
    ],
)
def test_a_taken_name_gets_the_next_free_counter(
    drop: Path, tmp_path: Path, name: str, taken: int, expected: str
) -> None:
    """report.csv, report.1.csv, report.2.csv, ...; archive.tar.gz becomes archive.1.tar.gz."""
    sent = tmp_path / "sent"
    existing = [name] + [_counted(name, counter) for counter in range(1, taken)]
    for other in existing:
        dropped(sent, other, content=f"old {other}")
    destination = archive(dropped(drop, name), sent, name)
    assert destination.name == expected
    assert destination.read_text(encoding="utf-8") == "new content"
    for other in existing:
        assert (sent / other).read_text(encoding="utf-8") == f"old {other}"


def _counted(name: str, counter: int) -> str:
    for compound in (".tar.gz",):
        if name.endswith(compound):
            return f"{name[: -len(compound)]}.{counter}{compound}"
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{counter}.{suffix}" if dot and stem else f"{name}.{counter}"


def test_place_never_overwrites_even_an_empty_file(drop: Path, tmp_path: Path) -> None:
    """An existing name is never replaced, whatever is in it."""
    sent = tmp_path / "sent"
    dropped(sent, "a.csv", content="")
    destination = place(dropped(drop, "a.csv"), sent, "a.csv")
    assert destination.name == "a.1.csv"
    assert (sent / "a.csv").read_text(encoding="utf-8") == ""


def test_place_of_a_missing_source_raises_and_creates_nothing(drop: Path, tmp_path: Path) -> None:
    """Moving a file that is gone is an OSError for the caller to report."""
    sent = tmp_path / "sent"
    with pytest.raises(FileNotFoundError):
        place(drop / "missing.csv", sent, "missing.csv")
    assert names(sent) == []


def test_fail_writes_an_error_sidecar_beside_the_file(drop: Path, tmp_path: Path) -> None:
    """failed_dir/<name>.error.json says why, next to the file."""
    report = {"error": "422 Unprocessable", "status": 422, "attempts": 1, "at": 1_700_000_000.0}
    destination = fail(dropped(drop, "sub/a.csv"), tmp_path / "failed", "sub/a.csv", report)
    assert destination == tmp_path / "failed" / "sub" / "a.csv"
    sidecar = destination.with_name("a.csv.error.json")
    assert json.loads(sidecar.read_text(encoding="utf-8")) == report
    assert names(tmp_path / "failed") == ["sub/a.csv", "sub/a.csv.error.json"]


def test_fail_names_the_sidecar_after_the_final_name(drop: Path, tmp_path: Path) -> None:
    """When a.csv is taken, the sidecar of a.1.csv is a.1.csv.error.json."""
    failed = tmp_path / "failed"
    dropped(failed, "a.csv", content="old")
    dropped(failed, "a.csv.error.json", content="{}")
    destination = fail(dropped(drop, "a.csv"), failed, "a.csv", {"error": "boom"})
    assert destination.name == "a.1.csv"
    assert json.loads((failed / "a.1.csv.error.json").read_text(encoding="utf-8")) == {"error": "boom"}
    assert (failed / "a.csv.error.json").read_text(encoding="utf-8") == "{}"


def test_fail_skips_a_name_whose_sidecar_is_taken(drop: Path, tmp_path: Path) -> None:
    """A leftover a.csv.error.json (its file moved back to retry) is not overwritten either."""
    failed = tmp_path / "failed"
    dropped(failed, "a.csv.error.json", content='{"error": "the first failure"}')
    destination = fail(dropped(drop, "a.csv"), failed, "a.csv", {"error": "the second failure"})
    assert destination.name == "a.1.csv"
    first_report = json.loads((failed / "a.csv.error.json").read_text(encoding="utf-8"))
    assert first_report == {"error": "the first failure"}
    assert names(failed) == ["a.1.csv", "a.1.csv.error.json", "a.csv.error.json"]


def test_the_sidecar_renders_values_json_cannot(drop: Path, tmp_path: Path) -> None:
    """Paths and other objects in the report are written as text, not a crash."""
    destination = fail(dropped(drop, "a.csv"), tmp_path / "failed", "a.csv", {"path": Path("/x/y")})
    sidecar = destination.with_name("a.csv.error.json")
    assert json.loads(sidecar.read_text(encoding="utf-8")) == {"path": "/x/y"}


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """The sidecar appears whole or not at all."""
    target = tmp_path / "state.json"
    write_atomically(target, "one")
    write_atomically(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    assert names(tmp_path) == ["state.json"]


def _link_failing(monkeypatch: pytest.MonkeyPatch, failures: int | None) -> list[tuple[str, str]]:
    """Make os.link raise EXDEV (another filesystem) for the first ``failures`` calls (None: all)."""
    real_link = os.link
    calls: list[tuple[str, str]] = []

    def link(source: os.PathLike[str] | str, destination: os.PathLike[str] | str, **kwargs: object) -> None:
        calls.append((os.fspath(source), os.fspath(destination)))
        if failures is None or len(calls) <= failures:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(source, destination)

    monkeypatch.setattr(file_moves.os, "link", link)
    return calls


def test_across_filesystems_the_file_is_copied_into_place(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When link fails with EXDEV, the file is copied beside the destination and linked in."""
    calls = _link_failing(monkeypatch, failures=1)
    source = dropped(drop, "a.csv")
    destination = archive(source, tmp_path / "sent", "a.csv")
    assert destination.read_text(encoding="utf-8") == "new content"
    assert not source.exists()
    assert names(tmp_path / "sent") == ["a.csv"]
    assert len(calls) == 2


def test_across_filesystems_a_taken_name_is_still_never_overwritten(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy claims the final name with link, which refuses an existing file."""
    sent = tmp_path / "sent"
    dropped(sent, "a.csv", content="old")
    _link_failing(monkeypatch, failures=1)
    destination = archive(dropped(drop, "a.csv"), sent, "a.csv")
    assert destination.name == "a.1.csv"
    assert (sent / "a.csv").read_text(encoding="utf-8") == "old"
    assert destination.read_text(encoding="utf-8") == "new content"
    assert names(sent) == ["a.1.csv", "a.csv"]


def test_without_hard_links_at_all_a_taken_name_is_still_never_overwritten(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem with no links the copy is renamed in, but only onto a free name."""
    sent = tmp_path / "sent"
    dropped(sent, "a.csv", content="old")
    _link_failing(monkeypatch, failures=None)
    destination = fail(dropped(drop, "a.csv"), sent, "a.csv", {"error": "x"})
    assert destination.name == "a.1.csv"
    assert (sent / "a.csv").read_text(encoding="utf-8") == "old"
    assert destination.read_text(encoding="utf-8") == "new content"
    assert names(sent) == ["a.1.csv", "a.1.csv.error.json", "a.csv"]


def test_other_link_errors_are_raised_and_the_source_stays(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only or full archive is reported, and the file is not lost."""

    def link(source: object, destination: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(file_moves.os, "link", link)
    source = dropped(drop, "a.csv")
    with pytest.raises(OSError, match="Read-only"):
        archive(source, tmp_path / "sent", "a.csv")
    assert source.read_text(encoding="utf-8") == "new content"


def test_a_move_that_needs_a_copy_can_be_refused_untouched(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With allow_copy=False a cross-filesystem move raises CopyNeededError and changes nothing."""
    _link_failing(monkeypatch, failures=None)
    source = dropped(drop, "a.csv")
    with pytest.raises(file_moves.CopyNeededError):
        archive(source, tmp_path / "sent", "a.csv", allow_copy=False)
    assert source.exists()
    assert names(tmp_path / "sent") == []


def test_a_source_that_cannot_be_removed_takes_its_new_name_back(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No half-done move: if the drop folder refuses the unlink, the archive gains nothing."""
    source = dropped(drop, "a.csv")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == source:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(file_moves.Path, "unlink", unlink)
    with pytest.raises(PermissionError):
        archive(source, tmp_path / "sent", "a.csv")
    assert source.read_text(encoding="utf-8") == "new content"
    assert names(tmp_path / "sent") == []


def test_a_move_half_done_by_a_crash_is_finished_not_duplicated(drop: Path, tmp_path: Path) -> None:
    """Linked but not unlinked before a crash: the next attempt only removes the source."""
    source = dropped(drop, "a.csv")
    (tmp_path / "sent").mkdir()
    os.link(source, tmp_path / "sent" / "a.csv")
    destination = archive(source, tmp_path / "sent", "a.csv")
    assert destination == tmp_path / "sent" / "a.csv"
    assert not source.exists()
    assert names(tmp_path / "sent") == ["a.csv"]


def test_a_sidecar_that_cannot_be_written_is_reported_with_where_the_file_went(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move happened; the error says so, with the new path, instead of claiming it stayed."""

    def refuse(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_moves, "write_atomically", refuse)
    with pytest.raises(file_moves.SidecarError) as caught:
        fail(dropped(drop, "a.csv"), tmp_path / "failed", "a.csv", {"error": "x"})
    assert tmp_path / "failed" / "a.csv" == caught.value.destination
    assert caught.value.destination.exists()


def test_a_path_that_now_leads_to_another_file_is_not_moved(drop: Path, tmp_path: Path) -> None:
    """With the delivered file's identity given, a different file at the path stays where it is."""
    source = dropped(drop, "a.csv")
    delivered = FileIdentity.of(os.lstat(source))
    source.unlink()
    source.write_text("a newer version")
    with pytest.raises(file_moves.FileChangedError):
        archive(source, tmp_path / "sent", "a.csv", expect=delivered)
    assert "a newer version" == source.read_text(encoding="utf-8")
    assert names(tmp_path / "sent") == []


def test_a_new_version_arriving_during_a_long_copy_stays_in_the_drop_folder(
    drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy goes to the archive; the name, now holding a new version, is left alone."""
    _link_failing(monkeypatch, failures=None)
    source = dropped(drop, "a.csv")
    delivered = FileIdentity.of(os.lstat(source))
    real_copy = file_moves.shutil.copyfileobj

    def copy_while_replaced(reader: Any, writer: Any, length: int = 0) -> None:
        newer = drop / "a.csv.incoming"
        newer.write_text("version two")
        newer.rename(source)  # what a producer does mid-copy
        real_copy(reader, writer, length)

    monkeypatch.setattr(file_moves.shutil, "copyfileobj", copy_while_replaced)
    destination = archive(source, tmp_path / "sent", "a.csv", expect=delivered)
    assert "new content" == destination.read_text(encoding="utf-8")
    assert "version two" == source.read_text(encoding="utf-8")
