"""A local emulator of the HTTP APIs the daemon delivers to (flows T, R, P and C).

It is a real HTTP server on 127.0.0.1 (standard library only), used by the
``uploader-daemon demo`` command and by the integration tests::

    with Emulator(EmulatorSettings(storage_dir=tmp_path)) as emu:
        ...  # point the daemon at emu.base_url and emu.storage_url
        assert emu.wait_for(lambda e: len(e.received) == 1, timeout=5)

Run it on its own with ``python -m uploader_daemon.emulator --storage-dir DIR``.

It can also misbehave on demand, for tests of a daemon facing outages, hostile input
or a broken server: refused connections, every request failed or left hanging
(``Emulator.refuse_connections``, ``fail_all``, ``hang_all``), huge or badly framed
bodies and answers lost after the request was handled (``ScriptedResponse``), and
Idempotency-Key replays (``EmulatorSettings.deduplicate_by_idempotency_key``).
"""

from uploader_daemon.emulator.models import (
    COUNTER_NAMES,
    BodyFraming,
    EmulatorSettings,
    ReceivedFile,
    RequestRecord,
    ScriptedResponse,
)
from uploader_daemon.emulator.server import Emulator

__all__ = [
    "COUNTER_NAMES",
    "BodyFraming",
    "Emulator",
    "EmulatorSettings",
    "ReceivedFile",
    "RequestRecord",
    "ScriptedResponse",
]
