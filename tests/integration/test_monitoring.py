"""Watching the daemon as an admin does: /metrics scraped over HTTP, /healthz and /readyz,
systemd's notify socket, journald priorities, and `status` while it runs.

Every test runs the real daemon against the real emulator; the metrics endpoint listens
on 127.0.0.1 and a port the kernel picks (``metrics.listen: 127.0.0.1:0``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSWORD
from tests.helpers import DaemonProcess, DaemonThread, load, running_daemon, wait_until, write_config
from tests.integration.test_cli import uploader_daemon
from uploader_daemon.config import Config
from uploader_daemon.emulator import Emulator, ScriptedResponse
from uploader_daemon.watcher import FolderWatcher

TIMEOUT = 20.0
ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}

CONFIG = """
state_dir: {state}
log: {{level: info, format: json}}
shutdown_grace: 2s
metrics: {{listen: "127.0.0.1:0"}}
targets:
  - name: reports
    folder: {drop}
    settle: 0s
    concurrency: 2
    watch: {{rescan_every: 1h}}
    retry: {{attempts: 3, backoff: 100ms, max_backoff: 300ms}}
    after_upload: {{action: archive, archive_dir: {sent}}}
    failed_dir: {failed}
    api: {{base_url: "{base_url}", timeout: 5s}}
    auth:
      type: token
      login: {{path: /auth/login, username: uploader, password: {{env: UPLOADER_PASSWORD}}}}
      refresh: {{path: /auth/tokenRefresh, check_every: 1h}}
    upload: {{type: multipart, path: /api/envio, file_field: file}}
"""


def monitored_config(emulator: Emulator, folders: dict[str, Path], password: str = PASSWORD) -> Config:
    return load(
        CONFIG,
        {"UPLOADER_PASSWORD": password},
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )


def endpoint(runner: DaemonThread) -> str:
    assert runner.daemon is not None
    assert runner.daemon.supervision.endpoint is not None
    return f"http://127.0.0.1:{runner.daemon.supervision.endpoint.port}"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(runner: DaemonThread) -> Samples:
    """Every sample of /metrics, keyed by name and labels."""
    response = httpx.get(f"{endpoint(runner)}/metrics", timeout=5.0)
    assert 200 == response.status_code
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (labels ``node`` and ``target`` are matched by whatever else is given)."""
    wanted = set(labels.items())
    matches = [v for (n, ls), v in samples.items() if n == name and wanted <= set(ls)]
    assert len(matches) <= 1, f"{name}{labels} matches {len(matches)} samples"
    return matches[0] if matches else None


def wait_for_metric(
    runner: DaemonThread, name: str, condition: Callable[[float | None], bool], **labels: str
) -> Samples:
    """Scrape until ``condition(value)`` holds; returns that scrape."""
    found: dict[str, Samples] = {}

    def check() -> bool:
        found["samples"] = scrape(runner)
        return condition(value(found["samples"], name, **labels))

    wait_until(check, TIMEOUT, f"{name}{labels}")
    return found["samples"]


# --- /metrics ---------------------------------------------------------------------------


