"""SIGHUP (`systemctl reload`): a real daemon process reads its config again while files keep coming."""

from __future__ import annotations

import collections
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.helpers import DaemonProcess, log_events, wait_until
from uploader_daemon.emulator import Emulator

TIMEOUT = 30.0
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}


def target_yaml(name: str, root: Path, base_url: str, concurrency: int = 2) -> str:
    return f"""
  - name: {name}
    folder: {root / name}
    settle: 0s
    concurrency: {concurrency}
    watch: {{rescan_every: 1h}}
    retry: {{attempts: 3, backoff: 100ms, max_backoff: 500ms}}
    after_upload: {{action: archive, archive_dir: {root / (name + ".sent")}}}
    failed_dir: {root / (name + ".failed")}
    api: {{base_url: "{base_url}", timeout: 10s}}
    auth:
      type: token
      login: {{path: /auth/login, username: uploader, password: {{env: UPLOADER_PASSWORD}}}}
      refresh: {{path: /auth/tokenRefresh, check_every: 1h}}
    upload: {{type: multipart, path: /api/envio, file_field: file}}
"""


def config_text(root: Path, base_url: str, targets: dict[str, int], level: str = "info") -> str:
    """A config with one target per name (its concurrency as the value)."""
    head = f"state_dir: {root / 'state'}\nlog: {{level: {level}, format: json}}\nshutdown_grace: 5s\ntargets:"
    return head + "".join(
        target_yaml(name, root, base_url, concurrency) for name, concurrency in targets.items()
    )


class Producer:
    """Drops files into some drop folders, one every few milliseconds, until stopped.

    Each file is written under an excluded name and renamed in, as careful producers do.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._folders: list[str] = []
        self._lock = threading.Lock()
        self.written: dict[str, list[str]] = collections.defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def write_into(self, *targets: str) -> None:
        with self._lock:
            self._folders = list(targets)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(0.02):
            with self._lock:
                folders = list(self._folders)
            for target in folders:
                number += 1
                name = f"{target}-{number:05}.csv"
                staging = self._root / target / f"{name}.part"
                staging.write_text(f"{target},{number}\n", encoding="utf-8")
                staging.rename(self._root / target / name)
                self.written[target].append(name)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.fixture
def producer(root: Path) -> Iterator[Producer]:
    running = Producer(root).start()
    yield running
    running.stop()


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [event for event in log_events(daemon.output) if event.get("event") == name]


def reload_with(daemon: DaemonProcess, text: str, count: int) -> dict[str, Any]:
    """Write the new config, send SIGHUP, return the reload's outcome (the count-th one)."""
    daemon.config_path.write_text(text, encoding="utf-8")
    daemon.signal(signal.SIGHUP)

    def outcomes() -> list[dict[str, Any]]:
        return events(daemon, "config_reloaded") + events(daemon, "reload_refused")

    wait_until(lambda: len(outcomes()) >= count, TIMEOUT, f"reload {count}")
    return outcomes()[count - 1]


def received_names(emulator: Emulator) -> collections.Counter[str]:
    return collections.Counter(file.name for file in emulator.received)


