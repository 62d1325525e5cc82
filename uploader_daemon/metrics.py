"""Prometheus metrics: counters from the targets' events, gauges read at scrape time.

Every metric is named ``uploader_...`` and labelled ``node`` (this daemon, as on its
journal claims) and ``target``. Counters count what happened in this process (they start
at 0 for every configured target, so ``increase()`` sees the first event):

=========================================  ==========================================
``uploader_files_delivered_total``         files delivered (every step succeeded)
``uploader_files_failed_total``            files given up on (parked in failed_dir)
``uploader_bytes_delivered_total``         their bytes
``uploader_delivery_duration_seconds``     histogram: first request to last answer
``uploader_logins_total{outcome}``         ``success``, ``rejected`` (the password), ``failed``
``uploader_token_refreshes_total{outcome}``  the same, for refreshes
``uploader_http_requests_total{step,code}``  every request by step; ``code="none"``: no answer
=========================================  ==========================================

Gauges are computed when scraped, from each target's live state (:class:`SnapshotSource`):
``uploader_files_pending`` (waiting, backing off or in flight), ``uploader_files_in_flight``,
``uploader_last_delivery_timestamp_seconds`` (absent before the first delivery the journal
knows of), ``uploader_token_expiry_timestamp_seconds`` (absent without a token) and
``uploader_api_up`` (0 during an outage, see :mod:`uploader_daemon.pool.gate`). The
process's own CPU, memory and file descriptors come as ``process_*``.

The registry is this object's own (never prometheus-client's global one), so two daemons
in one test process do not share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from uploader_daemon.monitor import Outcome
from uploader_daemon.present import TargetRecorder, TargetSnapshot

# From a small file on a LAN (tens of ms) to a multi-GB one over a slow link (hours).
DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
)  # fmt: skip
NO_ANSWER = "none"


@dataclass(frozen=True)
class LiveTarget:
    """What the gauges read for one target: its snapshot and its recorder."""

    snapshot: TargetSnapshot
    recorder: TargetRecorder


SnapshotSource = Callable[[], Sequence[LiveTarget]]


class Metrics:
    """The daemon's metrics: a :class:`~uploader_daemon.monitor.Listener` and a registry."""

    def __init__(self, node: str, targets: Iterable[str], live: SnapshotSource) -> None:
        self.node = node
        # No ``*_created`` series beside every counter: they double the series an admin
        # stores and say only when this process started (process_start_time_seconds
        # does). A setting of the library for the whole process, which is the daemon's.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("node", "target")
        self._delivered = Counter(
            "uploader_files_delivered",
            "Files delivered (every step succeeded), since the daemon started.",
            labels,
            registry=self.registry,
        )
        self._failed = Counter(
            "uploader_files_failed",
            "Files given up on and parked in failed_dir, since the daemon started.",
            labels,
            registry=self.registry,
        )
        self._bytes = Counter(
            "uploader_bytes_delivered",
            "Bytes of the files delivered, since the daemon started.",
            labels,
            registry=self.registry,
        )
        self._duration = Histogram(
            "uploader_delivery_duration_seconds",
            "How long a delivery took, from its first request to its last answer.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._logins = Counter(
            "uploader_logins",
            "Logins by outcome: success, rejected (the password was refused), failed (no usable answer).",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self._refreshes = Counter(
            "uploader_token_refreshes",
            "Token refreshes by outcome: success, rejected, failed.",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self._requests = Counter(
            "uploader_http_requests",
            'HTTP requests by step and status code; code="none" when no answer came.',
            (*labels, "step", "code"),
            registry=self.registry,
        )
        self.registry.register(_Gauges(node, live))
        ProcessCollector(registry=self.registry)
        for name in targets:
            self.target(name)  # every series exists from the start, at 0

    def target(self, name: str) -> _TargetMetrics:
        return _TargetMetrics(self, name)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for a scrape: ``(body, content type)``, as ``Accept`` asks."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _TargetMetrics:
    """One target's counters (a :class:`~uploader_daemon.monitor.TargetEvents`)."""

    def __init__(self, metrics: Metrics, target: str) -> None:
        node = metrics.node
        self._delivered = metrics._delivered.labels(node, target)
        self._failed = metrics._failed.labels(node, target)
        self._bytes = metrics._bytes.labels(node, target)
        self._duration = metrics._duration.labels(node, target)
        self._logins = {outcome: metrics._logins.labels(node, target, outcome.value) for outcome in Outcome}
        self._refreshes = {
            outcome: metrics._refreshes.labels(node, target, outcome.value) for outcome in Outcome
        }
        self._requests = metrics._requests
        self._node = node
        self._target = target

    def request_answered(self, step: str, status: int | None) -> None:
        code = NO_ANSWER if status is None else str(status)
        self._requests.labels(self._node, self._target, step, code).inc()

    def file_delivered(self, path: str, size: int, seconds: float | None) -> None:
        self._delivered.inc()
        self._bytes.inc(size)
        if seconds is not None:
            self._duration.observe(seconds)

    def file_parked(self, path: str, failed_path: str | None, reason: str) -> None:
        self._failed.inc()

    def login_finished(self, outcome: Outcome) -> None:
        self._logins[outcome].inc()

    def refresh_finished(self, outcome: Outcome) -> None:
        self._refreshes[outcome].inc()

    def api_down(self, reason: str, since: float) -> None:
        return None  # a gauge, read from the gate at scrape time

    def api_up(self, down_for: float) -> None:
        return None


class _Gauges(Collector):
    """The gauges, computed from the targets' live state at every scrape."""

    def __init__(self, node: str, live: SnapshotSource) -> None:
        self._node = node
        self._live = live

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        pending, in_flight, last_delivery, expiry, api_up = families
        for target in self._live():
            snapshot, labels = target.snapshot, [self._node, target.snapshot.name]
            pending.add_metric(labels, snapshot.scheduled)
            in_flight.add_metric(labels, snapshot.in_flight)
            if target.recorder.last_delivery_at is not None:
                last_delivery.add_metric(labels, target.recorder.last_delivery_at)
            if snapshot.token_expires_at is not None:
                expiry.add_metric(labels, snapshot.token_expires_at)
            api_up.add_metric(labels, 0 if snapshot.api_down_since is not None else 1)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        labels = ("node", "target")
        return [
            GaugeMetricFamily(
                "uploader_files_pending", "Files waiting, backing off or in flight.", labels=labels
            ),
            GaugeMetricFamily("uploader_files_in_flight", "Files being delivered now.", labels=labels),
            GaugeMetricFamily(
                "uploader_last_delivery_timestamp_seconds",
                "When the last file was delivered (Unix time).",
                labels=labels,
            ),
            GaugeMetricFamily(
                "uploader_token_expiry_timestamp_seconds",
                "When the token held now expires (Unix time); absent without a token.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "uploader_api_up",
                "1 while the API answers, 0 during an outage or a refused login.",
                labels=labels,
            ),
        ]
