"""Two real daemons on one drop folder, sharing a PostgreSQL journal (issue 11).

Each node is ``python -m uploader_daemon run`` with its own ``state_dir``; they share the
drop folder, the archive, ``failed_dir`` and one database on the session's real server.
Both watch by polling, as the README tells admins to on a shared disk, and a node's
claims last ``lease: 3s``. Where one node's uploads must hang while the other's go
through, each node talks to its own emulator; the files are counted across both.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PASSWORD
from tests.helpers import ConfigYaml, DaemonProcess, log_events, token_auth, wait_until
from tests.postgres import PostgresServer
from uploader_daemon.emulator import Emulator

ENVIRON = {"UPLOADER_PASSWORD": PASSWORD}
LEASE = 3.0
TIMEOUT = 30.0
# The goal for a takeover after kill -9 with ``lease: 3s``.
FAILOVER_BOUND = 10.0


@dataclass
class Group:
    """The shared folders and database of a group, and the nodes started on them."""

    tmp_path: Path
    dsn: str
    drop: Path
    sent: Path
    failed: Path
    nodes: list[DaemonProcess] = field(default_factory=list)

    def start(self, node: str, emulator: Emulator, concurrency: int = 4) -> DaemonProcess:
        # Hung uploads must outlast several leases without timing out on their own.
        """Start node ``node`` delivering to ``emulator``; returns once it runs."""
        folders = {"drop": self.drop, "sent": self.sent, "failed": self.failed, "state": self.tmp_path / node}
        config = ConfigYaml(
            folders,
            "reports",
            emulator.base_url,
            auth=token_auth(),
            concurrency=concurrency,
            watch={"poll": True, "poll_interval": "0.2s", "rescan_every": "1h"},
            journal={"backend": "postgresql", "dsn": self.dsn, "lease": f"{LEASE}s", "node": node},
            shutdown_grace="2s",
            api_timeout="60s",
        ).write(self.tmp_path / f"{node}.yaml")
        process = DaemonProcess(config, self.tmp_path / f"{node}.log", env=ENVIRON)
        self.nodes.append(process)
        process.wait_for_log('"daemon_started"', TIMEOUT)
        return process

    def drop_files(self, count: int, prefix: str = "f") -> list[str]:
        """Write ``count`` files under a temporary name and rename them in, as producers should."""
        names = [f"{prefix}{index:04d}.csv" for index in range(count)]
        staging = self.tmp_path / "staging"
        staging.mkdir(exist_ok=True)
        for name in names:
            (staging / name).write_bytes(f"{name}\n".encode() * 8)
            os.rename(staging / name, self.drop / name)
        return names

    def archived(self) -> list[str]:
        return sorted(path.name for path in self.sent.iterdir()) if self.sent.exists() else []

    def rows(self) -> list[dict[str, Any]]:
        """Every journal row: path, state, disposition, owner."""
        with psycopg.connect(self.dsn) as connection:
            cursor = connection.execute(
                "SELECT convert_from(path, 'UTF8') AS path, state, disposition, owner FROM uploader_files"
            )
            columns = [column.name for column in cursor.description or ()]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture
def group(tmp_path: Path, postgres_dsn: str) -> Iterator[Group]:
    shared = tmp_path / "shared"
    drop = shared / "drop"
    drop.mkdir(parents=True)
    made = Group(tmp_path, postgres_dsn, drop, shared / "sent", shared / "failed")
    try:
        yield made
    finally:
        for process in made.nodes:
            if process.process.poll() is not None:
                continue
            with_signal(process, signal.SIGCONT)
            process.signal(signal.SIGTERM)
            try:
                process.wait(TIMEOUT)
            finally:
                process.close()


def with_signal(process: DaemonProcess, signum: int) -> None:
    if process.process.poll() is None:
        process.signal(signum)


def delivered_by(process: DaemonProcess) -> list[str]:
    """The files this node logged as delivered."""
    return [event["file"] for event in log_events(process.output) if event.get("event") == "file_delivered"]


def holding_uploads(
    group: Group, emulator: Emulator, count: int, prefix: str, *, hang_for: float
) -> tuple[DaemonProcess, list[str], list[str]]:
    """node-a, with ``count`` uploads to ``emulator`` in flight and unanswered for ``hang_for`` s.

    A warm-up file goes through first, so node-a has its token and only uploads hang (a
    hanging server would hang the login too). Returns node-a, the warm-up file's name and
    the held files' names.
    """
    node = group.start("node-a", emulator, concurrency=count)
    warm_up = group.drop_files(1, prefix="warm-up")
    wait_until(lambda: len(emulator.received) == 1, TIMEOUT, "the warm-up file delivered")
    emulator.hang_all(hang_for)
    held = group.drop_files(count, prefix=prefix)
    wait_until(lambda: emulator.counters["hung_requests"] == count, TIMEOUT, "node-a's uploads hanging")
    return node, warm_up, held


def received_names(*emulators: Emulator) -> list[str]:
    return sorted(received.name for emulator in emulators for received in emulator.received)


def assert_each_delivered_once(group: Group, names: list[str], *emulators: Emulator) -> None:
    """Archived once, received once, one finished row each: the group delivered each file once."""
    assert_journal_done(group, names)  # first: it waits for any late find to be settled
    assert sorted(names) == group.archived()
    assert sorted(names) == received_names(*emulators)
    assert not group.failed.exists() or [] == list(group.failed.iterdir())


def wait_for_quiet_journal(group: Group) -> None:
    """Until no row is pending or in flight.

    A node whose scan listed a file just before another node archived it admits a row of
    its own after the archive and finds the file gone a moment later; the checks wait for
    that, and a late duplicate would show in them.
    """

    def still_active() -> list[dict[str, Any]]:
        return [row for row in group.rows() if row["state"] in {"pending", "uploading", "delivered"}]

    try:
        wait_until(lambda: not still_active(), TIMEOUT, "a quiet journal")
    except AssertionError as error:
        raise AssertionError(f"{error}; still active: {still_active()}") from None


def assert_journal_done(group: Group, names: list[str]) -> None:
    """One archived row per file; any other row is a late scan's find of a file already filed away."""
    wait_for_quiet_journal(group)
    rows = group.rows()
    archived = [row for row in rows if (row["state"], row["disposition"]) == ("done", "archived")]
    assert sorted(names) == sorted(row["path"] for row in archived)
    late = [row for row in rows if row not in archived]
    assert {("gone", "vanished")} >= {(row["state"], row["disposition"]) for row in late}, late


