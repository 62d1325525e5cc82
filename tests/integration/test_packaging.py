"""`pip wheel .`: the wheel carries the example configs and the unit, and builds without warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED = {
    "uploader_daemon/data/example.yaml": REPOSITORY / "config" / "example.yaml",
    "uploader_daemon/data/uploader-daemon.service": REPOSITORY / "systemd" / "uploader-daemon.service",
    **{
        f"uploader_daemon/data/{path.name}": path
        for path in sorted((REPOSITORY / "config" / "examples").glob("*.yaml"))
    },
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel `pip wheel .` makes from a copy of the tree (no build/ left in the worktree)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(
        REPOSITORY,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".coverage"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(base / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    [wheel] = (base / "dist").glob("uploader_daemon-*.whl")
    return wheel, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_the_wheel_ships_the_example_configs_and_the_unit_as_package_data(built: tuple[Path, str]) -> None:
    """Every shipped example and the unit are in the wheel, byte for byte as in the tree."""
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        contents = {name: archive.read(name) for name in SHIPPED if name in names}

    assert set(SHIPPED) <= names
    assert {name: path.read_bytes() for name, path in SHIPPED.items()} == contents


@pytest.mark.timeout(300)
def test_the_wheel_builds_without_deprecation_warnings_and_declares_its_licence(
    built: tuple[Path, str],
) -> None:
    """setuptools warns about the TOML-table licence form; the SPDX string is what it wants."""
    wheel, output = built
    with zipfile.ZipFile(wheel) as archive:
        [metadata_name] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()

    assert [] == [line for line in output.splitlines() if "eprecat" in line or "BuildBackendWarning" in line]
    assert "License-Expression: MIT" in metadata.splitlines()
    assert any(line.startswith("Requires-Dist: rich") for line in metadata.splitlines())
