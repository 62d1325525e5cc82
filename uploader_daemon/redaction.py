"""Secret redaction: one place that knows what a credential looks like.

Used by every log line (:class:`Redactor` is a structlog processor), by the HTTP layer
(body excerpts quoted into errors) and by the outcomes (``.error.json`` sidecars).
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from structlog.typing import EventDict, WrappedLogger

REDACTED = "[REDACTED]"

# Keys whose values are secrets whatever they contain (compared in lower case, "-" as "_").
_SENSITIVE_KEY = re.compile(
    r"^(password|passwd|secret|token|access_token|refresh_token|id_token|authorization|"
    r"proxy_authorization|cookie|set_cookie|api_key|app_key|user_token|client_secret|"
    r"accesstoken|refreshtoken|idtoken|sessiontoken|"
    r"x_amz_signature|x_amz_credential|x_amz_security_token|awsaccesskeyid|signature|policy|"
    r"credentials?)$|(_password|_secret|_token|_api_?key|_apikey)$"
)
# Credentials that can show up inside free text (an exception message, a body excerpt).
# The token characters are RFC 6750's b64token (base64url included: "-" and "_"). The
# scheme needs a space after it, so identifiers such as bearer_token_missing survive.
# After Bearer or TOK: any token-shaped value is a credential; after Basic the value must
# look like base64 (a digit or symbol, or 20 letters and more), so prose such as "Basic
# authentication required" survives.
_BEARER = re.compile(
    r"(?i)\b(?:(bearer)\s+|(tok:)\s*|(basic)\s+(?=[A-Za-z]*[0-9._~+/=_-]|[A-Za-z]{20}))"
    r"[A-Za-z0-9._~+/=_-]{6,}"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# A secret field quoted in JSON ("RefreshToken": "...") or a Python repr ('password': '...'),
# also inside a JSON string (\"token\": \"...\"). A value cut short by an excerpt runs to
# the end of the text and is cut all the same.
_SECRET_FIELD = re.compile(
    r"""(?ixs)
    (?P<key>(?P<quote>\\?["'])
        (?:[\w-]*(?:password|token|secret)|x-amz-(?:signature|credential)|signature|policy|awsaccesskeyid)
        (?P=quote))
    (?P<colon>\s*:\s*)
    (?P<open>\\?["'])
    (?:(?!(?P=open))(?:[^\\]|\\.))*
    (?P<close>(?P=open)|\\?$)
    """
)
# A secret query parameter of a URL (presigned signatures, tokens): the key is kept.
_SECRET_PARAMETER = re.compile(
    r"(?i)(?<![\w-])(x-amz-signature|x-amz-credential|x-amz-security-token|signature|awsaccesskeyid|"
    r"policy|access_token|refresh_token|id_token|token|client_secret|password|sig)=[^&\s\"'#<>\\]+"
)
# A secret element of an XML error body: S3's SignatureDoesNotMatch answer quotes the
# signature sent and the string signed (for a POST, the policy itself).
_SECRET_ELEMENT = re.compile(
    r"(?i)<(signatureprovided|stringtosign(?:bytes)?|canonicalrequest(?:bytes)?|awsaccesskeyid|"
    r"x-amz-signature|x-amz-credential|signature|policy|[\w-]*token|[\w-]*password)>[^<]*(</\1>|$)"
)
# Cheap tests that let most lines skip a pattern: each pattern needs one of these words.
_FIELD_WORDS = ("token", "password", "secret", "signature", "policy", "amz-", "awsaccesskeyid")
_PARAMETER_WORDS = ("signature", "amz-", "awsaccesskeyid", "policy", "token", "secret", "password", "sig=")
_SCHEME_WORDS = ("bearer", "basic", "tok:")
_ELEMENT_WORDS = (
    "signature",
    "stringtosign",
    "canonicalrequest",
    "accesskeyid",
    "policy",
    "token>",
    "password>",
)
_MIN_SECRET_LENGTH = 6
# A secret shorter than this may be an ordinary word ("uploader"): it is only cut where it
# stands alone, not inside a path or a longer name, where cutting it would mangle the line
# and show where the password is.
_WORD_LIKE_SECRET = 16
_RECENT_TOKENS = 8


def scrub_text(text: str) -> str:
    """Return ``text`` with every recognisable credential replaced by ``[REDACTED]``.

    Recognised without being registered: ``Bearer``/``Basic``/``TOK:`` credentials,
    JWT-shaped strings, the values of secret fields quoted in JSON or a Python repr
    (``"RefreshToken": "..."``, ``'password': '...'``, ``"x-amz-signature": "..."``), of
    secret URL query parameters (``X-Amz-Signature=...``, ``token=...``) and of secret
    XML elements (S3's ``<SignatureProvided>``, ``<StringToSign>``); keys stay.
    """
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    lowered = text.lower()
    if ":" in text and ('"' in text or "'" in text) and any(word in lowered for word in _FIELD_WORDS):
        text = _SECRET_FIELD.sub(_blank_field, text)
    if "=" in text and any(word in lowered for word in _PARAMETER_WORDS):
        text = _SECRET_PARAMETER.sub(lambda match: f"{match.group(1)}={REDACTED}", text)
    if "<" in text and any(word in lowered for word in _ELEMENT_WORDS):
        text = _SECRET_ELEMENT.sub(lambda match: f"<{match.group(1)}>{REDACTED}{match.group(2)}", text)
    if any(word in lowered for word in _SCHEME_WORDS):
        text = _BEARER.sub(
            lambda match: f"{match.group(1) or match.group(2) or match.group(3)} {REDACTED}", text
        )
    return text


def _blank_field(match: re.Match[str]) -> str:
    return f"{match['key']}{match['colon']}{match['open']}{REDACTED}{match['close']}"


def redact_structure(data: object) -> object:
    """A copy of parsed JSON (or any nest of mappings and lists) with secrets blanked.

    Values under keys named like secrets (``token``, ``X-Amz-Signature``, ``Policy``,
    ``X-Amz-Credential``...) become ``[REDACTED]``, at any depth; other values are kept
    as they are (text is not scrubbed: see :func:`scrub_text`). Use it before quoting a
    response into an error, a sidecar or a log line.
    """
    if isinstance(data, Mapping):
        return {
            key: REDACTED if _is_sensitive_key(key) and value not in (None, "") else redact_structure(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redact_structure(item) for item in data]
    if isinstance(data, tuple):
        return tuple(redact_structure(item) for item in data)
    return data


def printable(text: str) -> str:
    """``text`` that any output can carry: a file name's undecodable bytes as ``\\xNN``.

    A name that is not UTF-8 reaches Python with surrogate escapes, which a UTF-8
    terminal or file refuses to write.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def _standalone(secret: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9_./-]){re.escape(secret)}(?![A-Za-z0-9_./-])")


def _is_sensitive_key(key: object) -> bool:
    return isinstance(key, str) and _SENSITIVE_KEY.search(key.lower().replace("-", "_")) is not None


class Redactor:
    """A structlog processor that removes secrets from every event.

    Three nets: keys named like secrets are blanked; every value the daemon knows to be
    secret (passwords, header values, tokens as they are issued) is cut out of any text;
    what :func:`scrub_text` recognises (``Bearer ...``, JWTs, quoted secret fields,
    presigned query parameters) is cut out even when not registered.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        # Tokens rotate for as long as the daemon runs: only a credential's recent ones
        # can still turn up in a message, and keeping them all would slow every line.
        self._tokens: dict[str, collections.deque[str]] = {}
        self._patterns: list[tuple[str, re.Pattern[str] | None]] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Register a secret that lasts (a password, an API key)."""
        if len(secret) >= _MIN_SECRET_LENGTH:
            self._secrets.add(secret)
            self._compile()

    def add_token(self, token: str, owner: str) -> None:
        """Register a token as soon as ``owner`` (a credential) obtains it.

        Each owner keeps its most recent tokens; older ones are let go.
        """
        recent = self._tokens.setdefault(owner, collections.deque(maxlen=_RECENT_TOKENS))
        if len(token) >= _MIN_SECRET_LENGTH and token not in recent:
            recent.append(token)
            self._compile()

    def _compile(self) -> None:
        known = self._secrets.union(*self._tokens.values())
        # Longest first: a secret may contain another.
        self._patterns = [
            (secret, None if len(secret) >= _WORD_LIKE_SECRET else _standalone(secret))
            for secret in sorted(known, key=len, reverse=True)
        ]

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            event_dict[key] = self._clean(key, event_dict[key])
        return event_dict

    def scrub(self, text: str) -> str:
        """Return ``text`` with every known and recognisable credential replaced (and printable)."""
        text = printable(text)
        for secret, standalone in self._patterns:
            if secret in text:
                text = (
                    text.replace(secret, REDACTED) if standalone is None else standalone.sub(REDACTED, text)
                )
        return scrub_text(text)

    def _clean(self, key: object, value: Any) -> Any:
        if _is_sensitive_key(key):
            return REDACTED if value not in (None, "") else value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, MutableMapping | dict):
            return {k: self._clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(None, item) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.scrub(bytes(value).decode("utf-8", "replace"))
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, os.PathLike):
            return self.scrub(os.fsdecode(value))
        # Anything else (an exception passed as error=..., an object) is rendered as its
        # repr by every renderer: render it here, so the secrets in it are cut too.
        return self.scrub(repr(value))
