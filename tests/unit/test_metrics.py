"""The metrics' exposition: names, labels, counters from events, gauges read at scrape time."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import FakeClock
from uploader_daemon.metrics import DURATION_BUCKETS, LiveTarget, Metrics
from uploader_daemon.monitor import Outcome
from uploader_daemon.present import TargetRecorder, TargetSnapshot

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def labels(**extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({"node": "node-a", "target": "reports", **extra}.items())


def snapshot(**changes: object) -> TargetSnapshot:
    values: dict[str, object] = {
        "name": "reports",
        "scheduled": 0,
        "in_flight": 0,
        "watching": True,
        "token_expires_at": None,
        "logs_in": True,
        "api_down_since": None,
        "api_down_reason": None,
    } | changes
    return TargetSnapshot(**values)  # type: ignore[arg-type]


def test_every_counter_of_every_target_exists_at_zero_before_anything_happened() -> None:
    """Counters start at 0 per target and outcome, so increase() sees the first event."""
    samples = samples_of(Metrics("node-a", ["reports"], list))

    assert 0.0 == samples[("uploader_files_delivered_total", labels())]
    assert 0.0 == samples[("uploader_files_failed_total", labels())]
    assert 0.0 == samples[("uploader_bytes_delivered_total", labels())]
    assert 0.0 == samples[("uploader_delivery_duration_seconds_count", labels())]
    for outcome in ("success", "rejected", "failed"):
        assert 0.0 == samples[("uploader_logins_total", labels(outcome=outcome))]
        assert 0.0 == samples[("uploader_token_refreshes_total", labels(outcome=outcome))]
    assert [] == [name for name, _ in samples if name.endswith("_created")]


def test_events_move_the_counters_with_node_and_target_labels() -> None:
    """Deliveries, parked files, logins, refreshes and requests each land on their own series."""
    metrics = Metrics("node-a", ["reports"], list)
    events = metrics.target("reports")

    events.file_delivered("a.csv", 100, 0.2)
    events.file_delivered("b.csv", 50, None)  # no duration: resumed after a restart
    events.file_parked("bad.csv", "/failed/bad.csv", "400: refused")
    events.login_finished(Outcome.SUCCESS)
    events.login_finished(Outcome.REJECTED)
    events.refresh_finished(Outcome.FAILED)
    events.request_answered("upload", 200)
    events.request_answered("upload", 200)
    events.request_answered("login", None)
    samples = samples_of(metrics)

    assert 2.0 == samples[("uploader_files_delivered_total", labels())]
    assert 150.0 == samples[("uploader_bytes_delivered_total", labels())]
    assert 1.0 == samples[("uploader_delivery_duration_seconds_count", labels())]
    assert 1.0 == samples[("uploader_delivery_duration_seconds_bucket", labels(le="0.25"))]
    assert 0.0 == samples[("uploader_delivery_duration_seconds_bucket", labels(le="0.1"))]
    assert 1.0 == samples[("uploader_files_failed_total", labels())]
    assert 1.0 == samples[("uploader_logins_total", labels(outcome="success"))]
    assert 1.0 == samples[("uploader_logins_total", labels(outcome="rejected"))]
    assert 1.0 == samples[("uploader_token_refreshes_total", labels(outcome="failed"))]
    assert 2.0 == samples[("uploader_http_requests_total", labels(step="upload", code="200"))]
    assert 1.0 == samples[("uploader_http_requests_total", labels(step="login", code="none"))]


def test_gauges_are_read_from_the_live_state_at_each_scrape() -> None:
    """Pending, in flight, token expiry, API up, last delivery follow the live state; absent if unknown."""
    recorder = TargetRecorder(FakeClock(1000.0), ())
    live = [LiveTarget(snapshot(), recorder)]
    metrics = Metrics("node-a", ["reports"], lambda: live)
    idle = samples_of(metrics)
    recorder.file_delivered("a.csv", 1, 0.1)
    live[0] = LiveTarget(
        snapshot(scheduled=3, in_flight=1, token_expires_at=5000.0, api_down_since=900.0), recorder
    )
    busy = samples_of(metrics)

    assert (0.0, 0.0, 1.0) == (
        idle[("uploader_files_pending", labels())],
        idle[("uploader_files_in_flight", labels())],
        idle[("uploader_api_up", labels())],
    )
    assert ("uploader_token_expiry_timestamp_seconds", labels()) not in idle
    assert ("uploader_last_delivery_timestamp_seconds", labels()) not in idle
    assert (3.0, 1.0, 0.0, 5000.0, 1000.0) == (
        busy[("uploader_files_pending", labels())],
        busy[("uploader_files_in_flight", labels())],
        busy[("uploader_api_up", labels())],
        busy[("uploader_token_expiry_timestamp_seconds", labels())],
        busy[("uploader_last_delivery_timestamp_seconds", labels())],
    )


def test_two_daemons_in_one_process_keep_their_own_registries() -> None:
    """No global registry: a second Metrics neither clashes with nor sees the first one's counts."""
    first = Metrics("node-a", ["reports"], list)
    second = Metrics("node-a", ["reports"], list)
    first.target("reports").file_delivered("a.csv", 1, 1.0)

    assert 1.0 == samples_of(first)[("uploader_files_delivered_total", labels())]
    assert 0.0 == samples_of(second)[("uploader_files_delivered_total", labels())]


def test_the_duration_buckets_reach_from_milliseconds_to_hours() -> None:
    """A small file on a LAN and a multi-GB upload each fall in a bucket of their own."""
    assert DURATION_BUCKETS[0] <= 0.01
    assert DURATION_BUCKETS[-1] >= 4 * 3600
    assert sorted(DURATION_BUCKETS) == list(DURATION_BUCKETS)


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it() -> None:
    """Prometheus's Accept header for OpenMetrics gets that format, ending in # EOF."""
    body, content_type = Metrics("node-a", ["reports"], list).render(
        "application/openmetrics-text; version=1.0.0"
    )

    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