def test_counters_and_gauges_move_with_deliveries_parked_files_and_logins(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """Two deliveries and one parked file show in the counters; the gauges are true when scraped."""
    emulator.script("POST", "/api/envio", ScriptedResponse(400, {"error": "columns do not match"}))
    with running_daemon(monitored_config(emulator, folders)) as runner:
        assert runner.daemon is not None
        node = runner.daemon.node
        before = scrape(runner)
        (folders["drop"] / "bad.csv").write_text("x")
        wait_until(lambda: (folders["failed"] / "bad.csv.error.json").exists(), TIMEOUT, "one parked")
        for name, size in (("a.csv", 100), ("b.csv", 2000)):
            (folders["drop"] / name).write_bytes(b"y" * size)
        wait_until(lambda: len(list(folders["sent"].glob("*.csv"))) == 2, TIMEOUT, "two archived")
        after = wait_for_metric(runner, "uploader_files_delivered_total", lambda v: v == 2, target="reports")

    labels = {"node": node, "target": "reports"}
    assert 0.0 == value(before, "uploader_files_delivered_total", **labels)
    assert 0.0 == value(before, "uploader_logins_total", outcome="success", **labels)
    assert 1.0 == value(before, "uploader_api_up", **labels)
    assert value(before, "uploader_token_expiry_timestamp_seconds", **labels) is None
    assert value(before, "uploader_last_delivery_timestamp_seconds", **labels) is None
    assert 2.0 == value(after, "uploader_files_delivered_total", **labels)
    assert 1.0 == value(after, "uploader_files_failed_total", **labels)
    assert 2100.0 == value(after, "uploader_bytes_delivered_total", **labels)
    assert 2.0 == value(after, "uploader_delivery_duration_seconds_count", **labels)
    assert 1.0 == value(after, "uploader_logins_total", outcome="success", **labels)
    assert 0.0 == value(after, "uploader_logins_total", outcome="rejected", **labels)
    assert 1.0 == value(after, "uploader_http_requests_total", step="login", code="200", **labels)
    assert 2.0 == value(after, "uploader_http_requests_total", step="upload", code="200", **labels)
    assert 1.0 == value(after, "uploader_http_requests_total", step="upload", code="400", **labels)
    assert 0.0 == value(after, "uploader_files_pending", **labels)
    assert 0.0 == value(after, "uploader_files_in_flight", **labels)
    assert 1.0 == value(after, "uploader_api_up", **labels)
    last_delivery = value(after, "uploader_last_delivery_timestamp_seconds", **labels)
    expiry = value(after, "uploader_token_expiry_timestamp_seconds", **labels)
    assert last_delivery is not None
    assert abs(time.time() - last_delivery) < TIMEOUT
    assert expiry is not None
    assert expiry > time.time()


def test_an_outage_sets_api_up_to_0_holds_the_file_pending_and_1_when_the_api_is_back(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """Connections refused: uploader_api_up 0 with the file pending; accepted again: 1, delivered."""
    with running_daemon(monitored_config(emulator, folders)) as runner:
        emulator.refuse_connections()
        (folders["drop"] / "a.csv").write_text("a")
        down = wait_for_metric(runner, "uploader_api_up", lambda v: v == 0.0, target="reports")
        emulator.accept_connections()
        up = wait_for_metric(runner, "uploader_files_delivered_total", lambda v: v == 1.0, target="reports")

    assert 1.0 == value(down, "uploader_files_pending", target="reports")
    assert 0.0 == value(down, "uploader_files_delivered_total", target="reports")
    failed_logins = value(down, "uploader_logins_total", outcome="failed", target="reports")
    assert failed_logins is not None
    assert failed_logins >= 1
    no_answer = value(down, "uploader_http_requests_total", step="login", code="none", target="reports")
    assert no_answer is not None
    assert no_answer >= 1
    assert 1.0 == value(up, "uploader_api_up", target="reports")
    assert 0.0 == value(up, "uploader_files_pending", target="reports")
    assert 1.0 == value(up, "uploader_logins_total", outcome="success", target="reports")


# --- /healthz and /readyz -------------------------------------------------------------


@pytest.fixture
def first_scan_blocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every target's first scan waits until the test sets the event (at most TIMEOUT s)."""
    release = threading.Event()
    original = FolderWatcher.scan
    scanned: set[int] = set()

    async def scan(self: FolderWatcher) -> int:
        import asyncio

        if id(self) not in scanned:
            scanned.add(id(self))
            await asyncio.to_thread(release.wait, TIMEOUT)
        return await original(self)

    monkeypatch.setattr(FolderWatcher, "scan", scan)
    yield release
    release.set()


def test_readyz_answers_503_naming_the_unwatched_folder_until_the_watch_is_up_then_200(
    emulator: Emulator, folders: dict[str, Path], first_scan_blocked: threading.Event
) -> None:
    """While the first scan is held back, /readyz is 503 and says which target; /healthz is 200 throughout."""
    runner = DaemonThread(monitored_config(emulator, folders))
    # start() waits for READY=1, which this test holds back: run the thread directly.
    runner._thread.start()
    try:
        wait_until(
            lambda: (
                runner.daemon is not None
                and runner.daemon.supervision.endpoint is not None
                and runner.daemon.supervision.endpoint._server is not None
            ),
            TIMEOUT,
            "the endpoint listening",
        )
        base = endpoint(runner)
        starting = httpx.get(f"{base}/readyz", timeout=5.0)
        alive = httpx.get(f"{base}/healthz", timeout=5.0)
        first_scan_blocked.set()
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5.0).status_code == 200, TIMEOUT, "ready")
        ready = httpx.get(f"{base}/readyz", timeout=5.0)
    finally:
        runner.stop()

    assert 503 == starting.status_code
    assert "application/json" == starting.headers["content-type"]
    assert {"ready": False, "not_ready": ["target reports: its folder is not watched yet"]} == starting.json()
    assert 200 == alive.status_code
    assert {"ready": True, "not_ready": []} == ready.json()


