"""Read the YAML file and turn it into a :class:`Config`, or refuse it with every problem.

Each problem is one line: the key path, then a sentence saying what is wrong and what
to write instead (``targets[0].auth.refresh.check_every: '30x' is not a duration; ...``).
YAML syntax errors give the line and column. Nothing here logs or prints: the caller
decides how to show a :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from uploader_daemon.config.schema import Config
from uploader_daemon.config.types import absolute_path
from uploader_daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/uploader-daemon/config.yaml")
CONFIG_ENV_VAR = "UPLOADER_DAEMON_CONFIG"


def default_config_path(environ: Mapping[str, str]) -> Path:
    """``$UPLOADER_DAEMON_CONFIG``, else ``/etc/uploader-daemon/config.yaml``."""
    return Path(environ[CONFIG_ENV_VAR]) if environ.get(CONFIG_ENV_VAR) else DEFAULT_CONFIG_PATH


def load_config(
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    resolve_secrets: bool = True,
    check_folders: bool | None = None,
) -> Config:
    """Read, parse and validate the config file at ``path``.

    ``environ`` supplies ``{env: NAME}`` secrets and ``$CREDENTIALS_DIRECTORY``
    (default: the process environment); with ``resolve_secrets=False`` secrets are left
    unread and the drop folders are not checked (``status`` must work while a mount is
    down); ``check_folders`` (default: as ``resolve_secrets``) checks the drop folders.
    Raises :class:`ConfigError`.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            source, ["the config file does not exist; create it (see config/example.yaml) or pass --config"]
        ) from None
    except PermissionError:
        raise ConfigError(
            source, ["the config file is not readable by this user (permission denied)"]
        ) from None
    except IsADirectoryError:
        raise ConfigError(source, ["this is a directory; --config needs the YAML file"]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, ["the config file is not UTF-8 text"]) from None
    except OSError as error:
        raise ConfigError(source, [f"the config file cannot be read: {error.strerror or error}"]) from None
    environment = os.environ if environ is None else environ
    return parse_config(
        text,
        source,
        environment,
        resolve_secrets=resolve_secrets,
        check_folders=resolve_secrets if check_folders is None else check_folders,
    )