def test_two_nodes_share_the_work_and_deliver_each_file_once(group: Group, emulator: Emulator) -> None:
    """200 files into one folder watched by two nodes: each delivered and archived exactly once, by both."""
    first = group.start("node-a", emulator)
    second = group.start("node-b", emulator)
    names = group.drop_files(200)

    wait_until(lambda: len(group.archived()) == len(names), TIMEOUT, "every file archived")
    wait_until(lambda: len(delivered_by(first)) + len(delivered_by(second)) == len(names), TIMEOUT, "logs")

    assert_each_delivered_once(group, names, emulator)
    by_first, by_second = delivered_by(first), delivered_by(second)
    assert set() == set(by_first) & set(by_second)
    # Both scan the same folder and claim from one table: both take a share.
    assert by_first, len(by_second)
    assert by_second, len(by_first)


def test_a_live_node_keeps_its_files_and_a_killed_one_hands_them_over_within_seconds(
    group: Group, start_emulator: Any
) -> None:
    """Hung uploads stay their node's while it renews; after kill -9 the survivor sends them in < 10 s."""
    hung, working = start_emulator(), start_emulator()
    first, warm_up, held = holding_uploads(group, hung, 3, "held", hang_for=120.0)
    names = warm_up + held
    second = group.start("node-b", working)
    more = group.drop_files(5, prefix="free")
    wait_until(lambda: len(working.received) == len(more), TIMEOUT, "node-b delivering the new files")

    # Two leases: without its renewals node-a's claims would have run out by now.
    renewing_until = time.monotonic() + 2 * LEASE
    wait_until(
        lambda: time.monotonic() > renewing_until or set(received_names(working)) & set(names),
        3 * LEASE,
        "two leases",
    )
    assert sorted(more) == received_names(working)
    assert warm_up == received_names(hung)

    first.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert -signal.SIGKILL == first.wait(TIMEOUT)
    wait_until(lambda: len(group.archived()) == len(names) + len(more), TIMEOUT, "the held files archived")
    failover = time.monotonic() - killed_at

    assert failover < FAILOVER_BOUND, failover
    assert_each_delivered_once(group, names + more, hung, working)
    assert sorted(held + more) == sorted(delivered_by(second))