@pytest.fixture
def start_daemon(root: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def start(text: str) -> DaemonProcess:
        config = root / "config.yaml"
        config.write_text(text, encoding="utf-8")
        daemon = DaemonProcess(config, root / "daemon.log", env=ENVIRON)
        started.append(daemon)
        daemon.wait_for_log('"daemon_started"', TIMEOUT)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def test_a_reload_adds_changes_and_removes_targets_and_refuses_a_broken_config_without_losing_a_file(
    emulator: Emulator, root: Path, producer: Producer, start_daemon: Any
) -> None:
    """Files arrive all along; every one is delivered exactly once, across three kinds of change."""
    daemon = start_daemon(config_text(root, emulator.base_url, {"a": 2, "b": 2, "c": 2}))
    producer.write_into("a", "b", "c")
    wait_until(lambda: len(producer.written["c"]) >= 5, TIMEOUT, "files into c")
    producer.write_into("a", "b")  # c is about to go: what it has must be delivered first
    wait_until(
        lambda: all(received_names(emulator)[name] for name in producer.written["c"]), TIMEOUT, "c delivered"
    )

    changed = reload_with(daemon, config_text(root, emulator.base_url, {"a": 2, "b": 1, "d": 2}), 1)
    producer.write_into("a", "b", "d")
    wait_until(lambda: len(producer.written["d"]) >= 10, TIMEOUT, "files into d")
    refused = reload_with(daemon, "state_dir: /x\ntargets:\n\t- name: broken\n", 2)
    wait_until(lambda: len(producer.written["d"]) >= 20, TIMEOUT, "more files into d")
    producer.stop()

    assert (["d"], ["b"], ["c"], ["a"]) == (
        changed["added"],
        changed["changed"],
        changed["removed"],
        changed["unchanged"],
    )
    assert "reload_refused" == refused["event"]
    assert 1 == len(refused["problems"])
    assert "tabs are not allowed: indent with spaces" in refused["problems"][0]
    written = [name for target in ("a", "b", "c", "d") for name in producer.written[target]]
    wait_until(lambda: set(written) <= set(received_names(emulator)), TIMEOUT, "every file delivered")
    counts = received_names(emulator)
    assert [] == [name for name in written if counts[name] != 1]
    for target in ("a", "b", "c", "d"):
        archived = {path.name for path in (root / f"{target}.sent").iterdir()}
        assert set(producer.written[target]) == archived
    assert daemon.process.poll() is None  # the broken config did not stop it
    errors = [
        event["event"] for event in log_events(daemon.output) if event.get("level") in ("error", "critical")
    ]
    assert ["reload_refused"] == errors
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(TIMEOUT)


def test_a_reload_that_moves_the_state_dir_is_refused_and_the_daemon_runs_on(
    emulator: Emulator, root: Path, start_daemon: Any
) -> None:
    """state_dir holds the journal and the lock: changing it needs a restart, and says so."""
    daemon = start_daemon(config_text(root, emulator.base_url, {"a": 2}))
    moved = config_text(root, emulator.base_url, {"a": 2}).replace(
        str(root / "state"), str(root / "elsewhere")
    )

    refused = reload_with(daemon, moved, 1)
    (root / "a" / "after.csv").write_text("still delivering\n")

    assert "reload_refused" == refused["event"]
    assert [
        f"state_dir: changed from {root / 'state'} to {root / 'elsewhere'}; the journal and the token "
        "store move only with a restart (systemctl restart uploader-daemon)"
    ] == refused["problems"]
    wait_until(lambda: (root / "a.sent" / "after.csv").exists(), TIMEOUT, "delivered after the refusal")


def test_a_reload_that_changes_the_log_level_applies_it_to_every_target(
    emulator: Emulator, root: Path, start_daemon: Any
) -> None:
    """From info to debug: the targets start again, and their debug events appear."""
    daemon = start_daemon(config_text(root, emulator.base_url, {"a": 2}))
    (root / "a" / "before.csv").write_text("one\n")
    wait_until(lambda: (root / "a.sent" / "before.csv").exists(), TIMEOUT, "first file")
    assert [] == events(daemon, "file_queued")

    outcome = reload_with(daemon, config_text(root, emulator.base_url, {"a": 2}, level="debug"), 1)
    (root / "a" / "after.csv").write_text("two\n")
    wait_until(lambda: (root / "a.sent" / "after.csv").exists(), TIMEOUT, "second file")

    assert True is outcome["restarted_for_logging"]
    assert ["after.csv"] == [event["file"] for event in events(daemon, "file_queued")]


def test_sighup_with_an_unchanged_config_touches_nothing(
    emulator: Emulator, root: Path, start_daemon: Any
) -> None:
    """A reload of the same file keeps every target running as it was: no new login, no restart."""
    text = config_text(root, emulator.base_url, {"a": 2, "b": 2})
    daemon = start_daemon(text)
    (root / "a" / "one.csv").write_text("one\n")
    wait_until(lambda: (root / "a.sent" / "one.csv").exists(), TIMEOUT, "first file")

    outcome = reload_with(daemon, text, 1)
    (root / "a" / "two.csv").write_text("two\n")
    wait_until(lambda: (root / "a.sent" / "two.csv").exists(), TIMEOUT, "second file")

    assert ([], [], [], ["a", "b"]) == (
        outcome["added"],
        outcome["changed"],
        outcome["removed"],
        outcome["unchanged"],
    )
    assert [] == events(daemon, "targets_stopping")
    assert 1 == emulator.counters["logins"]
