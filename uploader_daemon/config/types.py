"""Field types for the config models: durations, absolute paths, URLs, secrets.

Each validator raises ``ValueError`` with the sentence the admin will read after the
key path, so ``targets[0].settle: '2 sec' is not a duration; ...`` comes out whole.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainValidator, ValidationInfo

from uploader_daemon.secrets import Secret, resolve_secret

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_HINT = "write it as 500ms, 2s, 30m, 1h, 1h30m or a number of seconds"


class Model(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def parse_duration(value: object) -> float:
    """Seconds from ``500ms``/``2s``/``30m``/``1h``/``1d``/``1h30m`` or a plain number."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
        elif text.startswith("-"):
            raise ValueError(f"{value!r} is negative; durations must be zero or more")
        else:
            raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
    else:
        raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
    if not math.isfinite(seconds):
        # YAML reads .nan and .inf as numbers; neither is a time anyone can wait.
        raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError(f"{value!r} is negative; durations must be zero or more")
    return seconds


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def absolute_path(value: object) -> Path:
    """``value`` as an absolute path (``~`` expanded); ``ValueError`` when it is not one."""
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError("must be a path")
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        raise ValueError(f"{str(value)!r} must be an absolute path (starting with /)")
    return path


def _output_folder(path: Path, info: ValidationInfo) -> Path:
    """A folder the daemon writes into: it creates only the last component.

    A parent that does not exist is almost always a typo (``/srv/drop/reprots.failed``);
    creating it with every missing parent would hide the mistake until someone looks
    for the files. Checked only when the loader checks folders (not for ``status``).
    """
    if not (info.context or {}).get("check_folders"):
        return path
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory")
        return path
    if not path.parent.is_dir():
        raise ValueError(
            f"{path.parent} does not exist; fix the path, or create it: the daemon creates only "
            f"the last folder ({path.name})"
        )
    return path


def _http_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be an http:// or https:// URL")
    try:
        parts = urlsplit(value.strip())
    except ValueError as error:  # "Invalid IPv6 URL" and the like
        raise ValueError(f"{value!r} is not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} must not have a query or fragment; put those in the step")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value.strip().rstrip("/")


def _api_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{path!r} must start with /; it is joined to api.base_url")
    return path


def _secret(value: object, info: ValidationInfo) -> Secret:
    context = info.context or {}
    if context.get("skip_secrets"):
        # ``status`` reads the journal only: it must work without the daemon's secrets.
        return Secret("", "not resolved")
    environ = context.get("environ", os.environ)
    return resolve_secret(value, environ)


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
AbsolutePath = Annotated[Path, PlainValidator(absolute_path)]
OutputFolder = Annotated[Path, PlainValidator(absolute_path), AfterValidator(_output_folder)]
HttpUrl = Annotated[str, PlainValidator(_http_url)]
SecretValue = Annotated[Secret, PlainValidator(_secret)]
ApiPath = Annotated[str, AfterValidator(_api_path)]
