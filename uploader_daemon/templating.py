"""``{file.name}``-style templates in step settings, and dotted paths into JSON responses.

A template is a string with ``{ref}`` placeholders, where ``ref`` is a dotted path such
as ``file.size`` or ``create.fields``; ``{{`` and ``}}`` are literal braces. A template
that is exactly one placeholder yields the value itself (a number stays a number, the
``fields`` mapping stays a mapping), so ``data_file_size: "{file.size}"`` sends an
integer in JSON. Anything else renders as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}|[{}]")
_SINGLE_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\}")


class TemplateError(ValueError):
    """A template is malformed or refers to a value that does not exist."""


class MissingValueError(TemplateError):
    """A dotted path does not lead to a value; ``path`` is the full dotted path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def references(template: str) -> list[str]:
    """Return the dotted paths a template refers to, in order.

    Raises :class:`TemplateError` for a stray ``{`` or ``}``.
    """
    refs: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise TemplateError(
                f"{template!r} has a stray {token!r}; write {{{{ or }}}} for a literal brace, "
                "or {name.field} for a value"
            )
        refs.append(match.group(1))
    return refs


def references_in(value: object) -> Iterator[str]:
    """Yield every reference in a template or in the strings nested in lists and mappings."""
    if isinstance(value, str):
        yield from references(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from references_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from references_in(item)


def dig(data: object, path: str, *, root: str = "") -> object:
    """Follow a dotted ``path`` (``a.b.0.c``) into nested mappings and lists.

    Raises :class:`MissingValueError` naming the full path when a part is absent.
    """
    current = data
    walked = root
    for part in path.split("."):
        walked = f"{walked}.{part}" if walked else part
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        elif isinstance(current, Mapping | list):
            raise MissingValueError(walked, "is missing")
        else:
            raise MissingValueError(walked, f"cannot be looked up in a {type(current).__name__}")
    return current


def dig_optional(data: object, path: str | None) -> object:
    """Like :func:`dig`, but ``None`` when ``path`` is ``None`` or leads nowhere."""
    if path is None:
        return None
    try:
        return dig(data, path)
    except MissingValueError:
        return None


def render(template: str, values: Mapping[str, object]) -> object:
    """Fill a template from ``values`` (``{"file": {...}, "create": {...}}``).

    Returns the referenced value itself when the template is one placeholder, else text.
    Raises :class:`MissingValueError` when a reference has no value.
    """
    single = _SINGLE_PLACEHOLDER.fullmatch(template)
    if single:
        return dig(values, single.group(1))
    references(template)  # validates stray braces before rendering

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return as_text(dig(values, match.group(1)))

    return _PLACEHOLDER.sub(substitute, template)


def render_text(template: str, values: Mapping[str, object]) -> str:
    """Fill a template and always return text (URLs, header values, file names)."""
    return as_text(render(template, values))


def render_tree(value: Any, values: Mapping[str, object]) -> Any:
    """Render every string inside nested mappings and lists; other values pass through."""
    if isinstance(value, str):
        return render(value, values)
    if isinstance(value, Mapping):
        return {key: render_tree(item, values) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render_tree(item, values) for item in value]
    return value


def as_text(value: object) -> str:
    """Text form of a template value: JSON for structures, plain for scalars."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    return str(value)
