"""The shipped systemd unit: a tight sandbox, every hardening line explained, the lifecycle wired.

``systemd-analyze`` judges the unit file offline, with no running systemd: ``security``
scores the sandbox and ``verify`` rejects unknown or malformed directives. Both run on a
copy of the unit inside a file-system root made under ``tmp_path`` (stub executables at
its command paths, a stub ``sysinit.target``), so the host's own units and drop-ins
play no part. Without ``systemd-analyze`` those two tests skip; the CI image has it.
The other tests read the file itself.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "uploader-daemon.service"
MAX_EXPOSURE = 1.2
HARDENING_MARKER = "# --- Hardening"
COMMAND_TIMEOUT = 10.0
# ``verify`` needs the units a service depends on by default to exist in the root.
STUB_UNITS = ("sysinit.target", "basic.target", "shutdown.target", "network-online.target")
# Command prefixes systemd allows before an Exec*= path (``-/bin/true`` ignores failure).
EXEC_PREFIXES = "-@:+!"

Section = list[tuple[int, str]]


def sections(text: str) -> dict[str, Section]:
    """The unit's lines by section name, each as ``(line number, line)``."""
    found: dict[str, Section] = {}
    current: Section | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = found.setdefault(stripped[1:-1], [])
        elif current is not None:
            current.append((number, line))
    return found


def is_directive(line: str) -> bool:
    """Whether a unit line sets something (not blank, not a ``#`` or ``;`` comment)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(("#", ";"))


def directives(lines: Section) -> dict[str, list[str]]:
    """Every ``Key=value`` of a section; a key set several times keeps every value, in order."""
    values: dict[str, list[str]] = {}
    for _, line in lines:
        if is_directive(line):
            key, _, value = line.strip().partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def hardening_lines(text: str) -> Section:
    """The ``[Service]`` lines below the hardening marker comment, the marker first."""
    service = sections(text).get("Service", [])
    for position, (_, line) in enumerate(service):
        if line.startswith(HARDENING_MARKER):
            return service[position:]
    raise AssertionError(f"[Service] has no {HARDENING_MARKER!r} comment to start the hardening lines")


def lines_without_a_comment_above(text: str) -> list[str]:
    """Each hardening directive whose line right above is not a comment, as ``'N: Key=value'``."""
    bare = []
    lines = hardening_lines(text)
    for (_, above), (number, line) in itertools.pairwise(lines):
        if is_directive(line) and not above.strip().startswith(("#", ";")):
            bare.append(f"{number}: {line.strip()}")
    return bare


def service_settings() -> dict[str, list[str]]:
    """The shipped unit's ``[Service]`` directives."""
    return directives(sections(UNIT.read_text(encoding="utf-8"))["Service"])


@pytest.fixture
def systemd_analyze() -> str:
    """The ``systemd-analyze`` command, or a skip that says how to get it."""
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip(
            "systemd-analyze is not installed here (Debian: apt-get install systemd), so the unit's "
            "security score and syntax are not checked; the CI image has it and checks them"
        )
    return found


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root holding a copy of the unit, stub executables at its Exec*= paths, and stub targets."""
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    for name in STUB_UNITS:
        (units / name).write_text("[Unit]\nDescription=stub for systemd-analyze\n", encoding="utf-8")
    for key, values in service_settings().items():
        if not key.startswith("Exec"):
            continue
        for command in values:
            program = tmp_path / command.split()[0].lstrip(EXEC_PREFIXES).lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
            program.chmod(0o755)
    return tmp_path


def run_analyze(systemd_analyze: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze ARGUMENTS`` with its output captured as text, uncoloured."""
    return subprocess.run(
        [systemd_analyze, "--no-pager", *arguments],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=COMMAND_TIMEOUT,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
        check=False,
    )


def test_systemd_analyze_security_rates_the_unit_at_most_1_2(systemd_analyze: str, unit_root: Path) -> None:
    """The sandbox keeps the overall exposure that systemd-analyze security reports at 1.2 or less."""
    result = run_analyze(systemd_analyze, "security", "--offline=yes", f"--root={unit_root}", UNIT.name)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, f"no overall exposure line in:\n{result.stdout}\n{result.stderr}"
    exposure = float(match.group(1))
    still_open = "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗"))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure}; what is still open:\n{still_open}"


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(
    systemd_analyze: str, unit_root: Path
) -> None:
    """A misspelled or malformed directive, which systemd would ignore at run time, fails here."""
    result = run_analyze(systemd_analyze, "verify", f"--root={unit_root}", UNIT.name)
    assert "" == result.stderr.strip()
    assert 0 == result.returncode


def test_every_hardening_line_has_a_comment_right_above_it() -> None:
    """The house rule: each hardening line says why it is there and when to loosen it."""
    assert [] == lines_without_a_comment_above(UNIT.read_text(encoding="utf-8"))


def test_a_hardening_line_without_a_comment_above_it_is_found() -> None:
    """The comment check itself: a line after another directive, or after a blank line, is bare."""
    unit = "\n".join(
        [
            "[Service]",
            "Type=notify",
            "# --- Hardening: each line removes something.",
            "# Read-only system.",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "",
            "NoNewPrivileges=yes",
            "# No capabilities.",
            "CapabilityBoundingSet=",
            "[Install]",
            "WantedBy=multi-user.target",
        ]
    )
    assert ["6: PrivateTmp=yes", "8: NoNewPrivileges=yes"] == lines_without_a_comment_above(unit)


def test_the_sandbox_directives_are_below_the_hardening_marker() -> None:
    """The comment check covers the sandbox itself, not an empty tail of the file."""
    hardening = directives(hardening_lines(UNIT.read_text(encoding="utf-8")))
    expected = {
        "ProtectSystem",
        "NoNewPrivileges",
        "CapabilityBoundingSet",
        "SystemCallFilter",
        "PrivateMounts",
    }
    assert expected == expected & set(hardening)


def test_the_daemon_is_a_notify_service_that_only_its_own_process_may_notify_for() -> None:
    """READY=1 makes start wait for the watched folders; hooks must not send READY or WATCHDOG."""
    settings = service_settings()
    assert (["notify"], ["main"]) == (settings.get("Type"), settings.get("NotifyAccess"))


def test_a_watchdog_timeout_restarts_the_daemon() -> None:
    """A wedged event loop misses its WATCHDOG=1 pings; Restart=on-failure covers watchdog timeouts."""
    settings = service_settings()
    assert (["30s"], ["on-failure"]) == (settings.get("WatchdogSec"), settings.get("Restart"))


def test_systemctl_reload_sends_sighup_to_the_daemon() -> None:
    """The daemon re-reads its config on SIGHUP."""
    assert ["/bin/kill -HUP $MAINPID"] == service_settings().get("ExecReload")


def test_a_bad_config_or_a_second_instance_is_not_restarted() -> None:
    """Exit 2 (bad config) and 4 (state_dir in use) cannot be fixed by restarting."""
    statuses = " ".join(service_settings().get("RestartPreventExitStatus", [])).split()
    assert {"2", "4"} == {"2", "4"} & set(statuses)
