"""sd_notify: the watchdog interval systemd asks for, and variables no child inherits."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from uploader_daemon.notify import Notifier


def test_the_watchdog_is_pinged_at_half_the_interval_systemd_asks_for() -> None:
    """WATCHDOG_USEC=30 s means a ping every 15 s."""
    notifier = Notifier({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000"})

    assert 15.0 == notifier.watchdog_interval()


@pytest.mark.parametrize(
    "environ",
    [
        {"NOTIFY_SOCKET": "/run/notify"},
        {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "30000000"},
        {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
    ],
    ids=["not asked", "zero", "no socket", "another process"],
)
def test_no_watchdog_when_systemd_did_not_ask_this_process(environ: dict[str, str]) -> None:
    """No interval, a zero one, no socket, or WATCHDOG_PID naming another process: no pings."""
    assert Notifier(environ).watchdog_interval() is None


def test_the_notify_variables_are_taken_out_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built from os.environ, the notifier removes them: a hook the daemon starts cannot ping."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    notifier = Notifier()

    assert 15.0 == notifier.watchdog_interval()
    assert [] == [name for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if name in os.environ]


def test_fields_go_in_one_datagram(tmp_path: Path) -> None:
    """send("READY=1", "STATUS=...") arrives as one message, one field a line."""
    path = tmp_path / "n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        Notifier({"NOTIFY_SOCKET": str(path)}).send("READY=1", "STATUS=reports: 0 pending")

        assert b"READY=1\nSTATUS=reports: 0 pending" == receiver.recv(4096)
