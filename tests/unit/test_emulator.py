"""The local API emulator: its streaming multipart parser and every endpoint, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import ssl
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from uploader_daemon.emulator import (
    COUNTER_NAMES,
    Emulator,
    EmulatorSettings,
    ScriptedResponse,
)
from uploader_daemon.emulator.multipart import (
    MultipartError,
    MultipartForm,
    boundary_from_content_type,
    parse_header_parameters,
    parse_multipart,
)

START = 1_700_000_000.0
BOUNDARY = "xYzBoUnDaRy"
R_HEADERS = {"app-key": "app-key-123", "user-token": "user-token-456"}
CREDENTIALS = {"username": "uploader", "password": "s3cret"}


class FakeClock:
    """A wall clock that moves only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Part = tuple[str, str | None, bytes]


def build_multipart(parts: list[Part], boundary: str = BOUNDARY) -> bytes:
    """Encode (name, filename or None, content) parts in order, as a client would."""
    body = bytearray()
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body)


def parse_bytes(body: bytes, spool: Path, chunk_size: int = 65536, **limits: int) -> MultipartForm:
    """Parse an in-memory body with the streaming parser."""
    stream = io.BytesIO(body)
    return parse_multipart(stream.read, len(body), BOUNDARY, spool, chunk_size=chunk_size, **limits)


def jwt_claims(token: str) -> dict[str, Any]:
    """Read a JWT's claims without verifying it, as the daemon does."""
    segment = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return claims


@pytest.fixture
def clock() -> FakeClock:
    """The emulator's injected wall clock."""
    return FakeClock()


@pytest.fixture
def make_emulator(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., Emulator]]:
    """Start emulators with settings overrides; all are stopped at the end of the test."""
    started: list[Emulator] = []

    def make(**overrides: Any) -> Emulator:
        settings = EmulatorSettings(storage_dir=tmp_path / "storage", clock=clock, **overrides)
        emulator = Emulator(settings).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    """A running emulator with default settings and the fake clock."""
    return make_emulator()


@pytest.fixture(scope="session")
def tls_context() -> ssl.SSLContext:
    """One TLS context for every client: building one per client costs ~50 ms, per test."""
    return ssl.create_default_context()


@pytest.fixture
def new_client(tls_context: ssl.SSLContext) -> Iterator[Callable[[Emulator], httpx.Client]]:
    """Make HTTP clients for an emulator; all are closed at the end of the test."""
    clients: list[httpx.Client] = []

    def make(emulator: Emulator) -> httpx.Client:
        http = httpx.Client(base_url=emulator.base_url, timeout=5.0, verify=tls_context)
        clients.append(http)
        return http

    yield make
    for http in clients:
        http.close()


@pytest.fixture
def client(emulator: Emulator, new_client: Callable[[Emulator], httpx.Client]) -> httpx.Client:
    """An HTTP client for the default emulator."""
    return new_client(emulator)


def t_login(client: httpx.Client) -> str:
    """Log in to flow T and return the access token."""
    response = client.post("/auth/login", json=CREDENTIALS)
    assert 200 == response.status_code
    token: str = response.json()["access_token"]
    return token


def c_login(client: httpx.Client) -> str:
    """Log in to flow C and return the JWT."""
    response = client.post("/api/auth/login", json=CREDENTIALS)
    assert 200 == response.status_code
    token: str = response.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def create_document(
    client: httpx.Client, name: str = "report.pdf", size: int = 5
) -> tuple[int, dict[str, str]]:
    """Create an R document; return its id and presigned fields."""
    response = client.post(
        "/documents",
        params={"task_id": "77"},
        headers=R_HEADERS,
        json={"document": {"data_file_name": name, "data_file_size": size, "warning_duplicate": False}},
    )
    assert 200 == response.status_code
    body = response.json()
    return body["id"], body["fields"]


def request_presigned(client: httpx.Client, name: str = "scan.pdf") -> dict[str, Any]:
    """Ask flow P for an upload slot; return the whole answer."""
    response = client.post(
        "/upload", json={"file_name": name, "extension": "pdf", "len": 5, "type": "application/pdf"}
    )
    assert 200 == response.status_code
    body: dict[str, Any] = response.json()
    return body


