"""The configuration as immutable objects: parsed once, passed down explicitly."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from uploader_daemon.config.auth import AuthSettings
from uploader_daemon.config.operations import HookSettings, MetricsSettings
from uploader_daemon.config.presets import UploadSettings
from uploader_daemon.config.types import (
    AbsolutePath,
    Duration,
    HttpUrl,
    Model,
    OutputFolder,
    PositiveDuration,
    SecretValue,
)
from uploader_daemon.config.upload import ApiStep, Step
from uploader_daemon.urls import Origin, origin_of, same_origin


class LogSettings(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="json for journald, console for people; auto picks by TTY."
    )


class WatchSettings(Model):
    poll: bool = Field(default=False, description="Poll instead of inotify (NFS/SMB shares).")
    poll_interval: PositiveDuration = 5.0
    rescan_every: PositiveDuration = Field(
        default=60.0, description="Full rescan: the backstop for missed or overflowed events."
    )
    stalled_writer_after: PositiveDuration = Field(
        default=3600.0,
        description=(
            "A file written to but never closed counts as finished once unchanged this long; "
            "the backstop for lost close events."
        ),
    )


class RetrySettings(Model):
    attempts: int = Field(default=10, ge=1, le=1000)
    backoff: PositiveDuration = 2.0
    max_backoff: PositiveDuration = 600.0

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_backoff < self.backoff:
            raise ValueError("max_backoff must not be shorter than backoff")
        return self


class AfterUploadSettings(Model):
    action: Literal["archive", "delete", "keep"] = "archive"
    archive_dir: OutputFolder | None = None

    @model_validator(mode="after")
    def _archive_needs_dir(self) -> AfterUploadSettings:
        if self.action == "archive" and self.archive_dir is None:
            raise ValueError("action archive needs archive_dir: the folder delivered files move to")
        if self.action != "archive" and self.archive_dir is not None:
            raise ValueError(f"archive_dir is only used with action archive, not {self.action}")
        return self


class ApiSettings(Model):
    base_url: HttpUrl
    timeout: PositiveDuration = 30.0
    verify_tls: bool = True
    ca_file: AbsolutePath | None = Field(default=None, description="Extra CA bundle (PEM) to trust.")
    idempotency_key: bool = Field(
        default=True,
        description="Send an idempotency key with every request that sends the file or creates something.",
    )
    idempotency_header: str = Field(
        default="Idempotency-Key", min_length=1, description="The header that carries it."
    )

    @cached_property
    def origin(self) -> Origin | None:
        """The only origin the target's credential is ever sent to."""
        return origin_of(self.base_url)


class TargetSettings(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    folder: AbsolutePath
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = (".*", "*.tmp", "*.part", "*~")
    recursive: bool = False
    settle: Duration = 2.0
    watch: WatchSettings = WatchSettings()
    concurrency: int = Field(default=4, ge=1, le=256)
    retry: RetrySettings = RetrySettings()
    after_upload: AfterUploadSettings
    failed_dir: OutputFolder
    api: ApiSettings
    auth: AuthSettings
    upload: UploadSettings
    hooks: HookSettings = HookSettings()

    @model_validator(mode="after")
    def _folders_apart(self) -> TargetSettings:
        for key, path in self.output_folders.items():
            if path == self.folder:
                raise ValueError(f"{key} must differ from folder, or delivered files would be sent again")
        return self

    @model_validator(mode="after")
    def _credential_stays_home(self) -> TargetSettings:
        for step in self.steps:
            fixed_url = step.url if isinstance(step, ApiStep) and step.credential else None
            if fixed_url and "{" not in fixed_url and not same_origin(fixed_url, self.api.origin):
                raise ValueError(
                    f"step {step.name!r} sends the credential to {fixed_url}, which is not "
                    "api.base_url's host; set credential: false or use path"
                )
        return self

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.upload.steps

    @property
    def output_folders(self) -> dict[str, Path]:
        """Folders the daemon writes into, by config key (never scanned for uploads)."""
        folders = {"failed_dir": self.failed_dir}
        if self.after_upload.archive_dir is not None:
            folders["after_upload.archive_dir"] = self.after_upload.archive_dir
        for step in self.steps:
            output_dir = getattr(step, "output_dir", None)
            if isinstance(output_dir, Path):
                folders[f"output_dir of step {step.name}"] = output_dir
        return folders


class JournalSettings(Model):
    """``journal:``: where every file's state is kept."""

    keep_done_for: Duration = Field(
        default=30 * 86400.0, description="How long delivered files stay in the journal (status history)."
    )
    backend: Literal["sqlite", "postgresql"] = Field(
        default="sqlite", description="sqlite: in state_dir, one daemon; postgresql: shared by a group."
    )
    dsn: SecretValue | None = Field(default=None, description="postgresql: the connection string (a secret).")
    lease: PositiveDuration = Field(
        default=10.0, description="A claim not renewed for this long is taken over."
    )
    node: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="This daemon's name in the group; default hostname.",
    )

    @model_validator(mode="after")
    def _dsn_for_postgresql(self) -> JournalSettings:
        if self.backend == "postgresql" and self.dsn is None:
            raise ValueError("backend postgresql needs dsn: the database to share, e.g. postgresql://host/db")
        if self.backend == "sqlite" and self.dsn is not None:
            raise ValueError(
                "dsn is only used with backend postgresql; the sqlite journal lives in state_dir"
            )
        return self


class Config(Model):
    state_dir: AbsolutePath = Field(description="Journal and token store; created with mode 0700.")
    log: LogSettings = LogSettings()
    shutdown_grace: Duration = Field(
        default=10.0, description="How long in-flight uploads may finish on stop."
    )
    journal: JournalSettings = JournalSettings()
    metrics: MetricsSettings | None = Field(default=None, description="Off when absent.")
    targets: tuple[TargetSettings, ...] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _targets_distinct(cls, targets: tuple[TargetSettings, ...]) -> tuple[TargetSettings, ...]:
        # A field validator, so the problem is reported at the key path ``targets``.
        names = [target.name for target in targets]
        for name in sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"target name {name!r} is used more than once; names must be unique")
        for index, target in enumerate(targets):
            for other in targets[:index]:
                if _overlap(target, other) or _overlap(other, target):
                    raise ValueError(
                        f"targets {other.name!r} and {target.name!r} both watch {target.folder}; "
                        "a file must belong to exactly one target"
                    )
        return targets

    def target(self, name: str) -> TargetSettings:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)


def _overlap(outer: TargetSettings, inner: TargetSettings) -> bool:
    """Whether ``outer`` would pick up files that are in ``inner``'s folder."""
    if outer.folder == inner.folder:
        return True
    return outer.recursive and outer.folder in inner.folder.parents
