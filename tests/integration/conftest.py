"""Fixtures for the end-to-end flow tests: emulators with chosen settings, moto, the gateway.

moto runs in server mode on 127.0.0.1 (one per session: it takes a second to start) and
plays both AWS Cognito (SRP login, ``REFRESH_TOKEN_AUTH``) and S3 (presigned POST) for
flow G. Every test gets its own user pool and bucket, so tests never share state.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.integration.gateway import Gateway, cognito_client, s3_client
from uploader_daemon.emulator import Emulator, EmulatorSettings

COGNITO_USER = "uploader"
COGNITO_PASSWORD = "Cognito-Passw0rd!"


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start the project's emulator with the given ``EmulatorSettings`` fields; stopped afterwards."""
    started: list[Emulator] = []

    def start(**settings: Any) -> Emulator:
        storage_dir = tmp_path / f"server-{len(started)}"
        settings = {"users": {"uploader": PASSWORD}, **settings}
        emulator = Emulator(EmulatorSettings(storage_dir=storage_dir, **settings))
        started.append(emulator.start())
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto in server mode on 127.0.0.1 and a free port: Cognito user pools and S3."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class CognitoPool:
    """A user pool with an SRP-capable app client and one user with a permanent password."""

    region: str
    user_pool_id: str
    client_id: str
    username: str
    password: str
    client: Any  # boto3 cognito-idp client on moto


@pytest.fixture
def new_cognito_pool(moto_url: str) -> Callable[..., CognitoPool]:
    """Create a fresh user pool in ``region`` (pool ids carry it: ``eu-west-1_...``)."""

    def create(region: str = "us-east-1") -> CognitoPool:
        client = cognito_client(moto_url, region)
        pool_id = client.create_user_pool(PoolName=f"pool-{uuid.uuid4().hex[:8]}")["UserPool"]["Id"]
        client_id = client.create_user_pool_client(
            UserPoolId=pool_id,
            ClientName="uploader-daemon",
            ExplicitAuthFlows=["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
        client.admin_create_user(UserPoolId=pool_id, Username=COGNITO_USER, MessageAction="SUPPRESS")
        # Without a permanent password SRP ends in a NEW_PASSWORD_REQUIRED challenge.
        client.admin_set_user_password(
            UserPoolId=pool_id, Username=COGNITO_USER, Password=COGNITO_PASSWORD, Permanent=True
        )
        return CognitoPool(region, pool_id, client_id, COGNITO_USER, COGNITO_PASSWORD, client)

    return create


@pytest.fixture
def s3(moto_url: str) -> Any:
    """A boto3 S3 client on moto (path-style addressing, as the gateway signs)."""
    return s3_client(moto_url)


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket on moto."""
    name = f"clips-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def start_gateway(moto_url: str) -> Iterator[Callable[[str, str], Gateway]]:
    """Start the API Gateway stand-in for a bucket and a Cognito region; stopped afterwards."""
    started: list[Gateway] = []

    def start(bucket: str, cognito_region: str) -> Gateway:
        gateway = Gateway(moto_url, bucket, cognito_region)
        started.append(gateway.__enter__())
        return gateway

    yield start
    for gateway in started:
        gateway.__exit__(None, None, None)
