"""CognitoProvider against a real Cognito peer: moto in server mode on 127.0.0.1 (flow G, step 1).

moto accepts any password over SRP, so wrong passwords are not tested here; everything
else (SRP, ``REFRESH_TOKEN_AUTH``, ``SECRET_HASH``, unconfirmed users) is moto's real
protocol handling.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import FakeClock
from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.cognito import CognitoProvider
from uploader_daemon.auth.grant import TokenGrant, jwt_claims
from uploader_daemon.auth.managed import ManagedTokenCredential
from uploader_daemon.auth.store import TokenStore
from uploader_daemon.config.auth import CognitoAuth
from uploader_daemon.config.schema import RetrySettings
from uploader_daemon.errors import TokenRequestError
from uploader_daemon.redaction import Redactor

REGION = "us-east-1"
PASSWORD = "Corr3ct-Horse-Battery!"
START = 1_700_000_000.0
FLOWS = ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]


@dataclass(frozen=True)
class UserPool:
    """A moto user pool with its app clients and users."""

    endpoint: str
    pool_id: str
    client_id: str
    secret_client_id: str
    client_secret: str
    email_pool_id: str
    email_client_id: str
    email_client_secret: str


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1 and a free port, stopped after this module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pool(moto_endpoint: str) -> UserPool:
    """Pools, app clients and users, created as an admin would with the AWS API."""
    admin: Any = boto3.client(
        "cognito-idp",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def client(pool_id: str, name: str, *, secret: bool) -> dict[str, str]:
        created: dict[str, str] = admin.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName=name,
            GenerateSecret=secret,
            ExplicitAuthFlows=FLOWS,
        )["UserPoolClient"]
        return created

    def user(pool_id: str, username: str, *, permanent: bool = True) -> None:
        admin.admin_create_user(UserPoolId=pool_id, Username=username, TemporaryPassword="Temp-Passw0rd!")
        if permanent:  # without this, SRP ends in a NEW_PASSWORD_REQUIRED challenge
            admin.admin_set_user_password(
                UserPoolId=pool_id, Username=username, Password=PASSWORD, Permanent=True
            )

    pool_id = admin.create_user_pool(PoolName="uploads")["UserPool"]["Id"]
    public = client(pool_id, "daemon", secret=False)
    confidential = client(pool_id, "daemon-with-secret", secret=True)
    user(pool_id, "alice")
    user(pool_id, "bob", permanent=False)

    # Sign-in with the email address: Cognito's internal user name is then a UUID.
    email_pool = admin.create_user_pool(PoolName="by-email", UsernameAttributes=["email"])
    email_pool_id = email_pool["UserPool"]["Id"]
    email_client = client(email_pool_id, "daemon-with-secret", secret=True)
    user(email_pool_id, "carol@example.com")

    return UserPool(
        endpoint=moto_endpoint,
        pool_id=pool_id,
        client_id=public["ClientId"],
        secret_client_id=confidential["ClientId"],
        client_secret=confidential["ClientSecret"],
        email_pool_id=email_pool_id,
        email_client_id=email_client["ClientId"],
        email_client_secret=email_client["ClientSecret"],
    )


def settings(pool: UserPool, **overrides: Any) -> CognitoAuth:
    """``auth: {type: cognito}`` for alice on the public app client, with keys replaced."""
    raw: dict[str, Any] = {
        "type": "cognito",
        "region": REGION,
        "user_pool_id": pool.pool_id,
        "client_id": pool.client_id,
        "username": "alice",
        "password": {"env": "COGNITO_PASSWORD"},
        "endpoint_url": pool.endpoint,
        **overrides,
    }
    return CognitoAuth.model_validate(raw, context={"environ": {"COGNITO_PASSWORD": PASSWORD}})


def login(auth: CognitoAuth, clock: FakeClock | None = None) -> TokenGrant:
    return asyncio.run(CognitoProvider(auth, clock or FakeClock(START), timeout=5).login())


def refresh(auth: CognitoAuth, grant: TokenGrant, clock: FakeClock | None = None) -> TokenGrant:
    return asyncio.run(CognitoProvider(auth, clock or FakeClock(START), timeout=5).refresh(grant))


def request_error(call: Any) -> TokenRequestError:
    with pytest.raises(TokenRequestError) as caught:
        call()
    return caught.value


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_login_returns_an_access_token_a_refresh_token_and_an_expiry(pool: UserPool) -> None:
    """SRP login gives the access token, its refresh token, and ``ExpiresIn`` from the send time."""
    clock = FakeClock(START)

    grant = login(settings(pool), clock)

    claims = jwt_claims(grant.token)
    assert ("access", "alice") == (claims["token_use"], claims["username"])
    assert grant.refresh_token
    assert (START + 3600, START) == (grant.expires_at, grant.obtained_at)


def test_refresh_returns_a_new_access_token(pool: UserPool) -> None:
    """``REFRESH_TOKEN_AUTH`` exchanges the refresh token for a new access token."""
    auth = settings(pool)
    first = login(auth)
    clock = FakeClock(START + 3400)

    renewed = refresh(auth, first, clock)

    assert first.token != renewed.token
    assert "access" == jwt_claims(renewed.token)["token_use"]
    assert START + 3400 + 3600 == renewed.expires_at
    assert renewed.refresh_token is None  # Cognito sends none: the credential keeps the old one


def test_token_id_picks_the_id_token(pool: UserPool) -> None:
    """``token: id`` presents the IdToken (for APIs whose authorizer wants it)."""
    auth = settings(pool, token="id")

    grant = login(auth)
    renewed = refresh(auth, grant)

    assert ("id", "id") == (jwt_claims(grant.token)["token_use"], jwt_claims(renewed.token)["token_use"])
    assert "alice" == jwt_claims(grant.token)["cognito:username"]


@pytest.mark.parametrize("token", ["access", "id"])
def test_an_app_client_with_a_secret_logs_in_and_refreshes(pool: UserPool, token: str) -> None:
    """With ``client_secret`` the daemon sends the ``SECRET_HASH`` Cognito requires."""
    auth = settings(pool, client_id=pool.secret_client_id, client_secret=pool.client_secret, token=token)

    grant = login(auth)
    renewed = refresh(auth, grant)

    assert grant.token != renewed.token


@pytest.mark.parametrize("token", ["access", "id"])
def test_a_secret_client_refreshes_for_users_who_sign_in_with_their_email(pool: UserPool, token: str) -> None:
    """The refresh ``SECRET_HASH`` uses Cognito's internal user name, not the configured alias."""
    auth = settings(
        pool,
        user_pool_id=pool.email_pool_id,
        client_id=pool.email_client_id,
        client_secret=pool.email_client_secret,
        username="carol@example.com",
        token=token,
    )

    grant = login(auth)
    renewed = refresh(auth, grant)

    assert grant.token != renewed.token


