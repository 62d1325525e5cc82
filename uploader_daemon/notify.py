"""sd_notify(3) without libsystemd: datagrams to ``$NOTIFY_SOCKET``, when systemd set it.

``READY=1`` once every folder is watched, ``RELOADING=1``/``READY=1`` around a reload,
``STOPPING=1`` on the way out, ``STATUS=...`` lines, and ``WATCHDOG=1`` pings.
Nothing is sent, and nothing fails, outside systemd.

The variables are taken out of the process environment when the notifier is built
(what ``sd_notify(3)``'s ``unset_environment`` does): a program the daemon starts (a
hook) must never be able to report the service ready or ping the watchdog for a wedged
event loop. ``NotifyAccess=main`` in the unit says the same to systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, MutableMapping

# What systemd hands the main process for sd_notify; never inherited by a child.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Talks to systemd's notify socket, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Read the variables from ``environ``; by default take them out of ``os.environ``."""
        environment = dict(take_notify_variables(os.environ) if environ is None else environ)
        address = environment.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address
        self._environ = environment

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half what systemd asks for), or ``None`` when it asks none.

        ``WATCHDOG_PID`` names the process systemd expects pings from: another one's
        variable (inherited by a child) means "not you".
        """
        usec = self._environ.get("WATCHDOG_USEC")
        pid = self._environ.get("WATCHDOG_PID")
        if not usec or not usec.isdigit() or int(usec) == 0 or self._address is None:
            return None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None
        return int(usec) / 2_000_000

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` lines in one datagram; errors are ignored (systemd may be gone)."""
        if self._address is None:
            return
        message = "\n".join(fields).encode()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(self._address)
            sock.sendall(message)


def take_notify_variables(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Remove systemd's notify variables from ``environ``; returns what they were."""
    return {name: environ.pop(name) for name in NOTIFY_VARIABLES if name in environ}