def test_a_node_paused_past_its_lease_finds_its_claims_gone_and_touches_nothing(
    group: Group, start_emulator: Any
) -> None:
    """SIGSTOP past the lease, the other node delivers; after SIGCONT the first neither archives nor parks."""
    slow, working = start_emulator(), start_emulator()
    # Answers nothing for a while, then closes: a failed attempt once node-a resumes.
    first, warm_up, names = holding_uploads(group, slow, 2, "paused", hang_for=2 * LEASE)
    first.signal(signal.SIGSTOP)
    try:
        second = group.start("node-b", working)
        wait_until(lambda: len(group.archived()) == 1 + len(names), TIMEOUT, "node-b taking the files over")
        slow.hang_all(None)  # node-a's requests end while it is stopped
    finally:
        first.signal(signal.SIGCONT)

    # Each held file's claim is noticed lost on its own: wait for all of them, not the first.
    wait_until(
        lambda: first.output.count('"claim_lost"') >= len(names), TIMEOUT, "node-a noticing its lost claims"
    )
    # The stop below lets node-a finish whatever it would still do with those files.
    lost = [event for event in log_events(first.output) if event.get("event") == "claim_lost"]
    assert sorted(names) == sorted(event["file"] for event in lost)
    first.signal(signal.SIGTERM)
    assert 0 == first.wait(TIMEOUT)

    assert_each_delivered_once(group, warm_up + names, slow, working)
    assert sorted(names) == sorted(delivered_by(second))
    assert warm_up == delivered_by(first)
    first_events = {event.get("event") for event in log_events(first.output)}
    assert not first_events & {"file_failed", "worker_error"}


def test_the_database_restarting_under_a_running_pair_loses_no_file(
    group: Group, emulator: Emulator, postgres_server: PostgresServer
) -> None:
    """PostgreSQL stops mid-delivery and comes back: every file is delivered and archived once."""
    first = group.start("node-a", emulator, concurrency=2)
    second = group.start("node-b", emulator, concurrency=2)
    names = group.drop_files(60)
    wait_until(lambda: len(emulator.received) >= 10, TIMEOUT, "deliveries under way")
    postgres_server.stop()
    try:
        wait_until(
            lambda: '"journal_unreachable"' in first.output and '"journal_unreachable"' in second.output,
            TIMEOUT,
            "both nodes noticing the database is gone",
        )
    finally:
        postgres_server.start()

    wait_until(lambda: len(group.archived()) == len(names), 2 * TIMEOUT, "every file archived")
    wait_until(
        lambda: '"journal_reachable"' in first.output and '"journal_reachable"' in second.output,
        TIMEOUT,
        "both nodes back on the database",
    )
    assert sorted(names) == group.archived()
    assert_journal_done(group, names)
    # At least once: a file whose "delivered" write the outage cut off may go out again.
    assert set(names) == set(received_names(emulator))
    assert first.process.poll() is None
    assert second.process.poll() is None
    for node in (first, second):
        events = log_events(node.output)
        # Told once each way, by our own events; not by the driver at every reconnection.
        assert 1 == sum(event["event"] == "journal_unreachable" for event in events)
        assert 1 == sum(event["event"] == "journal_reachable" for event in events)
        assert [] == [event for event in events if str(event.get("logger", "")).startswith("psycopg")]
