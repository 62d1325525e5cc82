"""A drop folder's rules and its safe opening of files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.helpers import load
from uploader_daemon.drop_folder import DropFolder


def drop_folder(tmp_path: Path, recursive: bool = True, extra: str = "") -> DropFolder:
    (tmp_path / "drop").mkdir(exist_ok=True)
    config = load(
        """
        state_dir: {tmp}/state
        targets:
          - name: t
            folder: {tmp}/drop
            recursive: {recursive}
            after_upload: {{action: archive, archive_dir: {tmp}/drop/.sent}}
            failed_dir: {tmp}/failed
            api: {{base_url: "http://127.0.0.1:9"}}
            auth: {{type: none}}
            upload: {{type: multipart}}
            {extra}
        """,
        tmp=tmp_path,
        recursive=str(recursive).lower(),
        extra=extra,
    )
    return DropFolder(config.targets[0])


def test_a_file_in_a_sub_folder_is_opened_through_each_folder(tmp_path: Path) -> None:
    """open() walks down folder by folder and returns a descriptor of the file itself."""
    folder = drop_folder(tmp_path)
    (tmp_path / "drop" / "a" / "b").mkdir(parents=True)
    (tmp_path / "drop" / "a" / "b" / "f.csv").write_text("content")
    descriptor = folder.open(os.path.join("a", "b", "f.csv"))
    try:
        assert b"content" == os.pread(descriptor, 100, 0)
    finally:
        os.close(descriptor)


def test_a_sub_folder_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """A folder replaced by a symlink to elsewhere cannot lead the daemon outside the drop folder."""
    folder = drop_folder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text("password: hunter2")
    (tmp_path / "drop" / "sub").symlink_to(outside)
    with pytest.raises(OSError, match=r"symbolic links|Not a directory") as caught:
        folder.open(os.path.join("sub", "secret.yaml"))
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_a_file_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """The file itself is opened with O_NOFOLLOW too."""
    folder = drop_folder(tmp_path)
    (tmp_path / "elsewhere.txt").write_text("not ours")
    (tmp_path / "drop" / "link.csv").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(OSError, match=r"symbolic links|Not a directory") as caught:
        folder.open("link.csv")
    assert errno.ELOOP == caught.value.errno


def test_the_daemons_own_folders_and_excluded_names_are_not_candidates(tmp_path: Path) -> None:
    """Its archive inside the drop folder, hidden names and excluded sub-folders are skipped."""
    folder = drop_folder(tmp_path)
    assert folder.wanted_name("report.csv")
    assert folder.wanted_name(os.path.join("sub", "report.csv"))
    assert not folder.wanted_name(".hidden")
    assert not folder.wanted_name("x.part")
    assert not folder.wanted_directory(".sent")
    assert not folder.wanted_name(os.path.join(".staging", "report.csv"))


def test_without_recursive_only_top_level_files_are_candidates(tmp_path: Path) -> None:
    """Sub-folders are looked into only with recursive: true."""
    folder = drop_folder(tmp_path, recursive=False)
    assert folder.wanted_name("report.csv")
    assert not folder.wanted_name(os.path.join("sub", "report.csv"))
