"""Flow G end to end: the real daemon, Cognito and S3 on moto (server mode), the gateway stand-in.

Cognito SRP login -> ``POST {stage}/live/uploadclip/?upload_key=NAME&folder=video`` with
``Authorization: TOK:<AccessToken>`` -> storage POST to the returned S3 URL with the
returned fields, file last -> the object ``video/NAME`` in the bucket. Renewal uses
``REFRESH_TOKEN_AUTH``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.helpers import ConfigYaml, Retry, running_daemon, wait_until
from tests.integration.conftest import CognitoPool
from tests.integration.gateway import Gateway
from uploader_daemon.config import Config

STAGE = "/alphav2"


def config_yaml(
    pool: CognitoPool,
    gateway: Gateway,
    moto_url: str,
    folders: dict[str, Path],
    *,
    before_expiry: str = "5m",
    active_within: str = "30m",
) -> ConfigYaml:
    """Flow G on the test's folders: Cognito on moto, the gateway stand-in under ``STAGE``."""
    auth = {
        "type": "cognito",
        "region": pool.region,
        "user_pool_id": pool.user_pool_id,
        "client_id": pool.client_id,
        "username": pool.username,
        "password": {"env": "COGNITO_PASSWORD"},
        "endpoint_url": moto_url,
        "token": "access",
        "refresh": {"check_every": "1h", "before_expiry": before_expiry, "active_within": active_within},
        "header": "TOK:{token}",
    }
    upload = {
        "type": "gateway_presigned",
        "path": "/live/uploadclip/",
        "folder": "video",
        "upload_key": "{file.name}",
    }
    return ConfigYaml(
        folders,
        "clips",
        gateway.url + STAGE,
        retry=Retry(3, "50ms", "100ms"),
        api_timeout="10s",
        auth=auth,
        upload=upload,
    )


def config_for(
    pool: CognitoPool,
    gateway: Gateway,
    moto_url: str,
    folders: dict[str, Path],
    *,
    before_expiry: str = "5m",
    active_within: str = "30m",
) -> Config:
    config = config_yaml(
        pool, gateway, moto_url, folders, before_expiry=before_expiry, active_within=active_within
    )
    return config.load({"COGNITO_PASSWORD": pool.password})


def wait_for_files(folder: Path, *names: str) -> None:
    wait_until(lambda: all((folder / name).exists() for name in names), message=f"{names} in {folder}")


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_files_land_in_the_bucket_under_the_folder_with_identical_bytes(
    new_cognito_pool: Callable[..., CognitoPool],
    bucket: str,
    s3: Any,
    moto_url: str,
    start_gateway: Callable[[str, str], Gateway],
    folders: dict[str, Path],
) -> None:
    """SRP login once, ``TOK:<access token>`` on each gateway call, each object stored whole."""
    pool = new_cognito_pool()
    gateway = start_gateway(bucket, pool.region)
    contents = {"match-1.mp4": os.urandom(150_000), "match-2.mp4": os.urandom(2_000)}
    with capture_logs() as logs, running_daemon(config_for(pool, gateway, moto_url, folders)):
        for name, data in contents.items():
            (folders["drop"] / name).write_bytes(data)
        wait_for_files(folders["sent"], *contents)

    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(f"video/{name}" for name in contents) == sorted(item["Key"] for item in listed)
    for name, data in contents.items():
        assert data == s3.get_object(Bucket=bucket, Key=f"video/{name}")["Body"].read()
    calls = gateway.calls
    assert sorted((STAGE + "/live/uploadclip/", name, "video", 200) for name in contents) == sorted(
        (call.path, call.query.get("upload_key"), call.query.get("folder"), call.status) for call in calls
    )
    tokens = {call.token for call in calls}
    assert 1 == len(tokens)
    [token] = tokens
    assert token is not None
    assert ("access", pool.client_id) == (claims(token)["token_use"], claims(token)["client_id"])
    assert 1 == len(events(logs, "logged_in"))
    assert [] == list(folders["failed"].iterdir())


class MovableClock:
    """The real wall clock plus an offset a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def test_a_renewal_tick_while_active_refreshes_with_the_refresh_token_and_the_new_token_is_used(
    new_cognito_pool: Callable[..., CognitoPool],
    bucket: str,
    s3: Any,
    moto_url: str,
    start_gateway: Callable[[str, str], Gateway],
    folders: dict[str, Path],
) -> None:
    """``REFRESH_TOKEN_AUTH`` (no second SRP login) gives a new access token, used by the next upload."""
    pool = new_cognito_pool()
    gateway = start_gateway(bucket, pool.region)
    # moto's tokens live 3600 s; the daemon's clock is moved 3400 s on (moto does not check
    # exp), past the renewal point, and one scheduler tick is run by hand.
    config = config_for(pool, gateway, moto_url, folders, active_within="2h")
    clock = MovableClock()
    with capture_logs() as logs, running_daemon(config, clock=clock) as runner:
        (folders["drop"] / "first.mp4").write_bytes(b"first clip")
        wait_for_files(folders["sent"], "first.mp4")
        assert runner.daemon is not None
        credential = runner.daemon.services[0].credential
        refreshes = len(events(logs, "token_refreshed"))
        before = runner.run_coroutine(credential.headers()).headers["Authorization"]
        clock.advance(3400)
        runner.run_coroutine(credential.renew_if_due())
        after = runner.run_coroutine(credential.headers()).headers["Authorization"]
        (folders["drop"] / "second.mp4").write_bytes(b"second clip")
        wait_for_files(folders["sent"], "second.mp4")

    assert len(events(logs, "token_refreshed")) > refreshes
    assert before != after
    second = gateway.calls[-1]
    assert (200, "second.mp4") == (second.status, second.query["upload_key"])
    assert before != second.authorization
    assert second.token is not None
    assert pool.username == pool.client.get_user(AccessToken=second.token)["Username"]
    assert 1 == len(events(logs, "logged_in"))
    assert b"second clip" == s3.get_object(Bucket=bucket, Key="video/second.mp4")["Body"].read()
