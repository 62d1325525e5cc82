"""Every config key is shown, with a comment, in config/example.yaml or a shipped example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from uploader_daemon.config.schema import Config

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE_FILES = [
    REPOSITORY / "config" / "example.yaml",
    *sorted((REPOSITORY / "config" / "examples").glob("*.yaml")),
]


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in models_in(argument)]


def every_model(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable from its fields (unions, lists and mappings too)."""
    found: list[type[BaseModel]] = []
    pending = [root]
    while pending:
        model = pending.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            pending.extend(models_in(field.annotation))
    return found


def commented_keys() -> set[str]:
    """Keys written (or shown commented out) on a line that has a comment or follows one."""
    keys: set[str] = set()
    for path in EXAMPLE_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            explained = "#" in line or (number > 0 and lines[number - 1].lstrip().startswith("#"))
            if explained:
                keys.update(re.findall(r"(?:^|[\s{,#-])([a-z_]+):(?=\s|$)", line))
    return keys


def test_every_key_of_every_config_model_appears_in_an_example_with_a_comment() -> None:
    """A key an admin cannot find in any example with its meaning is a key nobody will use."""
    documented = commented_keys()
    missing = sorted(
        f"{model.__name__}.{field.alias or name}"
        for model in every_model(Config)
        for name, field in model.model_fields.items()
        if (field.alias or name) not in documented
    )

    assert [] == missing


def test_the_walk_reaches_the_step_kinds_and_the_hooks() -> None:
    """The model walk above must see the nested models, or it would pass by seeing nothing."""
    names = {model.__name__ for model in every_model(Config)}

    assert {"HookSettings", "StoragePostStep", "DownloadStep", "CognitoAuth", "StepsUpload"} <= names
