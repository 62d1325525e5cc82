"""The config sections about running the daemon rather than delivering: metrics, hooks.

``metrics:`` (off when absent) serves Prometheus metrics and health checks;
``targets[].hooks:`` runs admin programs when a file is parked or the API is down.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from uploader_daemon.config.types import Model, PositiveDuration


class MetricsSettings(Model):
    """``metrics:``: where ``/metrics``, ``/healthz`` and ``/readyz`` are served."""

    listen: str = Field(
        default="127.0.0.1:9464",
        description="host:port to listen on; loopback by default (the metrics name your folders). "
        "Port 0 picks a free port and logs it (metrics_listening), for tests.",
    )

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, listen: str) -> str:
        host, separator, port = listen.rpartition(":")
        if not separator or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{listen!r} is not host:port, e.g. 127.0.0.1:9464 or [::1]:9464")
        return listen

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


Argv = tuple[str, ...]


class HookSettings(Model):
    """``targets[].hooks:``: programs run (without a shell, with a timeout) on events."""

    on_failure: Argv | None = Field(default=None, description="Run when a file is parked in failed_dir.")
    on_outage: Argv | None = Field(
        default=None, description="Run when the API is down or the login refused for outage_after."
    )
    outage_after: PositiveDuration = Field(
        default=600.0, description="How long an outage lasts before on_outage."
    )
    timeout: PositiveDuration = Field(default=30.0, description="A hook still running after this is killed.")

    @field_validator("on_failure", "on_outage")
    @classmethod
    def _not_empty(cls, argv: Argv | None) -> Argv | None:
        if argv is not None and (not argv or not argv[0]):
            raise ValueError("must be a list: the program first, then its arguments")
        return argv
