"""Where a token's absolute expiry comes from: ``expires_in``, else the JWT ``exp``, else a default."""

from __future__ import annotations

import base64
import json

import pytest

from uploader_daemon.auth.grant import TokenGrant, expiry_for, jwt_claims, jwt_expiry

SENT_AT = 1_700_000_000.0
DEFAULT_LIFETIME = 3600.0


def unsigned_jwt(claims: object, header: object = None) -> str:
    """A JWT-shaped token (``header.payload.``) built by hand, with no signature."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header or {'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def test_expires_in_seconds_are_counted_from_when_the_request_was_sent() -> None:
    """A numeric ``expires_in`` is added to the send time."""
    assert SENT_AT + 3600 == expiry_for("opaque", SENT_AT, 3600, DEFAULT_LIFETIME)


@pytest.mark.parametrize("expires_in", ["3600", "3600.0", 3600.0, " 3600 "])
def test_expires_in_may_be_a_numeric_string_or_a_float(expires_in: object) -> None:
    """APIs that send the lifetime as a string or a float are understood."""
    assert SENT_AT + 3600 == expiry_for("opaque", SENT_AT, expires_in, DEFAULT_LIFETIME)


def test_expires_in_wins_over_the_jwt_exp_claim() -> None:
    """When the response states a lifetime, the token's own claim is not consulted."""
    token = unsigned_jwt({"exp": SENT_AT + 60})
    assert SENT_AT + 3600 == expiry_for(token, SENT_AT, 3600, DEFAULT_LIFETIME)


def test_without_expires_in_the_jwt_exp_claim_is_the_expiry() -> None:
    """Flow C: no ``expires_in``, so the JWT's ``exp`` (read unverified) is used as is."""
    token = unsigned_jwt({"sub": "uploader", "exp": 1_700_000_900})
    assert 1_700_000_900.0 == expiry_for(token, SENT_AT, None, DEFAULT_LIFETIME)


def test_without_expires_in_or_exp_the_default_lifetime_applies() -> None:
    """An opaque token and no lifetime: the configured default counts from the send time."""
    assert SENT_AT + DEFAULT_LIFETIME == expiry_for("opaque-token", SENT_AT, None, DEFAULT_LIFETIME)


def test_a_jwt_without_exp_falls_back_to_the_default_lifetime() -> None:
    """A JWT with no ``exp`` claim is treated like an opaque token."""
    token = unsigned_jwt({"sub": "uploader"})
    assert SENT_AT + DEFAULT_LIFETIME == expiry_for(token, SENT_AT, None, DEFAULT_LIFETIME)


@pytest.mark.parametrize(
    "expires_in",
    [
        -5,
        0,
        "-5",
        "soon",
        "",
        True,
        [3600],
        {"seconds": 3600},
        "nan",
        "inf",
        float("nan"),
        float("inf"),
        "1e400",
    ],
)
def test_an_unusable_expires_in_is_refused(expires_in: object) -> None:
    """Negative, zero, non-numeric and non-finite lifetimes raise ``ValueError``."""
    with pytest.raises(ValueError, match="expires_in"):
        expiry_for("opaque", SENT_AT, expires_in, DEFAULT_LIFETIME)


def test_jwt_expiry_reads_the_exp_claim_without_checking_the_signature() -> None:
    """The signature part may be anything: only the payload is decoded."""
    token = unsigned_jwt({"exp": 1_700_000_123}) + "not-a-real-signature"
    assert 1_700_000_123.0 == jwt_expiry(token)


def test_jwt_expiry_decodes_payloads_that_need_base64_padding() -> None:
    """JWT segments drop their ``=`` padding; every payload length still decodes."""
    for length in range(4):
        token = unsigned_jwt({"exp": 1_700_000_000, "pad": "x" * length})
        assert 1_700_000_000.0 == jwt_expiry(token)


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token",
        "a.b",
        "a.b.c.d",
        "header.!!!not-base64!!!.sig",
        "header." + base64.urlsafe_b64encode(b"not json").decode() + ".sig",
        "header." + base64.urlsafe_b64encode(b"\xff\xfe\x00").decode() + ".sig",
        unsigned_jwt(["a", "list"]),
        unsigned_jwt({"exp": "1700000000"}),
        unsigned_jwt({"exp": True}),
        unsigned_jwt({"exp": None}),
        unsigned_jwt({"exp": float("inf")}),
    ],
)
def test_jwt_expiry_is_none_for_anything_without_a_numeric_exp(token: str) -> None:
    """Tokens that are not JWTs, or whose ``exp`` is not a finite number, have no JWT expiry."""
    assert jwt_expiry(token) is None


def test_jwt_claims_returns_the_whole_payload() -> None:
    """The claims are available to other readers (Cognito's ``username``)."""
    assert {"username": "alice", "exp": 1} == jwt_claims(unsigned_jwt({"username": "alice", "exp": 1}))


def test_a_grant_never_shows_its_token_in_its_repr() -> None:
    """A grant logged or shown in a traceback does not leak the token or the refresh token."""
    grant = TokenGrant(token="secret-token", expires_at=2.0, obtained_at=1.0, refresh_token="secret-refresh")
    assert "secret" not in repr(grant)
