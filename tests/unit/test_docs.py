"""The README and docs/ point only at files in this repository, and their examples load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_config import _example_with_local_paths
from uploader_daemon.config import parse_config

REPOSITORY = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_every_relative_link_leads_to_a_file_of_this_repository(document: Path) -> None:
    """A link to ../shared or a moved file would send a reader nowhere."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text(encoding="utf-8"))
    local = [target for target in targets if "://" not in target and not target.startswith("mailto:")]
    outside = [
        target
        for target in local
        if not (document.parent / target).exists()
        or REPOSITORY not in (document.parent / target).resolve().parents
    ]

    assert local, "no relative links found: the pattern is wrong"
    assert [] == outside


def test_the_worked_steps_example_in_docs_loads(tmp_path: Path) -> None:
    """docs/steps.md's `type: steps` config passes the same checks as `check-config`."""
    text = (REPOSITORY / "docs" / "steps.md").read_text(encoding="utf-8")
    [block] = [block for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if "state_dir:" in block]
    source = tmp_path / "steps-example.yaml"
    source.write_text(block, encoding="utf-8")
    (tmp_path / "local").mkdir()

    yaml_text, environ = _example_with_local_paths(source, tmp_path / "local")
    config = parse_config(yaml_text, source.name, environ)

    assert ["upload", "store", "confirm", "status"] == [step.name for step in config.targets[0].steps]