def post_storage(
    client: httpx.Client,
    url: str,
    fields: dict[str, str],
    content: bytes = b"hello",
    filename: str = "report.pdf",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A presigned POST the way the daemon sends it: fields first, the file last."""
    parts: list[Part] = [(name, None, value.encode()) for name, value in fields.items()]
    parts.append(("file", filename, content))
    return client.post(
        url,
        content=build_multipart(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})},
    )


# --- the streaming multipart parser ------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 13, 64, 65536])
def test_parser_reads_fields_and_file_in_order_whatever_the_read_size(
    tmp_path: Path, chunk_size: int
) -> None:
    """Fields, file content and part order survive any chunking of the body."""
    # Content that looks like a delimiter but is not one: CRLF, dashes, a boundary prefix.
    content = b"line one\r\n--xYzBoUnD\r\n\r\n--\r\n-- xYzBoUnDaRx\r\nend\r\n"
    body = build_multipart(
        [("title", None, b"a title"), ("file", "data.bin", content), ("after", None, b"tail")]
    )

    form = parse_bytes(body, tmp_path, chunk_size=chunk_size)

    assert {"title": "a title", "after": "tail"} == form.fields
    assert ("title", "file", "after") == form.part_order
    (part,) = form.files
    assert ("file", "data.bin") == (part.name, part.filename)
    assert content == part.path.read_bytes()
    assert len(content) == part.size
    assert hashlib.sha256(content).hexdigest() == part.sha256


def test_parser_finds_a_delimiter_split_at_every_possible_position(tmp_path: Path) -> None:
    """A delimiter straddling two reads is recognised wherever the split falls."""
    content = b"\r\n" * 5 + b"payload" + b"-" * 20
    body = build_multipart([("file", "f.txt", content), ("x", None, b"1")])
    for split in range(1, len(body)):
        chunks = iter([body[:split], body[split:]])
        leftover = bytearray()

        def read(size: int, chunks: Iterator[bytes] = chunks, leftover: bytearray = leftover) -> bytes:
            if not leftover:
                leftover += next(chunks, b"")
            data = bytes(leftover[:size])
            del leftover[:size]
            return data

        form = parse_multipart(read, len(body), BOUNDARY, tmp_path)
        assert content == form.files[0].path.read_bytes(), f"split at {split}"
        assert {"x": "1"} == form.fields
        form.discard()


def test_parser_reads_quoted_names_with_semicolons_escapes_and_extended_filenames(tmp_path: Path) -> None:
    """Quoted parameters may hold ';', '=' and escaped quotes; filename* wins over filename."""
    body = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="a;b=c"\r\n\r\n'
        "one\r\n"
        f"--{BOUNDARY}\r\n"
        'content-disposition: form-data; filename="we\\"ird; name.txt"; name="upload"\r\n'
        "Content-Type: text/plain\r\n\r\n"
        "two\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name=plain; filename="fallback.txt"; '
        "filename*=UTF-8''na%C3%AFve%20file.txt\r\n\r\n"
        "three\r\n"
        f"--{BOUNDARY}--"
    ).encode()

    form = parse_bytes(body, tmp_path)

    assert {"a;b=c": "one"} == form.fields
    expected = [("upload", 'we"ird; name.txt', "text/plain"), ("plain", "naïve file.txt", None)]
    assert expected == [(part.name, part.filename, part.content_type) for part in form.files]
    assert ("a;b=c", "upload", "plain") == form.part_order


def test_parser_keeps_raw_utf8_filenames(tmp_path: Path) -> None:
    """Browsers and httpx send non-ASCII filenames as raw UTF-8 in the part header."""
    body = build_multipart([("file", "relatório.pdf", b"x")])
    assert "relatório.pdf" == parse_bytes(body, tmp_path).files[0].filename


def test_parser_ignores_preamble_and_epilogue(tmp_path: Path) -> None:
    """Text before the first and after the last delimiter is not part of the form."""
    body = b"preamble text\r\n" + build_multipart([("a", None, b"1")]) + b"epilogue --xYzBoUnDaRy\r\n"
    form = parse_bytes(body, tmp_path, chunk_size=5)
    assert {"a": "1"} == form.fields


def test_parser_accepts_empty_files_and_empty_fields(tmp_path: Path) -> None:
    """A zero-byte file and an empty field are parts like any other."""
    form = parse_bytes(build_multipart([("empty", None, b""), ("file", "", b"")]), tmp_path)
    assert {"empty": ""} == form.fields
    (part,) = form.files
    assert (0, hashlib.sha256(b"").hexdigest(), "") == (part.size, part.sha256, part.filename)


def test_parser_never_reads_past_the_body(tmp_path: Path) -> None:
    """The next request on a keep-alive connection is left unread."""
    body = build_multipart([("a", None, b"1")])
    stream = io.BytesIO(body + b"GET /next HTTP/1.1\r\n")
    parse_multipart(stream.read, len(body), BOUNDARY, tmp_path, chunk_size=4)
    assert b"GET /next HTTP/1.1\r\n" == stream.read()


def test_parser_rejects_a_truncated_body_and_removes_its_spool_files(tmp_path: Path) -> None:
    """A body that ends early is an error, and half-written files are deleted."""
    body = build_multipart([("file", "f.bin", b"x" * 1000)])
    stream = io.BytesIO(body[:500])
    with pytest.raises(MultipartError, match="ended after 500"):
        parse_multipart(stream.read, len(body), BOUNDARY, tmp_path, chunk_size=64)
    assert [] == list(tmp_path.iterdir())


def test_parser_rejects_a_body_without_the_closing_delimiter(tmp_path: Path) -> None:
    """Content-Length worth of bytes without the final delimiter is not a complete form."""
    body = build_multipart([("file", "f.bin", b"abc")]).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    with pytest.raises(MultipartError, match="closing multipart boundary"):
        parse_bytes(body, tmp_path)
    assert [] == list(tmp_path.iterdir())


def test_parser_rejects_a_text_field_over_the_memory_limit(tmp_path: Path) -> None:
    """Only small fields are kept in memory; a big one must be sent as a file."""
    body = build_multipart([("big", None, b"x" * 2000)])
    with pytest.raises(MultipartError, match="'big' is over 1000 bytes"):
        parse_bytes(body, tmp_path, max_field_bytes=1000)


def test_parser_rejects_a_part_without_content_disposition(tmp_path: Path) -> None:
    """Every form-data part must say its name."""
    body = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    with pytest.raises(MultipartError, match="no Content-Disposition"):
        parse_bytes(body, tmp_path)


def test_parser_memory_stays_bounded_for_a_large_file(tmp_path: Path) -> None:
    """A 16 MiB upload is parsed with a peak allocation far below its size."""
    size = 16 * 1024 * 1024
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'.encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = bytes(range(256)) * 256
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)

    def generate() -> Iterator[bytes]:
        yield head
        for _ in range(size // len(block)):
            yield block
        yield tail

    pending = generate()
    leftover = bytearray()

    def read(count: int) -> bytes:
        if not leftover:
            leftover.extend(next(pending, b""))
        data = bytes(leftover[:count])
        del leftover[:count]
        return data

    tracemalloc.start()
    try:
        form = parse_multipart(read, len(head) + size + len(tail), BOUNDARY, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (size, expected.hexdigest()) == (form.files[0].size, form.files[0].sha256)
    assert peak < 1024 * 1024, f"peak allocation {peak} bytes"


def test_boundary_is_read_from_quoted_and_unquoted_content_types() -> None:
    """The boundary parameter may be quoted; other media types are refused."""
    assert "a b" == boundary_from_content_type('multipart/form-data; boundary="a b"')
    assert "abc" == boundary_from_content_type("Multipart/Form-Data; charset=utf-8; boundary=abc")
    with pytest.raises(MultipartError, match="not multipart/form-data"):
        boundary_from_content_type("application/json")
    with pytest.raises(MultipartError, match="boundary is missing"):
        boundary_from_content_type("multipart/form-data")


def test_header_parameters_with_an_unclosed_quote_are_an_error() -> None:
    """A quoted value must end with a quote."""
    assert ("form-data", {"name": "x"}) == parse_header_parameters('form-data; name="x"')
    with pytest.raises(MultipartError, match="not closed"):
        parse_header_parameters('form-data; name="x')


# --- the emulator itself -----------------------------------------------------------------


def test_counters_all_start_at_zero(emulator: Emulator) -> None:
    """Every documented counter is present from the start."""
    assert dict.fromkeys(COUNTER_NAMES, 0) == emulator.counters
    assert f"{emulator.base_url}/storage/" == emulator.storage_url
    assert emulator.base_url.startswith("http://127.0.0.1:")


def test_unknown_paths_are_json_404_and_wrong_methods_405(client: httpx.Client) -> None:
    """Client bugs read as such: a missing endpoint or a wrong method."""
    missing = client.get("/nowhere")
    assert (404, "application/json") == (missing.status_code, missing.headers["content-type"])
    assert "error" in missing.json()
    wrong_method = client.get("/auth/login")
    assert (405, "POST") == (wrong_method.status_code, wrong_method.headers["allow"])


def test_requests_are_recorded_with_status_query_and_authorization(
    emulator: Emulator, client: httpx.Client
) -> None:
    """Each request leaves a record before its response is sent."""
    client.get("/consult-status", params={"file_id": "nope"}, headers={"Authorization": "Bearer x"})
    (record,) = emulator.requests
    expected = ("GET", "/consult-status", {"file_id": "nope"}, 404, "Bearer x", START)
    actual = (record.method, record.path, record.query, record.status, record.authorization, record.time)
    assert expected == actual
    assert "Bearer x" == record.headers["authorization"]


def test_chunked_request_bodies_are_refused_with_411(client: httpx.Client) -> None:
    """The emulator streams bodies by Content-Length; chunked uploads are refused."""
    response = client.post("/api/envio", content=iter([b"part one", b"part two"]))
    assert 411 == response.status_code


# flow T


def test_t_login_returns_a_token_and_its_lifetime(emulator: Emulator, client: httpx.Client) -> None:
    """Good credentials give an access token and expires_in seconds."""
    response = client.post("/auth/login", json=CREDENTIALS)
    body = response.json()
    assert (200, 3600) == (response.status_code, body["expires_in"])
    assert body["access_token"]
    assert 1 == emulator.counters["logins"]


def test_t_login_with_a_wrong_password_is_401(emulator: Emulator, client: httpx.Client) -> None:
    """Wrong credentials are refused and counted."""
    response = client.post("/auth/login", json={"username": "uploader", "password": "nope"})
    assert 401 == response.status_code
    assert "error" in response.json()
    assert (0, 1) == (emulator.counters["logins"], emulator.counters["failed_logins"])


def test_t_login_with_malformed_json_is_400(client: httpx.Client) -> None:
    """A body that is not JSON is a bad request, not bad credentials."""
    response = client.post("/auth/login", content=b"{not json", headers={"Content-Type": "application/json"})
    assert 400 == response.status_code


def test_logins_are_refused_while_disabled(emulator: Emulator, client: httpx.Client) -> None:
    """set_login_enabled(False) makes T and C logins answer 401 until re-enabled."""
    emulator.set_login_enabled(False)
    assert 401 == client.post("/auth/login", json=CREDENTIALS).status_code
    assert 401 == client.post("/api/auth/login", json=CREDENTIALS).status_code
    emulator.set_login_enabled(True)
    assert 200 == client.post("/auth/login", json=CREDENTIALS).status_code


def test_t_upload_with_a_valid_token_is_stored_and_described(
    emulator: Emulator, client: httpx.Client
) -> None:
    """The file lands on disk and the answer carries its id, name, size and hash."""
    content = b"invoice\r\n--not-a-boundary\r\n" * 100
    response = client.post(
        "/api/envio",
        headers=bearer(t_login(client)),
        data={"folder": "inbox"},
        files={"file": ("invoice.pdf", content, "application/pdf")},
    )
    body = response.json()
    assert 200 == response.status_code
    expected = ("invoice.pdf", len(content), hashlib.sha256(content).hexdigest())
    assert expected == (body["name"], body["size"], body["sha256"])
    (received,) = emulator.received
    expected_record = ("T", "invoice.pdf", {"folder": "inbox"}, ("folder", "file"))
    assert expected_record == (received.flow, received.name, received.fields, received.part_order)
    assert content == received.path.read_bytes()
    assert received.headers["authorization"].startswith("Bearer ")
    assert 1 == emulator.counters["uploads"]


def test_t_upload_without_a_token_is_401_and_the_connection_stays_usable(
    emulator: Emulator, client: httpx.Client
) -> None:
    """A refused upload's body is read and discarded, so keep-alive keeps working."""
    refused = client.post("/api/envio", files={"file": ("a.bin", b"x" * 300_000)})
    assert 401 == refused.status_code
    assert refused.headers.get("connection") != "close"
    assert 200 == client.post("/auth/login", json=CREDENTIALS).status_code
    assert [] == emulator.received
    assert [] == list((emulator.settings.storage_dir / ".spool").iterdir())


def test_t_upload_with_an_expired_token_is_401_and_counted(
    emulator: Emulator, client: httpx.Client, clock: FakeClock
) -> None:
    """A token used after expires_in seconds is refused and counted as an expired use."""
    token = t_login(client)
    clock.advance(3600)
    response = client.post("/api/envio", headers=bearer(token), files={"file": ("a.txt", b"a")})
    assert 401 == response.status_code
    assert (1, 0) == (emulator.counters["expired_token_uses"], emulator.counters["uploads"])


def test_revoked_tokens_and_jwts_are_401_and_counted(emulator: Emulator, client: httpx.Client) -> None:
    """revoke_tokens() invalidates T tokens and C JWTs issued before it, not after."""
    old, old_jwt = t_login(client), c_login(client)
    emulator.revoke_tokens()
    new = t_login(client)
    assert 401 == client.post("/api/envio", headers=bearer(old), files={"file": ("a.txt", b"a")}).status_code
    assert 401 == client.get("/api/tasks/any", headers=bearer(old_jwt)).status_code
    assert 200 == client.post("/api/envio", headers=bearer(new), files={"file": ("a.txt", b"a")}).status_code
    assert 2 == emulator.counters["revoked_token_uses"]


def test_t_upload_filenames_cannot_escape_the_storage_directory(
    emulator: Emulator, client: httpx.Client
) -> None:
    """A hostile filename is reported as sent but stored under its base name only."""
    response = client.post(
        "/api/envio", headers=bearer(t_login(client)), files={"file": ("../../evil.txt", b"x")}
    )
    assert "../../evil.txt" == response.json()["name"]
    (received,) = emulator.received
    storage = emulator.settings.storage_dir.resolve()
    assert ("evil.txt", True) == (received.path.name, storage in received.path.parents)


def test_t_upload_without_a_file_part_is_400(client: httpx.Client) -> None:
    """A form with only text fields has nothing to deliver."""
    response = client.post("/api/envio", headers=bearer(t_login(client)), data={"a": "1"}, files={})
    assert 400 == response.status_code


def test_t_refresh_issues_a_new_token_and_keeps_the_old_one_valid(
    emulator: Emulator, client: httpx.Client, clock: FakeClock
) -> None:
    """Refreshing gives a new token; the old one works until its own expiry."""
    old = t_login(client)
    clock.advance(1800)
    response = client.get("/auth/tokenRefresh", headers=bearer(old))
    new = response.json()["access_token"]
    assert (200, 3600) == (response.status_code, response.json()["expires_in"])
    assert new != old
    assert 200 == client.post("/api/envio", headers=bearer(old), files={"file": ("a", b"1")}).status_code
    clock.advance(1800)
    assert 401 == client.post("/api/envio", headers=bearer(old), files={"file": ("a", b"1")}).status_code
    assert 200 == client.post("/api/envio", headers=bearer(new), files={"file": ("a", b"1")}).status_code
    assert 1 == emulator.counters["refreshes"]


def test_t_refresh_with_an_expired_or_unknown_token_is_401(
    emulator: Emulator, client: httpx.Client, clock: FakeClock
) -> None:
    """Only a live token can be refreshed."""
    token = t_login(client)
    assert 401 == client.get("/auth/tokenRefresh", headers=bearer("made-up")).status_code
    assert 401 == client.get("/auth/tokenRefresh").status_code
    clock.advance(3601)
    assert 401 == client.get("/auth/tokenRefresh", headers=bearer(token)).status_code
    assert (0, 1) == (emulator.counters["refreshes"], emulator.counters["expired_token_uses"])


# flow R and the storage endpoint


def test_r_full_flow_stores_the_object_and_confirms_the_document(
    emulator: Emulator, client: httpx.Client
) -> None:
    """Create a document, POST to storage (201 + XML), then mark it uploaded."""
    document_id, fields = create_document(client)
    v4_fields = ["key", "Policy", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Signature"]
    assert v4_fields == list(fields)

    stored = post_storage(client, emulator.storage_url, {**fields, "success_action_status": "201"})
    assert 201 == stored.status_code
    assert f"<Key>{fields['key']}</Key>" in stored.text
    assert "<PostResponse><Location>" in stored.text

    confirmed = client.post(f"/documents/{document_id}/mark_as_uploaded", headers=R_HEADERS)
    assert (200, {"id": document_id, "uploaded": True}) == (confirmed.status_code, confirmed.json())
    (received,) = emulator.received
    assert ("R", "report.pdf", b"hello") == (received.flow, received.name, received.path.read_bytes())
    assert "file" == received.part_order[-1]
    expected_counts = {
        "documents_created": 1,
        "documents_confirmed": 1,
        "storage_posts": 1,
        "storage_rejections": 0,
        "credential_leaks": 0,
    }
    counters = emulator.counters
    assert expected_counts == {name: counters[name] for name in expected_counts}


def test_r_task_creation_returns_an_id(client: httpx.Client) -> None:
    """POST /tasks answers the task with an integer id."""
    response = client.post("/tasks", headers=R_HEADERS, json={"task": {"title": "t", "board_id": 1}})
    assert (200, 1, "t") == (response.status_code, response.json()["id"], response.json()["title"])


def test_r_calls_with_wrong_static_credentials_are_401(client: httpx.Client) -> None:
    """Both app-key and user-token must match."""
    document = {"document": {"data_file_name": "a", "data_file_size": 1, "warning_duplicate": False}}
    bad = {**R_HEADERS, "user-token": "wrong"}
    assert 401 == client.post("/documents", params={"task_id": "1"}, headers=bad, json=document).status_code
    assert 401 == client.post("/tasks", json={"task": {}}).status_code


def test_r_document_with_missing_keys_is_422(client: httpx.Client) -> None:
    """Every document key is required and typed."""
    response = client.post(
        "/documents", params={"task_id": "1"}, headers=R_HEADERS, json={"document": {"data_file_name": "a"}}
    )
    assert 422 == response.status_code
    assert "data_file_size" in response.json()["error"]
    assert 422 == client.post("/documents", headers=R_HEADERS, json={"document": {}}).status_code


def test_r_confirming_before_the_upload_is_422_and_unknown_ids_404(client: httpx.Client) -> None:
    """mark_as_uploaded needs the object in storage, and a known document."""
    document_id, _fields = create_document(client)
    assert 422 == client.post(f"/documents/{document_id}/mark_as_uploaded", headers=R_HEADERS).status_code
    assert 404 == client.post("/documents/999/mark_as_uploaded", headers=R_HEADERS).status_code


def test_r_confirming_twice_succeeds_but_is_counted(emulator: Emulator, client: httpx.Client) -> None:
    """A second mark_as_uploaded is harmless but shows up as a duplicate confirm."""
    document_id, fields = create_document(client)
    assert 204 == post_storage(client, emulator.storage_url, fields).status_code
    for _ in range(2):
        assert 200 == client.post(f"/documents/{document_id}/mark_as_uploaded", headers=R_HEADERS).status_code
    assert (1, 1) == (emulator.counters["documents_confirmed"], emulator.counters["duplicate_confirms"])


def test_storage_answers_200_when_asked(emulator: Emulator, client: httpx.Client) -> None:
    """success_action_status=200 gives an empty 200."""
    _document_id, fields = create_document(client)
    response = post_storage(client, emulator.storage_url, {**fields, "success_action_status": "200"})
    assert (200, b"") == (response.status_code, response.content)


def test_storage_refuses_an_expired_policy(
    emulator: Emulator, client: httpx.Client, clock: FakeClock
) -> None:
    """A policy used after its expiration is AccessDenied, as S3 words it."""
    _document_id, fields = create_document(client)
    clock.advance(300)
    response = post_storage(client, emulator.storage_url, fields)
    assert 403 == response.status_code
    expected = (
        "<Error><Code>AccessDenied</Code>"
        "<Message>Invalid according to Policy: Policy expired.</Message></Error>"
    )
    assert expected in response.text
    assert ([], 1) == (emulator.received, emulator.counters["storage_rejections"])


def test_storage_refuses_a_form_whose_file_is_not_last(emulator: Emulator, client: httpx.Client) -> None:
    """Fields after the file part are an InvalidArgument, and nothing is stored."""
    _document_id, fields = create_document(client)
    parts: list[Part] = [
        ("file", "report.pdf", b"hello"),
        *((k, None, v.encode()) for k, v in fields.items()),
    ]
    response = client.post(
        emulator.storage_url,
        content=build_multipart(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert (400, True) == (response.status_code, "<Code>InvalidArgument</Code>" in response.text)
    assert [] == emulator.received
    assert [] == list((emulator.settings.storage_dir / ".spool").iterdir())


def test_storage_refuses_a_bad_signature(emulator: Emulator, client: httpx.Client) -> None:
    """A modified signature does not match the policy."""
    _document_id, fields = create_document(client)
    fields["X-Amz-Signature"] = "0" * 64
    response = post_storage(client, emulator.storage_url, fields)
    assert (403, True) == (response.status_code, "<Code>SignatureDoesNotMatch</Code>" in response.text)


def test_storage_refuses_a_modified_or_missing_field(emulator: Emulator, client: httpx.Client) -> None:
    """Every issued field must arrive unmodified."""
    _document_id, fields = create_document(client)
    modified = post_storage(client, emulator.storage_url, {**fields, "key": "documents/1/other.pdf"})
    missing = post_storage(
        client, emulator.storage_url, {k: v for k, v in fields.items() if k != "X-Amz-Date"}
    )
    assert (403, 403) == (modified.status_code, missing.status_code)
    assert "Policy Condition failed" in missing.text
    assert 2 == emulator.counters["storage_rejections"]


def test_storage_refuses_an_empty_file_as_too_small(emulator: Emulator, client: httpx.Client) -> None:
    """The policy's content-length-range starts at one byte."""
    _document_id, fields = create_document(client)
    response = post_storage(client, emulator.storage_url, fields, content=b"")
    assert (400, True) == (response.status_code, "<Code>EntityTooSmall</Code>" in response.text)


def test_storage_counts_credential_leaks_but_still_stores(emulator: Emulator, client: httpx.Client) -> None:
    """API headers sent to storage are a leak; the upload still succeeds, as on S3."""
    _document_id, fields = create_document(client)
    response = post_storage(
        client, emulator.storage_url, fields, headers={"Authorization": "Bearer secret", **R_HEADERS}
    )
    assert 204 == response.status_code
    assert (1, 1) == (emulator.counters["credential_leaks"], len(emulator.received))


def test_storage_accepts_v2_policies(
    make_emulator: Callable[..., Emulator], new_client: Callable[[Emulator], httpx.Client]
) -> None:
    """The older generation's fields (policy, signature, AWSAccessKeyId, acl, Content-Type) work too."""
    emulator = make_emulator(storage_generation="v2")
    client = new_client(emulator)
    _document_id, fields = create_document(client)
    assert ["key", "policy", "signature", "AWSAccessKeyId", "acl", "Content-Type"] == list(fields)
    assert 204 == post_storage(client, emulator.storage_url, fields).status_code
    tampered = post_storage(client, emulator.storage_url, {**fields, "acl": "public-read"})
    assert 403 == tampered.status_code
    assert ["R"] == [received.flow for received in emulator.received]


# flow P


def test_p_status_goes_pending_processing_completed(emulator: Emulator, client: httpx.Client) -> None:
    """Pending before confirm, processing for the configured polls, then completed."""
    slot = request_presigned(client)
    assert (emulator.storage_url, "scan.pdf") == (slot["url"], slot["file_name"])
    file_id = slot["file_id"]

    def status() -> str:
        response = client.get("/consult-status", params={"file_id": file_id})
        assert 200 == response.status_code
        value: str = response.json()["status"]
        return value

    assert "pending" == status()
    assert 204 == post_storage(client, slot["url"], slot["fields"], filename="scan.pdf").status_code
    confirmed = client.post(
        "/confirm-upload", json={"file_id": file_id}, headers={"Authorization": "ignored"}
    )
    assert {"file_id": file_id, "status": "processing"} == confirmed.json()
    assert ["processing", "processing", "completed"] == [status(), status(), status()]
    assert 4 == emulator.counters["status_polls"]
    assert ["P"] == [received.flow for received in emulator.received]


def test_p_a_rejected_file_ends_in_error(client: httpx.Client) -> None:
    """A file named like 'reject' fails the virus scan."""
    slot = request_presigned(client, name="reject-me.pdf")
    post_storage(client, slot["url"], slot["fields"], filename="reject-me.pdf")
    client.post("/confirm-upload", json={"file_id": slot["file_id"]})
    answers = [client.get("/consult-status", params={"file_id": slot["file_id"]}).json() for _ in range(3)]
    assert {"status": "error", "details": "virus scan failed"} == answers[-1]


def test_p_confirm_needs_the_object_and_counts_duplicates(emulator: Emulator, client: httpx.Client) -> None:
    """Confirming before storage is 422; confirming twice is counted."""
    slot = request_presigned(client)
    assert 422 == client.post("/confirm-upload", json={"file_id": slot["file_id"]}).status_code
    assert 404 == client.post("/confirm-upload", json={"file_id": "unknown"}).status_code
    post_storage(client, slot["url"], slot["fields"])
    for _ in range(2):
        assert 200 == client.post("/confirm-upload", json={"file_id": slot["file_id"]}).status_code
    assert 1 == emulator.counters["duplicate_confirms"]


def test_p_upload_request_with_missing_keys_is_422(client: httpx.Client) -> None:
    """file_name, extension, len and type are all required."""
    assert 422 == client.post("/upload", json={"file_name": "a.pdf"}).status_code


# flow C


def test_c_login_returns_a_jwt_whose_exp_is_the_only_expiry(client: httpx.Client, clock: FakeClock) -> None:
    """The answer has message, token and id, no expires_in; exp = now + jwt_lifetime."""
    body = client.post("/api/auth/login", json=CREDENTIALS).json()
    assert {"message", "token", "id"} == set(body)
    assert ("Inicio de sesión exitoso", "user-1") == (body["message"], body["id"])
    claims = jwt_claims(body["token"])
    assert ("uploader", clock.now + 3600) == (claims["sub"], claims["exp"])


def test_c_task_progresses_and_downloads_the_converted_file(emulator: Emulator, client: httpx.Client) -> None:
    """PENDING, STARTED, SUCCESS; then the converted bytes with a matching filename."""
    headers = bearer(c_login(client))
    created = client.post(
        "/api/tasks",
        headers=headers,
        data={"conversion_type": "mp4"},
        files={"file": ("clip.avi", b"frames")},
    )
    task_id = created.json()["task_id"]
    assert (200, "Conversion started") == (created.status_code, created.json()["message"])

    early = client.get("/api/download", params={"task_id": task_id}, headers=headers)
    assert 409 == early.status_code
    states = [client.get(f"/api/tasks/{task_id}", headers=headers).json()["state"] for _ in range(3)]
    assert ["PENDING", "STARTED", "SUCCESS"] == states

    download = client.get("/api/download", params={"task_id": task_id}, headers=headers)
    assert (200, b"CONVERTED:mp4\nframes") == (download.status_code, download.content)
    assert 'attachment; filename="clip.mp4"' == download.headers["content-disposition"]
    assert "application/octet-stream" == download.headers["content-type"]
    assert 204 == client.delete(f"/api/tasks/{task_id}", headers=headers).status_code
    assert 404 == client.get(f"/api/tasks/{task_id}", headers=headers).status_code
    counters = emulator.counters
    assert (1, 3, 1) == (counters["tasks_created"], counters["task_polls"], counters["downloads"])
    assert [("C", {"conversion_type": "mp4"})] == [(r.flow, r.fields) for r in emulator.received]


def test_c_a_rejected_file_ends_in_failure(client: httpx.Client) -> None:
    """A file named like 'reject' fails conversion, and cannot be downloaded."""
    headers = bearer(c_login(client))
    task_id = client.post(
        "/api/tasks", headers=headers, data={"conversion_type": "mp4"}, files={"file": ("reject.avi", b"x")}
    ).json()["task_id"]
    answers = [client.get(f"/api/tasks/{task_id}", headers=headers).json() for _ in range(3)]
    assert {"state": "FAILURE", "result": "{'error': 'unsupported codec'}"} == answers[-1]
    assert 409 == client.get("/api/download", params={"task_id": task_id}, headers=headers).status_code


def test_c_an_expired_or_forged_jwt_is_401(
    emulator: Emulator, client: httpx.Client, clock: FakeClock
) -> None:
    """Every C endpoint checks the JWT; an expired one is counted."""
    token = c_login(client)
    header, claims, signature = token.split(".")
    forged = f"{header}.{claims}.{signature[::-1]}"
    assert 401 == client.get("/api/tasks/x", headers=bearer(forged)).status_code
    clock.advance(3600)
    response = client.post(
        "/api/tasks", headers=bearer(token), data={"conversion_type": "mp4"}, files={"file": ("a", b"1")}
    )
    assert 401 == response.status_code
    assert 1 == emulator.counters["expired_token_uses"]


def test_c_task_without_conversion_type_is_400(client: httpx.Client) -> None:
    """The conversion type is part of the contract."""
    response = client.post("/api/tasks", headers=bearer(c_login(client)), files={"file": ("a.avi", b"1")})
    assert 400 == response.status_code


# test controls


def test_scripted_responses_come_first_in_order_then_normal_handling(
    emulator: Emulator, client: httpx.Client
) -> None:
    """script() answers the next matching requests FIFO, whatever their query string."""
    emulator.script(
        "POST",
        "/auth/login",
        ScriptedResponse(503, "busy"),
        ScriptedResponse(200, {"access_token": "canned", "expires_in": 5}, headers={"X-Test": "1"}),
    )
    first = client.post("/auth/login?attempt=1", json=CREDENTIALS)
    second = client.post("/auth/login", json=CREDENTIALS)
    third = client.post("/auth/login", json=CREDENTIALS)
    assert (503, "busy") == (first.status_code, first.text)
    assert ({"access_token": "canned", "expires_in": 5}, "1") == (second.json(), second.headers["x-test"])
    assert 200 == third.status_code
    assert third.json()["access_token"] != "canned"
    assert [503, 200, 200] == [record.status for record in emulator.requests]
    assert 1 == emulator.counters["logins"]


def test_a_scripted_delay_makes_the_client_time_out(emulator: Emulator, client: httpx.Client) -> None:
    """delay holds the answer back, so client timeouts can be tested."""
    emulator.script("GET", "/consult-status", ScriptedResponse(200, {"status": "completed"}, delay=0.5))
    with pytest.raises(httpx.ReadTimeout):
        client.get("/consult-status", timeout=0.05)


def test_wait_for_wakes_when_a_request_makes_the_predicate_true(
    emulator: Emulator, new_client: Callable[[Emulator], httpx.Client]
) -> None:
    """wait_for returns True as soon as a request from another thread satisfies it."""
    other = new_client(emulator)

    def send() -> None:
        token = t_login(other)
        other.post("/api/envio", headers=bearer(token), files={"file": ("late.txt", b"late")})

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert emulator.wait_for(lambda emu: len(emu.received) == 1, timeout=5.0)
    finally:
        sender.join()
    assert ["late.txt"] == [received.name for received in emulator.received]


def test_wait_for_returns_false_at_its_deadline(emulator: Emulator) -> None:
    """A predicate that never becomes true gives False after the timeout."""
    assert not emulator.wait_for(lambda emu: emu.counters["uploads"] > 0, timeout=0.05)


def test_stop_closes_pooled_connections_and_restart_keeps_the_port(
    emulator: Emulator, client: httpx.Client
) -> None:
    """After stop() a pooled connection fails like an outage; start() serves again."""
    token = t_login(client)
    emulator.stop()
    with pytest.raises(httpx.TransportError):
        client.post("/api/envio", headers=bearer(token), files={"file": ("a", b"1")})
    emulator.start()
    assert 200 == client.post("/api/envio", headers=bearer(token), files={"file": ("a", b"1")}).status_code
