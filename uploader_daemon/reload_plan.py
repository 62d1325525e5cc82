"""What a reload (SIGHUP, ``systemctl reload``) changes: pure comparison of two configs.

The daemon (:mod:`uploader_daemon.daemon`) carries the plan out: targets to stop are
stopped gracefully (in-flight deliveries get ``shutdown_grace``), targets to start are
started with their new settings, the others are not touched. A changed target is
stopped and started again, so no two services ever watch the same folder. Since the
journal persists, a file is neither lost nor sent twice across the change: what was in
flight finishes first, what was pending is resumed by the new service, what arrived in
between is found by its first scan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from uploader_daemon.config.schema import Config, TargetSettings


@dataclass(frozen=True)
class ReloadPlan:
    """The difference between what runs and what the new config asks for."""

    refused: tuple[str, ...]  # why the new config cannot be taken without a restart
    stop: tuple[str, ...]  # running targets to stop (removed or changed), by name
    start: tuple[str, ...]  # targets to start (added, changed, or not running), in config order
    removed: tuple[str, ...]
    added: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    logging_changed: bool
    notes: tuple[str, ...]  # settings that take effect only after a restart

    @property
    def changes_anything(self) -> bool:
        return bool(self.stop or self.start or self.logging_changed)


def plan_reload(current: Config, new: Config, running: Mapping[str, TargetSettings]) -> ReloadPlan:
    """Compare the running config (and the settings each running target has) with ``new``.

    ``running`` holds only the targets that run: one that failed to start last time is
    started by the next reload whatever its settings.
    """
    refused = []
    if new.state_dir != current.state_dir:
        refused.append(
            f"state_dir: changed from {current.state_dir} to {new.state_dir}; the journal and the "
            "token store move only with a restart (systemctl restart uploader-daemon)"
        )
    if new.journal != current.journal:
        refused.append(
            "journal: changed; the journal is opened once at start, so this needs a restart "
            "(systemctl restart uploader-daemon)"
        )
    notes = []
    if new.metrics != current.metrics:
        notes.append("metrics: changed; the metrics endpoint keeps its settings until the next restart")
    logging_changed = new.log != current.log
    wanted = {target.name: target for target in new.targets}
    removed = tuple(name for name in running if name not in wanted)
    changed = tuple(name for name, settings in running.items() if name in wanted and wanted[name] != settings)
    added = tuple(name for name in wanted if name not in running)
    # Loggers are bound when a target's objects are built: a new level or format reaches
    # a target only by building it again.
    stop = tuple(running) if logging_changed else removed + changed
    start = tuple(name for name in wanted if name in stop or name not in running)
    unchanged = tuple(name for name in wanted if name in running and name not in stop)
    return ReloadPlan(
        refused=tuple(refused),
        stop=stop,
        start=start,
        removed=removed,
        added=added,
        changed=changed,
        unchanged=unchanged,
        logging_changed=logging_changed,
        notes=tuple(notes),
    )
