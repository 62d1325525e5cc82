"""Secret values from the config: literal, ``{env: NAME}``, ``{file: PATH}``, ``{credential: NAME}``.

A resolved secret is a :class:`Secret`, whose ``repr``/``str`` never show the value, so
it cannot leak through a log call or a traceback by accident. ``{credential: NAME}``
reads ``$CREDENTIALS_DIRECTORY/NAME``, which systemd fills from ``LoadCredential=``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Secret:
    """A secret value and a harmless description of where it came from."""

    value: str = field(repr=False)
    source: str = "literal"
    path: Path | None = None  # the file it was read from, for {file: ...}

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__


SOURCE_KINDS = ("env", "file", "credential")


def secret_values(value: object) -> list[str]:
    """Every resolved secret inside a config object (models, mappings, sequences)."""
    if isinstance(value, Secret):
        return [value.value] if value.value else []
    if isinstance(value, Mapping):
        return [found for item in value.values() for found in secret_values(item)]
    if isinstance(value, list | tuple):
        return [found for item in value for found in secret_values(item)]
    fields = getattr(type(value), "model_fields", None)
    if isinstance(fields, dict):
        return [found for name in fields for found in secret_values(getattr(value, name))]
    return []


def resolve_secret(raw: object, environ: Mapping[str, str]) -> Secret:
    """Turn a config value into a :class:`Secret`.

    ``raw`` is a non-empty string (literal) or a one-key mapping ``env``/``file``/
    ``credential``. Raises ``ValueError`` with a sentence an admin can act on.
    """
    if isinstance(raw, str):
        if not raw:
            raise ValueError("is empty; write the secret, or {env: NAME}, {file: PATH} or {credential: NAME}")
        return Secret(raw)
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ValueError("must be a string, or exactly one of {env: NAME}, {file: PATH}, {credential: NAME}")
    ((kind, name),) = raw.items()
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown secret source {kind!r}; use env, file or credential")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{{{kind}: ...}} needs a non-empty name")
    if kind == "env":
        return _from_env(name, environ)
    if kind == "file":
        path = Path(os.path.expanduser(name))
        if not path.is_absolute():
            raise ValueError(
                f"secret file {name!r} must be an absolute path (or start with ~ for the home of the "
                "user the daemon runs as)"
            )
        secret = _from_file(path, f"file {path}")
        return Secret(secret.value, secret.source, path)
    return _from_credential(name, environ)


def secret_files(value: object) -> list[Path]:
    """The files ``{file: ...}`` secrets were read from, inside a config object."""
    if isinstance(value, Secret):
        return [value.path] if value.path is not None else []
    if isinstance(value, Mapping):
        return [found for item in value.values() for found in secret_files(item)]
    if isinstance(value, list | tuple):
        return [found for item in value for found in secret_files(item)]
    fields = getattr(type(value), "model_fields", None)
    if isinstance(fields, dict):
        return [found for name in fields for found in secret_files(getattr(value, name))]
    return []


def _from_env(name: str, environ: Mapping[str, str]) -> Secret:
    value = environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set; export it before starting the daemon")
    if not value:
        raise ValueError(f"environment variable {name} is empty")
    return Secret(value, f"env {name}")


def _from_credential(name: str, environ: Mapping[str, str]) -> Secret:
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ValueError(
            f"{{credential: {name}}} needs $CREDENTIALS_DIRECTORY, which systemd sets from "
            f"LoadCredential={name}:/path; outside systemd use {{file: PATH}} or {{env: NAME}}"
        )
    if "/" in name or name in (".", ".."):
        raise ValueError(f"credential name {name!r} must be a plain name, not a path")
    return _from_file(Path(directory) / name, f"credential {name}")


def _from_file(path: Path, source: str) -> Secret:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"secret file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"secret file {path} is not readable by this user (permission denied)") from None
    except IsADirectoryError:
        raise ValueError(f"secret file {path} is a directory") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    except OSError as error:
        raise ValueError(f"secret file {path} cannot be read: {error.strerror}") from None
    # Editors and `echo` add one trailing newline; it is never part of the secret.
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ValueError(f"secret file {path} is empty")
    return Secret(value, source)
