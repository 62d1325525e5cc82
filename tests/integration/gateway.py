"""A tiny stand-in for flow G's API Gateway: Cognito-checked, answers S3 presigned POSTs.

``POST {stage}/live/uploadclip/?upload_key=NAME&folder=FOLDER`` with
``Authorization: TOK:<access token>``. The token is checked against Cognito (moto) with
``GetUser``, as a Cognito authorizer would; anything else gets 401. The answer is
``{"url": ..., "fields": ...}`` from boto3's ``generate_presigned_post`` for the object
``FOLDER/NAME``, path-style, so the URL is ``http://127.0.0.1:PORT/bucket`` on moto.

Every call is recorded (path, query, Authorization header, whether it was accepted) so a
test can assert which token the daemon used and that only gateway calls carried it.
"""

from __future__ import annotations

import json
import threading
import types
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ROUTE_SUFFIX = "/live/uploadclip/"
TOKEN_PREFIX = "TOK:"
# moto accepts any key; explicit ones keep boto3 from looking for real credentials.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


def cognito_client(moto_url: str, region: str = "us-east-1") -> Any:
    """A boto3 cognito-idp client on moto."""
    return boto3.client(
        "cognito-idp",
        endpoint_url=moto_url,
        region_name=region,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def s3_client(moto_url: str) -> Any:
    """A boto3 S3 client on moto that signs presigned POSTs with SigV4, path-style."""
    return boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@dataclass(frozen=True)
class GatewayCall:
    """One request the gateway answered."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    status: int

    @property
    def token(self) -> str | None:
        """The access token after ``TOK:``, if the header had that form."""
        return token_in(self.authorization)


def token_in(authorization: str | None) -> str | None:
    """The access token of an ``Authorization: TOK:<token>`` value, else ``None``."""
    if authorization is None or not authorization.startswith(TOKEN_PREFIX):
        return None
    return authorization[len(TOKEN_PREFIX) :] or None


class Gateway:
    """The gateway on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self, moto_url: str, bucket: str, cognito_region: str = "us-east-1") -> None:
        self.bucket = bucket
        self._cognito = cognito_client(moto_url, cognito_region)
        self._s3 = s3_client(moto_url)
        self._calls: list[GatewayCall] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="gateway", daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no stage: the daemon's base_url adds one)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def calls(self) -> list[GatewayCall]:
        """A copy of every call so far, in the order answered."""
        with self._lock:
            return list(self._calls)

    def __enter__(self) -> Gateway:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def answer(self, method: str, target: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        """Judge one request; returns the status and the JSON body to send."""
        split = urlsplit(target)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        status, body = self._judge(method, split.path, query, authorization)
        with self._lock:
            self._calls.append(GatewayCall(method, split.path, query, authorization, status))
        return status, body

    def _judge(
        self, method: str, path: str, query: dict[str, str], authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        if method != "POST" or not path.endswith(ROUTE_SUFFIX):
            return 404, {"message": "Not Found"}
        token = token_in(authorization)
        if not token or not self._valid(token):
            return 401, {"message": "Unauthorized"}
        name, folder = query.get("upload_key", ""), query.get("folder", "")
        if not name or not folder:
            return 400, {"message": "upload_key and folder are required"}
        post = self._s3.generate_presigned_post(Bucket=self.bucket, Key=f"{folder}/{name}", ExpiresIn=300)
        return 200, {"url": post["url"], "fields": post["fields"]}

    def _valid(self, access_token: str) -> bool:
        try:
            self._cognito.get_user(AccessToken=access_token)
        except ClientError:
            return False
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], gateway: Gateway) -> None:
        self.gateway = gateway
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: calls are recorded instead."""

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        assert isinstance(self.server, _Server)
        status, body = self.server.gateway.answer(self.command, self.path, self.headers.get("Authorization"))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
