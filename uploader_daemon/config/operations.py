"""The config sections about running the daemon rather than delivering: metrics, hooks.

``metrics:`` (off when absent) serves Prometheus metrics and health checks;
``targets[].hooks:`` runs admin programs when a file is parked or the API is down.
"""

from __future__ import annotations

import os
import shutil

from pydantic import Field, ValidationInfo, field_validator

from uploader_daemon.config.types import Model, PositiveDuration
from uploader_daemon.templating import TemplateError, references


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

# What a hook's arguments may refer to; everything else an alert needs is in its environment.
HOOK_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "on_failure": {"target": ("name", "folder"), "file": ("name", "relative_path", "failed_path")},
    "on_outage": {"target": ("name", "folder")},
}


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
    def _runnable(cls, argv: Argv | None, info: ValidationInfo) -> Argv | None:
        if argv is None:
            return None
        if not argv or not argv[0]:
            raise ValueError("must be a list: the program first, then its arguments")
        assert info.field_name is not None
        _check_hook_templates(argv, HOOK_VALUES[info.field_name])
        context = info.context or {}
        if context.get("check_folders"):
            _check_program(argv[0], context.get("environ", os.environ).get("PATH", os.defpath))
        return argv


def _check_hook_templates(argv: Argv, known: dict[str, tuple[str, ...]]) -> None:
    for position, argument in enumerate(argv):
        try:
            refs = references(argument)
        except TemplateError as error:
            raise ValueError(f"argument {position}: {error}") from None
        for ref in refs:
            head, _, field = ref.partition(".")
            if head not in known or field not in known[head]:
                offered = ", ".join(f"{{{space}.{name}}}" for space, names in known.items() for name in names)
                raise ValueError(
                    f"argument {position}: {{{ref}}} is not a value hooks know; use one of: {offered} "
                    "(the rest is in the UPLOADER_* environment variables)"
                )


def _check_program(program: str, search_path: str) -> None:
    """The program exists and this user may run it (a hook that cannot start alerts nobody)."""
    if os.sep not in program:
        if shutil.which(program, path=search_path) is None:
            raise ValueError(f"{program!r} is not found in PATH; write the program's absolute path")
        return
    if not os.path.isabs(program):
        raise ValueError(f"{program!r} must be an absolute path (hooks run without a shell, from /)")
    if not os.path.isfile(program):
        raise ValueError(f"{program} does not exist; install it or fix the path")
    if not os.access(program, os.X_OK):
        raise ValueError(f"{program} is not executable by this user; chmod +x it")
