"""Outages wait, files are not blamed for them: the real daemon against an emulator that goes down.

An outage here lasts far longer than ``attempts x backoff`` (the time after which, before,
every file was parked): the tests wait until many probes in a row have failed, which with
a 50-200 ms backoff is well over a second, and then bring the API back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.helpers import DaemonThread, running_daemon, wait_until
from tests.integration.test_flow_t import TARGET, flow_t_config
from uploader_daemon.config import Config
from uploader_daemon.emulator import Emulator

TIMEOUT = 20.0
FILES = [f"night-{number}.csv" for number in range(5)]
# attempts x backoff = 0.1 s; eight failed probes in a row take ~1.3 s.
PROBES_OF_A_LONG_OUTAGE = 8


def outage_config(emulator: Emulator, folders: dict[str, Path]) -> Config:
    return flow_t_config(emulator, folders, attempts=2, backoff="50ms", max_backoff="200ms", concurrency=2)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def failed_probes(runner: DaemonThread) -> int:
    assert runner.daemon is not None
    gate = runner.daemon.services[0].gate
    failures: int = runner.call(lambda: gate.failures)
    return failures


def ride_out(
    emulator: Emulator,
    folders: dict[str, Path],
    go_down: Callable[[Emulator], None],
    come_back: Callable[[Emulator], None],
) -> tuple[list[dict[str, Any]], list[int]]:
    """Files arrive, the API goes down for a long outage, comes back; returns logs and attempts."""
    with capture_logs() as logs, running_daemon(outage_config(emulator, folders)) as runner:
        wait_until(lambda: runner.daemon is not None and runner.daemon.started.is_set(), TIMEOUT, "started")
        # A first delivery logs in, so the outage meets uploads, not the login.
        (folders["drop"] / "before.csv").write_text("before\n")
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, TIMEOUT)
        go_down(emulator)
        for name in FILES:
            (folders["drop"] / name).write_text(f"{name}\n")
        wait_until(lambda: failed_probes(runner) >= PROBES_OF_A_LONG_OUTAGE, TIMEOUT, "a long outage")
        assert [] == list(folders["failed"].iterdir())
        come_back(emulator)
        # >=: a connection cut while its upload was being stored sends that file again.
        assert emulator.wait_for(lambda emu: len(emu.received) >= 1 + len(FILES), TIMEOUT)
        wait_until(lambda: len(list(folders["sent"].iterdir())) == 1 + len(FILES), TIMEOUT, "archived")
        assert runner.daemon is not None
        journal = runner.daemon.journal
        records = runner.run_coroutine(journal.records(TARGET))
    return logs, [record.attempts for record in records]


@pytest.mark.parametrize(
    ("go_down", "come_back"),
    [
        pytest.param(Emulator.refuse_connections, Emulator.accept_connections, id="connection-refused"),
        pytest.param(lambda emu: emu.fail_all(503), lambda emu: emu.fail_all(None), id="503-to-everything"),
        pytest.param(lambda emu: emu.fail_all(502), lambda emu: emu.fail_all(None), id="502-to-everything"),
    ],
)
def test_a_long_outage_parks_nothing_and_every_file_goes_when_the_api_is_back(
    emulator: Emulator,
    folders: dict[str, Path],
    go_down: Callable[[Emulator], None],
    come_back: Callable[[Emulator], None],
) -> None:
    """Far past attempts x backoff: zero files in failed_dir, no attempt spent, all delivered after."""
    logs, attempts = ride_out(emulator, folders, go_down, come_back)

    assert [] == list(folders["failed"].iterdir())
    assert sorted(["before.csv", *FILES]) == sorted(path.name for path in folders["sent"].iterdir())
    assert [0] * (1 + len(FILES)) == attempts
    assert [] == events(logs, "file_failed")


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """One error line when a probe confirms it, one info line with its duration; nothing per file."""
    logs, _ = ride_out(emulator, folders, Emulator.refuse_connections, Emulator.accept_connections)

    started = events(logs, "api_outage_started")
    ended = events(logs, "api_outage_ended")
    assert [("error", TARGET)] == [(entry["log_level"], entry["target"]) for entry in started]
    assert "Connection refused" in started[0]["reason"]
    assert [("info", TARGET)] == [(entry["log_level"], entry["target"]) for entry in ended]
    assert ended[0]["down_for"] >= 0.5
    assert [] == events(logs, "delivery_failed")
    assert len(events(logs, "api_unavailable")) <= 1


def test_while_the_api_is_down_one_probe_at_a_time_reaches_it(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """During a 503 outage the requests are the probes, one after another, not a storm."""
    emulator.fail_all(503)
    config = flow_t_config(emulator, folders, attempts=2, backoff="50ms", max_backoff="200ms", concurrency=4)
    with running_daemon(config) as runner:
        for name in FILES:
            (folders["drop"] / name).write_text(name)
        wait_until(lambda: failed_probes(runner) >= 5, TIMEOUT, "probes failing")
        emulator.fail_all(None)
        wait_until(lambda: len(list(folders["sent"].iterdir())) == len(FILES), TIMEOUT, "archived")

    refused = [record for record in emulator.requests if record.status == 503]
    # The login is the first probe; each later probe is one request. Four workers, but
    # never four requests at once in a burst per backoff: about one per failed probe.
    assert len(refused) <= failed_probes_bound(5)
    assert [] == list(folders["failed"].iterdir())


def failed_probes_bound(probes: int) -> int:
    """Requests an outage of ``probes`` failed probes may cost: one each, plus the suspicion."""
    return probes + 4


def test_a_file_that_fails_on_its_own_while_the_api_works_still_spends_its_attempts(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """A 500 for one file is that file's failure: counted, and parked after `attempts`."""
    from uploader_daemon.emulator import ScriptedResponse

    emulator.script("POST", "/api/envio", *[ScriptedResponse(500, "boom")] * 2)
    with running_daemon(outage_config(emulator, folders)):
        (folders["drop"] / "poison.csv").write_text("poison\n")
        wait_until(lambda: (folders["failed"] / "poison.csv").exists(), TIMEOUT, "poison.csv parked")

    assert (folders["failed"] / "poison.csv.error.json").exists()
