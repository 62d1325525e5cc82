"""``uploader-daemon example-config [FLOW]`` and ``systemd-unit``: the shipped files, printed.

They are package data (``uploader_daemon/data``), so an install from a wheel, with no
source tree at hand, can still start from a commented config and the hardened unit.
"""

from __future__ import annotations

from importlib import resources

# The flow letter (as in the README) or the preset's name.
EXAMPLES = {
    "T": "T-token-api.yaml",
    "R": "R-runrun-documents.yaml",
    "P": "P-presigned-status.yaml",
    "C": "C-conversion-tasks.yaml",
    "G": "G-cognito-gateway.yaml",
    "STEPS": "steps.yaml",
}
_ALIASES = {
    "MULTIPART": "T",
    "RUNRUN_DOCUMENT": "R",
    "PRESIGNED_WITH_STATUS": "P",
    "CONVERSION_TASK": "C",
    "GATEWAY_PRESIGNED": "G",
}
FULL_EXAMPLE = "example.yaml"
UNIT = "uploader-daemon.service"


def example_names() -> str:
    """The choices, for ``--help`` and for an unknown name."""
    return ", ".join(name.lower() if len(name) > 1 else name for name in EXAMPLES)


def example_config(flow: str | None) -> str:
    """The text of an example: every key commented without ``flow``, else that flow's.

    Raises ``KeyError`` for a flow that has no example.
    """
    if flow is None:
        return _read(FULL_EXAMPLE)
    key = flow.upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    return _read(EXAMPLES[key])


def systemd_unit() -> str:
    return _read(UNIT)


def _read(name: str) -> str:
    return resources.files("uploader_daemon").joinpath("data", name).read_text(encoding="utf-8")
