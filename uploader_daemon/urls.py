"""URL helpers every layer shares: the same-origin rule, log-safe URLs, joining paths.

The same-origin rule decides where the target's credential may go: only to
``api.base_url``'s scheme, host and port (a default port equals none). Config
validation and the credential on the wire (:mod:`uploader_daemon.auth.wire`) both ask
:func:`same_origin` about :func:`origin_of` ``api.base_url``, so the two never disagree.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

Origin = tuple[str, str, int | None]  # (scheme, lower-case host, port with the default filled in)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> Origin | None:
    """``(scheme, host, port)`` of ``url`` with the scheme's default port; ``None`` if unparsable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def same_origin(url: str, origin: Origin | None) -> bool:
    """Whether ``url`` has ``origin`` (see :func:`origin_of`); an unparsable URL has none.

    A default port in ``origin`` equals none: ``("https", host, 443)`` is ``("https", host, None)``.
    """
    if origin is None:
        return False
    scheme, host, port = origin
    expected = (scheme, host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme))
    return origin_of(url) == expected


def safe_url(url: str) -> str:
    """``url`` without query string or user info: presigned URLs carry signatures."""
    parsed = _split(url)
    if parsed is None:
        return cut(url)
    parts, netloc = parsed
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def host_of(url: str) -> str:
    """``host[:port]`` of ``url`` for a message (the start of it when unparsable)."""
    parsed = _split(url)
    return cut(url) if parsed is None else parsed[1]


def join_url(base_url: str, path: str) -> str:
    """``base_url`` + ``path`` (the base's own path prefix is kept, unlike urljoin)."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def cut(url: str) -> str:
    """The start of a URL that cannot be parsed, without its query (signatures)."""
    return url.split("?", 1)[0][:80]


def _split(url: str) -> tuple[SplitResult, str] | None:
    """The parts of ``url`` and its ``host[:port]`` without user info; ``None`` if unparsable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 literal, as written in a URL
    return parts, f"{netloc}:{port}" if port else netloc