def test_healthz_stops_answering_while_the_event_loop_is_blocked(
    emulator: Emulator, folders: dict[str, Path]
) -> None:
    """/healthz is served by the event loop: blocked, it times out; released, it answers 200."""
    release = threading.Event()
    with running_daemon(monitored_config(emulator, folders)) as runner:
        base = endpoint(runner)
        assert 200 == httpx.get(f"{base}/healthz", timeout=5.0).status_code
        blocker = threading.Thread(target=lambda: runner.call(lambda: release.wait(TIMEOUT), TIMEOUT + 5))
        blocker.start()
        try:
            with pytest.raises(httpx.TimeoutException):
                httpx.get(f"{base}/healthz", timeout=0.5)
        finally:
            release.set()
            blocker.join(TIMEOUT)
        assert 200 == httpx.get(f"{base}/healthz", timeout=5.0).status_code


def test_a_metrics_port_in_use_stops_the_start_with_exit_3_and_a_sentence_naming_metrics_listen(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """Another program on metrics.listen: `run` exits 3 with one JSON line naming the key."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "config.yaml",
            CONFIG.replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'),
            state=folders["state"],
            drop=folders["drop"],
            sent=folders["sent"],
            failed=folders["failed"],
            base_url=emulator.base_url,
        )
        result = uploader_daemon("run", "--config", str(config))

    assert 3 == result.returncode
    errors = [json.loads(line) for line in result.stdout.splitlines() if '"cannot_start"' in line]
    assert 1 == len(errors)
    assert errors[0]["error"].startswith(f"metrics.listen 127.0.0.1:{port}: cannot listen there")
    assert "Traceback" not in result.stdout + result.stderr


# --- systemd's notify socket ----------------------------------------------------------


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that keeps what arrives, with the time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def fields(self, key: str) -> list[tuple[float, str]]:
        """``(arrival, value)`` of every ``KEY=value`` line received so far."""
        with self._lock:
            messages = list(self.messages)
        return [
            (arrived, line.split("=", 1)[1])
            for arrived, message in messages
            for line in message.split("\n")
            if line.startswith(f"{key}=")
        ]

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self._socket.close()


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """NOTIFY_SOCKET and a 300 ms watchdog for this process, as systemd would set them."""
    # A short directory: a Unix socket path must fit in 108 bytes, tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="ud-notify-") as directory:
        receiver = NotifySocket(Path(directory) / "notify")
        monkeypatch.setenv("NOTIFY_SOCKET", str(receiver.path))
        monkeypatch.setenv("WATCHDOG_USEC", "300000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        try:
            yield receiver
        finally:
            receiver.close()


def test_systemd_hears_ready_status_lines_and_watchdog_pings_at_half_the_interval_until_the_loop_blocks(
    emulator: Emulator, folders: dict[str, Path], notify_socket: NotifySocket
) -> None:
    """READY=1, STATUS= with pending files and the last delivery, WATCHDOG=1 every ~150 ms, none blocked."""
    release = threading.Event()
    blocked: dict[str, float] = {}

    def block() -> None:
        blocked["from"] = time.monotonic()
        release.wait(TIMEOUT)
        blocked["to"] = time.monotonic()

    with running_daemon(monitored_config(emulator, folders)) as runner:
        environment_while_running = {
            name: os.environ.get(name) for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
        }
        wait_until(lambda: len(notify_socket.fields("WATCHDOG")) >= 6, TIMEOUT, "six watchdog pings")
        (folders["drop"] / "a.csv").write_text("a")
        wait_until(
            lambda: any("last delivery" in text for _, text in notify_socket.fields("STATUS")),
            TIMEOUT,
            "a STATUS= line with the delivery",
        )
        blocker = threading.Thread(target=lambda: runner.call(block, TIMEOUT + 5))
        blocker.start()
        wait_until(lambda: "from" in blocked, TIMEOUT, "the loop blocked")
        # The observation window is the measurement: ~6 ping intervals with the loop blocked.
        threading.Event().wait(0.9)
        release.set()
        blocker.join(TIMEOUT)
        wait_until(
            lambda: any(arrived > blocked["to"] for arrived, _ in notify_socket.fields("WATCHDOG")),
            TIMEOUT,
            "pings again after the block",
        )
    stopping = notify_socket.fields("STOPPING")

    assert {"NOTIFY_SOCKET": None, "WATCHDOG_USEC": None} == environment_while_running
    assert ["1"] == [text for _, text in notify_socket.fields("READY")]
    assert ["1"] == [text for _, text in stopping]
    pings = [arrived for arrived, _ in notify_socket.fields("WATCHDOG")]
    before_block = [moment for moment in pings if moment < blocked["from"]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(before_block)]
    assert 0.1 <= statistics.median(gaps) <= 0.3, gaps
    assert [] == [moment for moment in pings if blocked["from"] + 0.05 < moment < blocked["to"]]
    statuses = [text for _, text in notify_socket.fields("STATUS")]
    assert statuses[0].startswith("reports: 0 pending, no delivery yet")
    assert any(text.startswith("reports: 0 pending, last delivery ") for text in statuses), statuses
    arrivals = [arrived for arrived, _ in notify_socket.fields("STATUS")]
    assert all(later - earlier >= 1.9 for earlier, later in itertools.pairwise(arrivals))


# --- journald ------------------------------------------------------------------------


def test_errors_and_warnings_reach_journald_at_their_priority_and_stay_json(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """With $JOURNAL_STREAM naming stdout, each line starts <3>/<4>/<6> and the rest is the JSON object."""
    emulator.script(
        "POST",
        "/api/envio",
        ScriptedResponse(500, {"error": "try again"}),
        ScriptedResponse(400, {"error": "columns do not match"}),
    )
    config = write_config(
        tmp_path / "config.yaml",
        CONFIG.replace('metrics: {{listen: "127.0.0.1:0"}}\n', ""),
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )
    log_path = tmp_path / "stdout.log"
    log_path.touch()
    info = log_path.stat()
    daemon = DaemonProcess(
        config, log_path, env={**ENVIRON, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    )
    try:
        daemon.wait_for_log('"daemon_started"')
        (folders["drop"] / "bad.csv").write_text("x")
        daemon.wait_for_log('"file_failed"')
        daemon.signal()
        assert 0 == daemon.wait()
    finally:
        daemon.close()

    lines = log_path.read_bytes().splitlines()
    by_event: dict[str, bytes] = {}
    for line in lines:
        assert re.fullmatch(rb"<[0-7]>", line[:3]), line
        by_event.setdefault(json.loads(line[3:])["event"], line[:3])
    assert b"<3>" == by_event["file_failed"]
    assert b"<4>" == by_event["delivery_failed"]
    assert b"<6>" == by_event["daemon_started"]


# --- status while the daemon runs ------------------------------------------------------


def status_of(config: Path) -> dict[str, Any]:
    result = uploader_daemon("status", "--config", str(config), "--json")
    assert 0 == result.returncode, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_status_blames_the_password_when_the_login_is_refused(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """A wrong password: status says "login refused: check the username and password", not the token."""
    config_path = write_config(
        tmp_path / "config.yaml",
        CONFIG,
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )
    with running_daemon(monitored_config(emulator, folders, password="wrong-password")) as runner:
        (folders["drop"] / "a.csv").write_text("a")
        wait_for_metric(runner, "uploader_logins_total", lambda v: bool(v), outcome="rejected")

        def refused() -> bool:
            return "login_refused" == status_of(config_path)["targets"][0]["now"]["credential"]

        wait_until(refused, TIMEOUT, "status saying the login is refused")
        result = uploader_daemon("status", "--config", str(config_path))
        now = status_of(config_path)["targets"][0]["now"]

    assert "    credential: login refused since 20" in result.stdout
    assert "check the username and password" in result.stdout
    assert "token refused" not in result.stdout
    # The file waits, or is claimed for a moment by the probe that tries the login again.
    assert (1, 0) == (now["waiting"] + now["in_flight"], now["parked"])


def test_status_shows_the_api_unreachable_since_when_during_an_outage(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """Connections refused: status says "API unreachable since T"; back up: logged in again."""
    config_path = write_config(
        tmp_path / "config.yaml",
        CONFIG,
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )
    with running_daemon(monitored_config(emulator, folders)) as runner:
        emulator.refuse_connections()
        (folders["drop"] / "a.csv").write_text("a")
        wait_for_metric(runner, "uploader_api_up", lambda v: v == 0.0, target="reports")
        wait_until(
            lambda: "api_unreachable" == status_of(config_path)["targets"][0]["now"]["credential"],
            TIMEOUT,
            "status saying the API is unreachable",
        )
        down = status_of(config_path)["targets"][0]["now"]
        emulator.accept_connections()
        wait_until(lambda: len(list(folders["sent"].glob("*.csv"))) == 1, TIMEOUT, "delivered")
        wait_until(
            lambda: "logged_in" == status_of(config_path)["targets"][0]["now"]["credential"],
            TIMEOUT,
            "status saying logged in",
        )

    assert down["credential_text"].startswith("API unreachable since 20")
    assert down["api_up"] is False
    assert 1 == down["waiting"] + down["in_flight"]  # a probe may hold it for a moment


def test_status_after_the_daemon_stopped_says_so_and_what_it_saw_last(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """Stopped: "not running: stopped at T"; the token's expiry comes from the token file."""
    config_path = write_config(
        tmp_path / "config.yaml",
        CONFIG,
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )
    with running_daemon(monitored_config(emulator, folders)):
        (folders["drop"] / "a.csv").write_text("a")
        wait_until(lambda: len(list(folders["sent"].glob("*.csv"))) == 1, TIMEOUT, "delivered")

    document = status_of(config_path)
    now = document["targets"][0]["now"]
    assert document["daemon"]["running"] is False
    assert document["daemon"]["summary"].startswith("not running: stopped at 20")
    assert "logged_in" == now["credential"]
    assert now["last_delivery_at"] is not None
    assert now["api_up"] is None
    assert 0o600 == (folders["state"] / "present.json").stat().st_mode & 0o777


def test_status_piped_into_a_reader_that_went_away_prints_no_traceback(
    emulator: Emulator, folders: dict[str, Path], tmp_path: Path
) -> None:
    """`status | head` with the reader gone before the first write: exit 0, nothing on stderr."""
    import subprocess
    import sys

    config_path = write_config(
        tmp_path / "config.yaml",
        CONFIG,
        state=folders["state"],
        drop=folders["drop"],
        sent=folders["sent"],
        failed=folders["failed"],
        base_url=emulator.base_url,
    )
    folders["state"].mkdir(mode=0o700)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: the first write gets EPIPE
    try:
        environment = {**os.environ, **ENVIRON}
        environment.pop("NOTIFY_SOCKET", None)
        result = subprocess.run(
            [sys.executable, "-m", "uploader_daemon", "status", "--config", str(config_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)

    assert 0 == result.returncode
    assert "" == result.stderr