def parse_config(
    text: str,
    source: str,
    environ: Mapping[str, str],
    *,
    resolve_secrets: bool = True,
    check_folders: bool = True,
) -> Config:
    """Validate YAML ``text``; ``source`` names it in error messages."""
    data = _load_yaml(text, source)
    # Checked on the raw data, so a missing folder is reported with every other problem.
    folder_problems = _check_folders(data) if check_folders else []
    try:
        # check_folders: output folders' parents and hook programs are looked at on this machine.
        context = {"environ": environ, "skip_secrets": not resolve_secrets, "check_folders": check_folders}
        config = Config.model_validate(data, context=context)
    except ValidationError as error:
        details = _without_consequences(error.errors(include_url=False))
        problems = [_describe(detail, data) for detail in details] + folder_problems
        raise ConfigError(source, _without_secrets(_unique(problems), data)) from None
    if folder_problems:
        raise ConfigError(source, folder_problems)
    return config


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of silently keeping the last."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a key must be a name, not a {type(key).__name__} ({key_node.tag.rsplit(':', 1)[-1]}); "
                "a colon after a {...} or [...] makes it a key: remove it or quote the text",
                key_node.start_mark,
            )
        if key in seen:
            line = key_node.start_mark.line + 1
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice (lines {first} and {line}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = error.problem or error.context or "invalid YAML"
        hint = _yaml_hint(what, text, mark.line if mark else None)
        raise ConfigError(source, [f"{where}: YAML syntax error: {what}{hint}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError(source, [f"YAML syntax error: {error}"]) from None
    if data is None:
        raise ConfigError(source, ["the config file is empty; start from config/example.yaml"])
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(
            source, [f"the top level must be a mapping of keys (state_dir, targets, ...), not a {kind}"]
        )
    return data


def _yaml_hint(problem: str, text: str, line_index: int | None) -> str:
    """What an admin most likely did, for the YAML errors that hand-edited files produce.

    PyYAML names the place where it gave up, which for an indentation mistake is often
    the line after the one to fix; the hint names both.
    """
    # PyYAML quotes the character it stopped at with repr(): a tab reads '\t'.
    if "'\\t'" in problem or "\t" in problem:
        return "; tabs are not allowed: indent with spaces"
    if line_index is None:
        return ""
    lines = text.splitlines()
    number = line_index + 1  # 1-based, as in the message
    above = _line_above(lines, line_index)
    if problem.startswith("mapping values are not allowed"):
        if above is not None and _indent(lines[line_index]) > _indent(lines[above]):
            return (
                f"; line {number} is indented deeper than line {above + 1}, so it reads as part of that "
                f"line's value: check the indentation of line {above + 1} and line {number}"
            )
        return "; a value that contains ': ' must be quoted"
    if problem.startswith("expected <block end>") or problem.startswith("did not find expected key"):
        if above is not None:
            return (
                f"; line {number} is not aligned with the keys above it: check the indentation of "
                f"line {above + 1} and line {number}"
            )
        return f"; check the indentation of line {number}"
    return ""


def _line_above(lines: list[str], index: int) -> int | None:
    """The index of the nearest line above ``index`` that holds YAML (not blank, not a comment)."""
    for candidate in range(min(index, len(lines)) - 1, -1, -1):
        stripped = lines[candidate].strip()
        if stripped and not stripped.startswith("#"):
            return candidate
    return None


def _indent(line: str) -> int:
    """Where a line's key starts: a list item's dash counts as indentation."""
    stripped = line.lstrip(" ")
    indent = len(line) - len(stripped)
    while stripped.startswith("- "):
        rest = stripped[2:]
        indent += len(stripped) - len(rest.lstrip(" "))
        stripped = rest.lstrip(" ")
    return indent


def _without_consequences(details: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop "must not be empty" for a list whose items were all refused: the items say why."""

    def caused_by_items(detail: ErrorDetails) -> bool:
        loc = detail["loc"]
        return detail["type"] == "too_short" and any(
            other["loc"][: len(loc)] == loc and len(other["loc"]) > len(loc) for other in details
        )

    return [detail for detail in details if not caused_by_items(detail)]


def _describe(detail: ErrorDetails, data: object) -> str:
    loc = detail["loc"]
    if len(loc) >= 2 and loc[-1] == "[key]":
        # The mapping key itself is wrong (``5:`` where text is needed), not its value.
        path, mapping, _ = _key_path(loc[:-2], data)
        return f"{path or '(top level)'}: key {loc[-2]!r} {_sentence(detail, loc[-2], mapping)}"
    path, node, parent = _key_path(loc, data)
    return f"{path or '(top level)'}: {_sentence(detail, node, parent)}"


def _key_path(loc: Sequence[int | str], data: object) -> tuple[str, object, object]:
    """Render a pydantic location as ``targets[0].auth.login``, without union tags.

    Returns the path, the input value at that location (or ``None`` when missing) and
    the mapping that holds it. The schema is walked alongside, so a union tag is told
    apart from a key of the same name (``type: headers`` has a ``headers`` key).
    """
    path = ""
    node: object = data
    parent: object = None
    annotation: Any = Config
    for element in loc:
        if element == "[key]":
            continue
        if isinstance(element, str) and _tagged_model(annotation, element) is not None:
            annotation = _tagged_model(annotation, element)
            continue  # the tag pydantic adds for discriminated unions is not a key
        annotation = _child_annotation(annotation, element)
        if isinstance(element, int):
            path += f"[{element}]"
        else:
            path += f".{element}" if path else str(element)
        parent = node
        if isinstance(node, Mapping):
            node = node.get(element)
        elif isinstance(node, list) and isinstance(element, int) and element < len(node):
            node = node[element]
        else:
            node = None
    return path, node, parent


def _sentence(detail: ErrorDetails, node: object, parent: object) -> str:
    kind = detail["type"]
    context = detail.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        key = str(detail["loc"][-1])
        return f"unknown key {key!r}{_did_you_mean(key, detail, parent)}"
    if kind == "value_error":
        return str(context.get("error", detail["msg"]))
    if kind == "union_tag_invalid":
        tag = context.get("discriminator", "type").strip("'")
        return f"unknown {tag} {context.get('tag')!r}; use one of: {context.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"needs a {context.get('discriminator', 'type').strip(chr(39))} key"
    if kind in ("literal_error",):
        return f"must be {context.get('expected')}, not {node!r}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, not {node!r}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {node!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, not {node!r}"
    if kind in ("string_type",):
        return f"must be text, not {type(node).__name__}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping of keys, not {_kind_of(node)}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, not {_kind_of(node)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        limit = next(iter(context.values()), "")
        words = {
            "greater_than_equal": "at least",
            "greater_than": "more than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        return f"must be {words} {limit}, not {node!r}"
    if kind == "too_short":
        return "must not be empty" if context.get("min_length") == 1 else detail["msg"].lower()
    if kind == "string_pattern_mismatch":
        return f"{node!r} may only use letters, digits, '_', '.' and '-' (lower-case letters for step names)"
    if kind == "string_too_short":
        return "must not be empty"
    return str(detail["msg"])


def _did_you_mean(key: str, detail: ErrorDetails, parent: object) -> str:
    model = _model_for(detail["loc"][:-1], parent)
    if model is None:
        return ""
    allowed = [name if field.alias is None else field.alias for name, field in model.model_fields.items()]
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; allowed here: {', '.join(allowed)}"


def _model_for(loc: Sequence[int | str], parent: object) -> type[BaseModel] | None:
    """The config model at ``loc``, found by walking the schema (union tags included)."""
    annotation: Any = Config
    for element in loc:
        tagged = _tagged_model(annotation, element) if isinstance(element, str) else None
        annotation = tagged if tagged is not None else _child_annotation(annotation, element)
    models = _models_in(annotation)
    return models[0] if len(models) == 1 else None


def _tagged_model(annotation: Any, tag: str) -> type[BaseModel] | None:
    """The member of a discriminated union whose ``type``/``kind`` is ``tag``, if any."""
    models = _models_in(annotation)
    if len(models) < 2:
        return None
    return next((model for model in models if _tag_of(model) == tag), None)


def _child_annotation(annotation: Any, element: int | str) -> Any:
    """The annotation one level down: a list's item, a mapping's value, a model's field."""
    if get_origin(annotation) is Annotated:
        return _child_annotation(get_args(annotation)[0], element)
    container = next(
        (arg for arg in (annotation, *get_args(annotation)) if get_origin(arg) in (tuple, list, dict)), None
    )
    if container is not None:
        items = [arg for arg in get_args(container) if arg is not Ellipsis]
        return items[-1] if items else None  # tuple[X, ...], list[X], dict[str, X]: X
    models = _models_in(annotation)
    if isinstance(element, str) and len(models) == 1:
        fields = {field.alias or name: field for name, field in models[0].model_fields.items()}
        return fields[element].annotation if element in fields else None
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation admits (one for a model, several for a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _tag_of(model: type[BaseModel]) -> str | None:
    for name in ("type", "kind"):
        field = model.model_fields.get(name)
        if field is not None and get_origin(field.annotation) is Literal:
            return str(get_args(field.annotation)[0])
    return None


def _kind_of(value: object) -> str:
    """Name what was written without echoing text, which could be a misplaced secret."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    return f"{value!r}"


def _check_folders(data: Mapping[str, Any]) -> list[str]:
    """Problems with the drop folders on this machine, each with its key path.

    Works on the raw YAML so these are listed even when other keys are wrong; a
    folder that is not an absolute path is left to the schema to report.
    """
    targets = data.get("targets")
    if not isinstance(targets, list):
        return []
    problems = []
    for index, target in enumerate(targets):
        raw = target.get("folder") if isinstance(target, Mapping) else None
        try:
            folder = absolute_path(raw)
        except ValueError:
            continue
        key = f"targets[{index}].folder"
        if not folder.exists():
            problems.append(f"{key}: {folder} does not exist; create it or fix the path")
        elif not folder.is_dir():
            problems.append(f"{key}: {folder} is not a directory")
        elif not os.access(folder, os.R_OK | os.X_OK):
            problems.append(f"{key}: {folder} is not readable by this user")
    return problems


def _without_secrets(problems: list[str], data: object) -> list[str]:
    """Cut literal secrets out of the messages, in case one was written in the wrong place."""
    secrets = sorted(_literal_secrets(data), key=len, reverse=True)
    cleaned = []
    for problem in problems:
        for secret in secrets:
            problem = problem.replace(secret, "[secret]")
        cleaned.append(problem)
    return cleaned


def _literal_secrets(node: object) -> set[str]:
    """Text written where a secret goes: passwords, client secrets, static header values.

    A ``{env: ...}``/``{file: ...}`` mapping there names a source, not a secret.
    """
    found: set[str] = set()
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in _SECRET_KEYS:
                found |= _written_secret(value)
            elif key == "headers" and node.get("type") == "headers":
                values = value.values() if isinstance(value, Mapping) else [value]
                for item in values:
                    found |= _written_secret(item)
            else:
                found |= _literal_secrets(value)
    elif isinstance(node, list):
        for item in node:
            found |= _literal_secrets(item)
    return found


def _written_secret(value: object) -> set[str]:
    if isinstance(value, str | int | float) and not isinstance(value, bool) and len(str(value)) >= 4:
        return {str(value)}
    return set()


_SECRET_KEYS = ("password", "client_secret")


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))