def test_a_secret_client_without_the_secret_is_rejected(pool: UserPool) -> None:
    """Forgetting ``client_secret`` is a credentials problem an admin must fix, not a retry."""
    error = request_error(lambda: login(settings(pool, client_id=pool.secret_client_id)))

    assert error.rejected


def test_a_user_without_a_permanent_password_is_rejected_with_a_helpful_message(pool: UserPool) -> None:
    """An unconfirmed user (temporary password) gets a sentence saying what to do."""
    error = request_error(lambda: login(settings(pool, username="bob")))

    assert error.rejected
    assert "admin-set-user-password --permanent" in str(error)
    assert PASSWORD not in str(error)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"username": "nobody"}, "UserNotFoundException"),
        ({"client_id": "no-such-client"}, "ResourceNotFoundException"),
    ],
    ids=["unknown-user", "unknown-client"],
)
def test_unknown_users_and_app_clients_are_rejected(
    pool: UserPool, overrides: dict[str, str], code: str
) -> None:
    """Retrying cannot fix a wrong name: the failure is marked as a refusal."""
    error = request_error(lambda: login(settings(pool, **overrides)))

    assert error.rejected
    assert code in str(error)


def test_a_revoked_refresh_token_is_rejected(pool: UserPool) -> None:
    """A refresh token Cognito no longer knows means "log in with the password"."""
    forged = TokenGrant("not-a-token", START + 3600, START, refresh_token="revoked-refresh-token")

    error = request_error(lambda: refresh(settings(pool), forged))

    assert error.rejected
    assert "NotAuthorizedException" in str(error)


def test_refresh_without_a_refresh_token_is_rejected_without_a_request(pool: UserPool) -> None:
    """A grant that never had a refresh token (or lost it) falls back to a login."""
    error = request_error(lambda: refresh(settings(pool), TokenGrant("t", START + 3600, START)))

    assert error.rejected


@pytest.mark.parametrize("call", ["login", "refresh"])
def test_an_unreachable_endpoint_is_a_transient_failure(pool: UserPool, closed_port: int, call: str) -> None:
    """Nothing listening: not the credentials' fault, so the failure is retried later."""
    auth = settings(pool, endpoint_url=f"http://127.0.0.1:{closed_port}")
    held = TokenGrant("t", START + 3600, START, refresh_token="refresh-token")

    error = request_error(lambda: login(auth) if call == "login" else refresh(auth, held))

    assert (False, None) == (error.rejected, error.status)
    assert "127.0.0.1" in str(error)


def test_the_credential_keeps_refreshing_with_the_original_refresh_token(
    pool: UserPool, tmp_path: Path
) -> None:
    """Across refreshes (which carry no new refresh token) and a restart, renewal keeps working."""
    clock = FakeClock(START)
    activity = ApiActivity(clock)
    auth = settings(pool)

    def credential() -> ManagedTokenCredential:
        return ManagedTokenCredential(
            target="gateway",
            provider=CognitoProvider(auth, clock, timeout=5),
            store=TokenStore(tmp_path, "gateway", "cognito alice"),
            clock=clock,
            activity=activity,
            renewal=auth.refresh,
            retry=RetrySettings(),
            header_name=auth.header_name,
            header_template="TOK:{token}",
            expiry_margin=auth.expiry_margin,
            redactor=Redactor(),
        )

    current = credential()
    tokens = [asyncio.run(current.headers()).headers["Authorization"]]
    for _ in range(2):
        clock.advance(3600 - 200)
        activity.touch()
        asyncio.run(current.renew_if_due())
        tokens.append(asyncio.run(current.headers()).headers["Authorization"])
    restarted = credential()
    restarted.restore()
    clock.advance(3600 - 200)
    activity.touch()
    asyncio.run(restarted.renew_if_due())
    tokens.append(asyncio.run(restarted.headers()).headers["Authorization"])

    assert 4 == len(set(tokens))
    assert all(token.startswith("TOK:eyJ") for token in tokens)
    assert clock.now() + 3600 == restarted.expires_at
