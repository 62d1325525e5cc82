"""Reading a part's ``Content-Disposition`` the way servers do: name and filename as sent.

Part headers are bytes of no declared charset. RFC 5987/7578
``filename*=charset''percent-encoded`` wins; otherwise the quoted value with its
backslash escapes undone, then the HTML5 form escapes that browsers and httpx 0.28 write
(``%22`` for a quote, ``%0A`` and friends for control characters) undone, then decoded as
UTF-8, or as latin-1 if that fails (a client sending raw latin-1 bytes).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes


class MultipartError(ValueError):
    """The body is not well-formed ``multipart/form-data`` (the client's fault: a 400)."""


# The escapes of the HTML5 multipart/form-data encoding as httpx 0.28 writes them
# (httpx/_multipart.py: '"' as %22, and every byte 0x00-0x1F except ESC 0x1B as %XX,
# upper-case hex); backslash is written as a quoted-pair "\\". Only these are undone:
# any other "%" was sent as itself, since the encoding does not escape "%".
_FORM_ESCAPE = re.compile(rb"%(22|0[0-9A-F]|1[0-9ACDEF])")


def parse_header_parameters(value: str) -> tuple[str, dict[str, str]]:
    """Split a header such as Content-Disposition into its first token and parameters.

    ``form-data; name="a;b"; filename*=UTF-8''na%C3%AFve.txt`` gives
    ``("form-data", {"name": "a;b", "filename": "naïve.txt"})``. Quoted values may hold
    ``;`` and backslash escapes (quoted-pair). An RFC 5987 ``name*`` parameter is
    decoded and wins over a plain ``name``. Parameter names are lowercased.

    Raises:
        MultipartError: a quoted string is not closed.
    """
    head, _, rest = value.partition(";")
    parameters: dict[str, str] = {}
    extended: dict[str, str] = {}
    for parameter in _split_parameters(rest):
        if parameter.name.endswith("*"):
            extended[parameter.name[:-1]] = _decode_extended_value(parameter.value)
        else:
            parameters[parameter.name] = parameter.value
    parameters.update(extended)
    return head.strip().lower(), parameters


@dataclass(frozen=True)
class ContentDisposition:
    """A part's Content-Disposition: ``kind`` lowercased, ``name`` and ``filename`` as text.

    ``raw_filename`` is the filename parameter's value exactly as it was on the wire:
    the bytes between the quotes of ``filename="..."`` with no escape undone, or the
    whole value of ``filename*=...`` when that one was sent (it wins).
    """

    kind: str
    name: str | None
    filename: str | None
    raw_filename: bytes | None


def parse_content_disposition(raw: bytes) -> ContentDisposition:
    """Parse a part's Content-Disposition header from its raw bytes.

    ``filename*=UTF-8''caf%C3%A9.csv`` (RFC 5987/7578) wins over ``filename``; its
    charset is used if Python knows it and the bytes fit it. A plain ``filename``
    (and ``name``) has its quoted-pairs and HTML5 form escapes undone and is decoded as
    UTF-8, or latin-1 if it is not UTF-8: ``b'caf\\xc3\\xa9.csv'`` and ``b'caf\\xe9.csv'``
    both read "café.csv", while ``raw_filename`` keeps them apart.

    Raises:
        MultipartError: a quoted string is not closed.
    """
    # latin-1 maps every byte to one character and back, so no byte is lost before the
    # parameters are split; each value is decoded on its own afterwards.
    head, _, rest = raw.decode("latin-1").partition(";")
    plain: dict[str, _Parameter] = {}
    extended: dict[str, _Parameter] = {}
    for parameter in _split_parameters(rest):
        if parameter.name.endswith("*"):
            extended[parameter.name[:-1]] = parameter
        else:
            plain[parameter.name] = parameter

    def text_of(name: str) -> tuple[str, bytes] | None:
        if name in extended:
            parameter = extended[name]
            return _decode_extended_leniently(parameter.value), parameter.raw.encode("latin-1")
        if name in plain:
            parameter = plain[name]
            unescaped = _FORM_ESCAPE.sub(_unescape_form_byte, parameter.value.encode("latin-1"))
            return decode_wire_text(unescaped), parameter.raw.encode("latin-1")
        return None

    name, filename = text_of("name"), text_of("filename")
    return ContentDisposition(
        head.strip().lower(),
        None if name is None else name[0],
        None if filename is None else filename[0],
        None if filename is None else filename[1],
    )


def decode_wire_text(data: bytes) -> str:
    """Header bytes as text: UTF-8 when they are valid UTF-8, latin-1 otherwise (never fails)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _unescape_form_byte(match: re.Match[bytes]) -> bytes:
    return bytes([int(match.group(1), 16)])


def _decode_extended_leniently(text: str) -> str:
    """Decode an RFC 5987 value, falling back to UTF-8-else-latin-1 for a wrong charset."""
    charset, quote, remainder = text.partition("'")
    if not quote:
        return decode_wire_text(unquote_to_bytes(text.encode("latin-1")))
    _language, _, encoded = remainder.partition("'")
    data = unquote_to_bytes(encoded.encode("latin-1"))
    try:
        codecs.lookup(charset or "utf-8")
        return data.decode(charset or "utf-8")
    except (LookupError, UnicodeDecodeError):
        return decode_wire_text(data)


@dataclass(frozen=True)
class _Parameter:
    """One ``name=value`` of a header: ``value`` with quoted-pairs undone, ``raw`` as sent."""

    name: str
    value: str
    raw: str


def _split_parameters(rest: str) -> list[_Parameter]:
    """Split what follows a header's first ``;`` into its parameters, in order.

    Raises:
        MultipartError: a quoted string is not closed.
    """
    parameters: list[_Parameter] = []
    position = 0
    while position < len(rest):
        # Skip separators between parameters.
        while position < len(rest) and rest[position] in " \t;":
            position += 1
        if position >= len(rest):
            break
        equals = rest.find("=", position)
        semicolon = rest.find(";", position)
        if equals < 0 or (0 <= semicolon < equals):
            # A bare token without a value (seen in the wild): keep it as empty.
            end = len(rest) if semicolon < 0 else semicolon
            parameters.append(_Parameter(rest[position:end].strip().lower(), "", ""))
            position = end
            continue
        name = rest[position:equals].strip().lower()
        position = equals + 1
        while position < len(rest) and rest[position] in " \t":
            position += 1
        if position < len(rest) and rest[position] == '"':
            start = position
            text, position = _read_quoted(rest, position)
            raw = rest[start + 1 : position - 1]
        else:
            end = rest.find(";", position)
            end = len(rest) if end < 0 else end
            text = raw = rest[position:end].strip()
            position = end
        parameters.append(_Parameter(name, text, raw))
    return parameters


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted string opening at ``text[start]``; return it and the next index."""
    characters: list[str] = []
    position = start + 1
    while position < len(text):
        character = text[position]
        if character == "\\" and position + 1 < len(text):
            characters.append(text[position + 1])
            position += 2
            continue
        if character == '"':
            return "".join(characters), position + 1
        characters.append(character)
        position += 1
    raise MultipartError("a quoted header parameter is not closed")


def _decode_extended_value(text: str) -> str:
    """Decode an RFC 5987 value (``charset'language'percent-encoded``)."""
    charset, quote, remainder = text.partition("'")
    if not quote:
        return unquote(text)
    _language, _, encoded = remainder.partition("'")
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError) as error:
        raise MultipartError(f"cannot decode the extended parameter {text!r}") from error
