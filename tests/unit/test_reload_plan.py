"""What a reload changes, decided from two configs alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from uploader_daemon.config import Config, parse_config
from uploader_daemon.reload_plan import plan_reload


def target(name: str, root: Path, concurrency: int = 4) -> str:
    (root / name).mkdir(exist_ok=True)
    return (
        f"  - {{name: {name}, folder: {root / name}, concurrency: {concurrency},"
        f" after_upload: {{action: delete}}, failed_dir: {root / (name + '.failed')},"
        ' api: {base_url: "https://api.example.com"}, auth: {type: none},'
        " upload: {type: multipart, path: /api/envio}}\n"
    )


def config(
    root: Path, *targets: str, state: str = "state", level: str = "info", journal: str = "30d"
) -> Config:
    text = (
        f"state_dir: {root / state}\nlog: {{level: {level}}}\njournal: {{keep_done_for: {journal}}}\n"
        "targets:\n" + "".join(targets)
    )
    return parse_config(text, "test", {})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def test_added_changed_removed_and_unchanged_targets_are_told_apart(root: Path) -> None:
    """b changes, c goes, d comes, a stays: only b and c stop; b and d start."""
    old = config(root, target("a", root), target("b", root), target("c", root))
    new = config(root, target("a", root), target("b", root, concurrency=1), target("d", root))

    plan = plan_reload(old, new, {settings.name: settings for settings in old.targets})

    assert (("d",), ("b",), ("c",), ("a",)) == (plan.added, plan.changed, plan.removed, plan.unchanged)
    assert (("c", "b"), ("b", "d")) == (plan.stop, plan.start)
    assert () == plan.refused
    assert plan.changes_anything


def test_a_target_that_failed_to_start_is_started_by_the_next_reload(root: Path) -> None:
    """Not running means: start it, even with the very settings it had."""
    old = config(root, target("a", root), target("b", root))

    plan = plan_reload(old, old, {"a": old.targets[0]})

    assert (("b",), (), ("a",)) == (plan.start, plan.stop, plan.unchanged)


def test_a_new_log_level_restarts_every_target(root: Path) -> None:
    """Loggers are bound when a target starts: a new level reaches it only by a restart."""
    old = config(root, target("a", root), target("b", root))
    new = config(root, target("a", root), target("b", root), level="debug")

    plan = plan_reload(old, new, {settings.name: settings for settings in old.targets})

    assert (True, ("a", "b"), ("a", "b"), ()) == (plan.logging_changed, plan.stop, plan.start, plan.unchanged)


def test_a_new_state_dir_or_journal_is_refused(root: Path) -> None:
    """Both are opened once at start: changing them needs a restart, and the plan says why."""
    old = config(root, target("a", root))
    new = config(root, target("a", root), state="other", journal="1d")

    plan = plan_reload(old, new, {settings.name: settings for settings in old.targets})

    assert 2 == len(plan.refused)
    assert plan.refused[0].startswith(f"state_dir: changed from {root / 'state'} to {root / 'other'}")
    assert plan.refused[1].startswith("journal: changed")


def test_the_same_config_changes_nothing(root: Path) -> None:
    """A reload of an unchanged file stops and starts nothing."""
    old = config(root, target("a", root))

    plan = plan_reload(old, old, {settings.name: settings for settings in old.targets})

    assert not plan.changes_anything
