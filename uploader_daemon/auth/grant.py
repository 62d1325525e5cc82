"""A token and its absolute expiry, and how the expiry is worked out."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenGrant:
    """A credential obtained by a login or refresh.

    ``expires_at`` is absolute wall time, measured from when the request was *sent*,
    so a slow response can only make the daemon renew early, never late.
    """

    token: str
    expires_at: float
    obtained_at: float
    refresh_token: str | None = None

    def __repr__(self) -> str:
        return f"TokenGrant(expires_at={self.expires_at}, obtained_at={self.obtained_at})"


def expiry_for(token: str, sent_at: float, expires_in: object, default_lifetime: float) -> float:
    """Absolute expiry: ``expires_in`` seconds, else the JWT ``exp`` claim, else the default.

    Raises ``ValueError`` when ``expires_in`` is present but not a positive, finite number.
    """
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
            raise ValueError(f"expires_in must be a number of seconds, not {type(expires_in).__name__}")
        try:
            seconds = float(expires_in)
        except ValueError:
            raise ValueError(f"expires_in must be a number of seconds, not {expires_in!r}") from None
        # NaN would make every check "expired" (a login per request), infinity never.
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"expires_in must be a positive number of seconds, not {expires_in!r}")
        return sent_at + seconds
    exp = jwt_expiry(token)
    if exp is not None:
        return exp
    return sent_at + default_lifetime


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying the signature; ``None`` if absent.

    The daemon does not need to trust the claim: it only decides when to renew, and
    the API still checks the token on every request.
    """
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None


def jwt_claims(token: str) -> dict[str, object]:
    """The payload of a JWT-shaped token (unverified), or ``{}`` for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}
