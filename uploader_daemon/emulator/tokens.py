"""Credentials the emulator hands out: opaque bearer tokens (flow T) and JWTs (flow C).

Every issued credential is remembered with its expiry so the emulator can tell a
client that used an expired or revoked token apart from one that sent garbage; the
counters built on that distinction are what the daemon's tests assert on.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any


class TokenStatus(enum.Enum):
    """What a presented credential turned out to be."""

    VALID = "valid"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass
class IssuedToken:
    """A credential the emulator issued: who for, which flow, and until when."""

    flow: str
    username: str
    expires_at: float
    revoked: bool = False


class TokenRegistry:
    """Issued credentials by their exact string.

    Not thread-safe on its own: the emulator calls it with its state lock held.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, IssuedToken] = {}

    def issue_opaque(self, flow: str, username: str, expires_at: float) -> str:
        """Create, remember and return a random opaque token."""
        token = secrets.token_urlsafe(32)
        self._tokens[token] = IssuedToken(flow, username, expires_at)
        return token

    def remember(self, token: str, flow: str, username: str, expires_at: float) -> None:
        """Remember a credential built elsewhere (a JWT)."""
        self._tokens[token] = IssuedToken(flow, username, expires_at)

    def check(self, token: str, flow: str, now: float) -> tuple[TokenStatus, IssuedToken | None]:
        """Classify ``token`` for ``flow`` at time ``now``.

        Expiry is checked before revocation: a token that is both was dead by the clock
        before anyone revoked it, and a client that sends it has a timing bug.
        """
        issued = self._tokens.get(token)
        if issued is None or issued.flow != flow:
            return TokenStatus.UNKNOWN, None
        if now >= issued.expires_at:
            return TokenStatus.EXPIRED, issued
        if issued.revoked:
            return TokenStatus.REVOKED, issued
        return TokenStatus.VALID, issued

    def revoke_all(self) -> None:
        """Make every credential issued so far invalid; later ones are unaffected."""
        for issued in self._tokens.values():
            issued.revoked = True


class InvalidJwt(ValueError):
    """A JWT is malformed or its signature does not verify."""


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(padded.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError) as error:
        raise InvalidJwt("a JWT segment is not base64url") from error


def numeric_date(value: float) -> int | float:
    """A JWT NumericDate: an integer when the value is whole, as issuers usually send."""
    return int(value) if float(value).is_integer() else value


def encode_jwt(claims: dict[str, Any], secret: bytes) -> str:
    """Return an HS256-signed compact JWT carrying ``claims``."""
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (
        _b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url_encode(signature)


def decode_jwt(token: str, secret: bytes) -> dict[str, Any]:
    """Verify an HS256 JWT's signature and return its claims (expiry is not checked).

    Raises:
        InvalidJwt: the token is malformed, not HS256, or its signature is wrong.
    """
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidJwt("a JWT has three dot-separated segments")
    header_segment, claims_segment, signature_segment = segments
    try:
        header = json.loads(_b64url_decode(header_segment))
        claims = json.loads(_b64url_decode(claims_segment))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidJwt("a JWT segment is not JSON") from error
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise InvalidJwt("only HS256 JWTs are accepted")
    if not isinstance(claims, dict):
        raise InvalidJwt("the JWT claims are not a JSON object")
    signing_input = f"{header_segment}.{claims_segment}".encode("ascii")
    expected = hmac.new(secret, signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64url_decode(signature_segment)):
        raise InvalidJwt("the JWT signature does not verify")
    return claims
