"""Flow G at debug level: no Cognito password, token or presigned signature in the daemon's output.

The daemon runs as a real process with JSON logs at debug level, logs in to Cognito
(moto, server mode) with SRP, asks the gateway stand-in for a presigned POST and
uploads one file to S3. At debug the AWS and HTTP libraries would print Cognito's
answer (with the refresh token) and request URLs (with presigned query strings); the
whole output is searched for every secret the daemon held or was handed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import DaemonProcess, wait_until
from tests.integration import test_flow_g as flow_g
from tests.integration.conftest import CognitoPool
from tests.integration.gateway import Gateway

TIMEOUT = 20.0
# Any JWT (the access token, the id token) in whatever text.
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


def recording_answers(gateway: Gateway) -> list[dict[str, Any]]:
    """Keep every JSON body the gateway sends (the presigned POST grants)."""
    answers: list[dict[str, Any]] = []
    answer = gateway.answer

    def recorded(method: str, target: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        status, body = answer(method, target, authorization)
        answers.append(body)
        return status, body

    gateway.answer = recorded  # type: ignore[method-assign]
    return answers


def test_flow_g_at_debug_level_logs_no_password_token_or_presigned_signature(
    new_cognito_pool: Callable[..., CognitoPool],
    bucket: str,
    s3: Any,
    moto_url: str,
    start_gateway: Callable[[str, str], Gateway],
    folders: dict[str, Path],
    tmp_path: Path,
) -> None:
    """Every line is JSON, and neither Cognito's tokens nor the presigned grant's signature is in any."""
    pool = new_cognito_pool()
    gateway = start_gateway(bucket, pool.region)
    answers = recording_answers(gateway)
    # Flow G's test config, run as a process at debug level with JSON lines.
    config = dataclasses.replace(
        flow_g.config_yaml(pool, gateway, moto_url, folders), log={"level": "debug", "format": "json"}
    ).write(tmp_path / "config.yaml")
    daemon = DaemonProcess(config, tmp_path / "daemon.log", {"COGNITO_PASSWORD": pool.password})
    try:
        daemon.wait_for_log('"daemon_started"', TIMEOUT)
        (folders["drop"] / "match.mp4").write_bytes(b"clip bytes")
        wait_until(lambda: (folders["sent"] / "match.mp4").exists(), TIMEOUT, "match.mp4 archived")
        daemon.signal(signal.SIGTERM)
        assert 0 == daemon.wait(TIMEOUT)
    finally:
        daemon.close()

    assert b"clip bytes" == s3.get_object(Bucket=bucket, Key="video/match.mp4")["Body"].read()
    output = daemon.output
    entries = [json.loads(line) for line in output.splitlines()]
    assert {("timestamp", "level", "event")} == {tuple(entry)[:3] for entry in entries}
    assert {"logged_in", "http_request", "file_delivered"} <= {entry["event"] for entry in entries}

    stored = json.loads((folders["state"] / "tokens" / "clips.json").read_text())
    tokens = {stored["token"], stored["refresh_token"]}
    assert all(tokens)
    grants = [answer["fields"] for answer in answers if "fields" in answer]
    assert 1 == len(grants)
    signatures = {grant["x-amz-signature"] for grant in grants} | {grant["policy"] for grant in grants}
    leaks = sorted(secret for secret in {pool.password, *tokens, *signatures} if secret in output)
    assert [] == leaks
    assert [] == JWT_SHAPED.findall(output)  # the id token is stored nowhere, but is a JWT
