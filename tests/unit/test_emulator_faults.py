"""The emulator's faults on demand: outages, hangs, huge bodies, odd filenames, replays, lost answers.

Every test talks to a real emulator on 127.0.0.1 with a real httpx client.
"""

from __future__ import annotations

import http.client
import json
import logging
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from uploader_daemon.emulator import BodyFraming, Emulator, EmulatorSettings, ScriptedResponse
from uploader_daemon.emulator.multipart import parse_content_disposition
from uploader_daemon.emulator.state import MAX_FILENAME_BYTES, safe_filename

CREDENTIALS = {"username": "uploader", "password": "s3cret"}
R_HEADERS = {"app-key": "app-key-123", "user-token": "user-token-456"}
BOUNDARY = "fAuLtBoUnDaRy"
MIB = 1024 * 1024
# The most a test waits for the emulator to notice something.
DEADLINE = 5.0


@pytest.fixture(autouse=True)
def _emulator_logs_no_problem(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A fault is the emulator doing its job: it must not log a handler failure for one."""
    caplog.set_level(logging.DEBUG, logger="uploader_daemon.emulator")
    yield
    problems = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("uploader_daemon.emulator") and record.levelno >= logging.WARNING
    ]
    assert [] == problems


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start emulators with settings overrides; all are stopped at the end of the test."""
    started: list[Emulator] = []

    def make(**overrides: Any) -> Emulator:
        emulator = Emulator(EmulatorSettings(storage_dir=tmp_path / "storage", **overrides)).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    """A running emulator with default settings."""
    return make_emulator()


@pytest.fixture
def new_client() -> Iterator[Callable[..., httpx.Client]]:
    """Make HTTP clients for an emulator; all are closed at the end of the test."""
    clients: list[httpx.Client] = []

    def make(emulator: Emulator, timeout: float = DEADLINE) -> httpx.Client:
        client = httpx.Client(base_url=emulator.base_url, timeout=timeout)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(emulator: Emulator, new_client: Callable[..., httpx.Client]) -> httpx.Client:
    """An HTTP client for the default emulator."""
    return new_client(emulator)


def t_token(client: httpx.Client) -> dict[str, str]:
    """Log in to flow T; return the Authorization header."""
    response = client.post("/auth/login", json=CREDENTIALS)
    assert 200 == response.status_code
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def c_token(client: httpx.Client) -> dict[str, str]:
    """Log in to flow C; return the Authorization header."""
    response = client.post("/api/auth/login", json=CREDENTIALS)
    assert 200 == response.status_code
    return {"Authorization": f"Bearer {response.json()['token']}"}


def raw_multipart(disposition: bytes, content: bytes) -> tuple[bytes, dict[str, str]]:
    """A one-part form whose Content-Disposition bytes are exactly ``disposition``."""
    body = (
        f"--{BOUNDARY}\r\n".encode()
        + b"Content-Disposition: "
        + disposition
        + b"\r\n\r\n"
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def port_of(emulator: Emulator) -> int:
    """The emulator's TCP port."""
    return int(emulator.base_url.rsplit(":", 1)[1])


# --- outages --------------------------------------------------------------------------------


def test_refused_connections_are_econnrefused_then_served_again_on_the_same_port(
    emulator: Emulator, client: httpx.Client
) -> None:
    """While refusing, connects get ECONNREFUSED and pooled connections fail too; then service resumes."""
    headers = t_token(client)  # leaves a pooled keep-alive connection behind
    base_url = emulator.base_url

    emulator.refuse_connections()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(emulator)), timeout=DEADLINE).close()
    # httpx finds its pooled connection closed and reconnects, which is refused.
    with pytest.raises(httpx.TransportError):
        client.post("/api/envio", headers=headers, files={"file": ("a.txt", b"a")})
    emulator.accept_connections()
    response = client.post("/api/envio", headers=headers, files={"file": ("a.txt", b"a")})
    assert (base_url, 200, 1) == (emulator.base_url, response.status_code, emulator.counters["uploads"])


def test_a_kept_alive_connection_is_closed_by_refusing_and_not_served(emulator: Emulator) -> None:
    """A stdlib client reusing its connection after the outage began gets a disconnect, not an answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port_of(emulator), timeout=DEADLINE)
    try:
        connection.request("GET", "/consult-status?file_id=x")
        first = connection.getresponse()
        first.read()
        emulator.refuse_connections()

        def reuse() -> None:
            connection.request("GET", "/consult-status?file_id=x")
            connection.getresponse()

        with pytest.raises((ConnectionError, http.client.HTTPException)):
            reuse()
    finally:
        connection.close()
    assert (404, False) == (first.status, first.will_close)


def test_stop_while_refusing_and_start_again_work(emulator: Emulator, client: httpx.Client) -> None:
    """refuse/accept are idempotent and compose with stop/start."""
    emulator.refuse_connections()
    emulator.refuse_connections()
    with pytest.raises(RuntimeError):
        emulator.start()
    emulator.stop()
    emulator.accept_connections()  # not refusing any more: nothing to do
    with pytest.raises(httpx.ConnectError):
        client.get("/consult-status")
    emulator.start()
    assert 422 == client.get("/consult-status").status_code


def test_fail_all_answers_every_route_without_touching_state_then_service_resumes(
    emulator: Emulator, client: httpx.Client
) -> None:
    """503 on logins, uploads and storage alike, with Retry-After; scripts and counters stay put."""
    emulator.script("GET", "/consult-status", ScriptedResponse(200, {"status": "completed"}))
    emulator.fail_all(503, retry_after=7)

    login = client.post("/auth/login", json=CREDENTIALS)
    upload = client.post("/api/envio", files={"file": ("a.txt", b"a")})
    storage = client.post(emulator.storage_url, files={"file": ("a.txt", b"a")})
    scripted = client.get("/consult-status")
    emulator.fail_all(None)
    after = client.get("/consult-status")

    assert [503, 503, 503, 503] == [
        login.status_code,
        upload.status_code,
        storage.status_code,
        scripted.status_code,
    ]
    assert ["7", "7"] == [login.headers["retry-after"], storage.headers["retry-after"]]
    assert {"error": "emulated outage"} == login.json()
    assert b"<Code>ServiceUnavailable</Code>" in storage.content
    counters = emulator.counters
    assert (4, 0, 0, 0) == (
        counters["outage_answers"],
        counters["logins"],
        counters["failed_logins"],
        counters["storage_posts"],
    )
    assert (200, {"status": "completed"}) == (after.status_code, after.json())


def test_fail_all_takes_any_status_and_a_verbatim_retry_after(
    emulator: Emulator, client: httpx.Client
) -> None:
    """A 500 without Retry-After, and a 429 with an HTTP date."""
    emulator.fail_all(500)
    plain = client.post("/upload", json={})
    emulator.fail_all(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    dated = client.post("/upload", json={})
    assert (500, None) == (plain.status_code, plain.headers.get("retry-after"))
    assert (429, "Wed, 21 Oct 2015 07:28:00 GMT") == (dated.status_code, dated.headers["retry-after"])
    with pytest.raises(ValueError, match="three digits"):
        emulator.fail_all(42)


def test_hang_all_makes_a_client_time_out_then_service_resumes(
    emulator: Emulator, new_client: Callable[..., httpx.Client]
) -> None:
    """A hung request is read, recorded with status 0 and never answered."""
    impatient = new_client(emulator, timeout=0.3)
    emulator.hang_all(30.0)
    with pytest.raises(httpx.ReadTimeout):
        impatient.post("/auth/login", json=CREDENTIALS)
    emulator.hang_all(None)
    response = impatient.post("/auth/login", json=CREDENTIALS)
    counters = emulator.counters
    assert (200, 1, 1) == (response.status_code, counters["hung_requests"], counters["logins"])
    assert [0, 200] == [record.status for record in emulator.requests]


def test_stop_finishes_promptly_while_a_handler_hangs(
    emulator: Emulator, new_client: Callable[..., httpx.Client]
) -> None:
    """stop() releases hanging handlers instead of waiting out their hang."""
    patient = new_client(emulator, timeout=DEADLINE)
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            patient.get("/consult-status")
        except httpx.TransportError as error:
            outcome.append(error)

    emulator.hang_all(60.0)
    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert emulator.wait_for(lambda emu: emu.counters["hung_requests"] == 1, timeout=DEADLINE)
        started = time.monotonic()
        emulator.stop()
        stop_seconds = time.monotonic() - started
    finally:
        sender.join(DEADLINE)
    assert stop_seconds < 1.0
    assert (False, 1) == (sender.is_alive(), len(outcome))


def test_switching_the_hang_off_releases_hanging_requests(
    emulator: Emulator, new_client: Callable[..., httpx.Client]
) -> None:
    """hang_all(None) closes the connections of requests already hanging, without an answer."""
    patient = new_client(emulator, timeout=DEADLINE)
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            patient.get("/consult-status")
        except httpx.TransportError as error:
            outcome.append(error)

    emulator.hang_all(60.0)
    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert emulator.wait_for(lambda emu: emu.counters["hung_requests"] == 1, timeout=DEADLINE)
        emulator.hang_all(None)
    finally:
        sender.join(DEADLINE)
    assert (False, 1) == (sender.is_alive(), len(outcome))


# --- huge bodies ----------------------------------------------------------------------------

_RSS_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from uploader_daemon.emulator import Emulator, EmulatorSettings, ScriptedResponse

    size = int(sys.argv[2])
    with Emulator(EmulatorSettings(storage_dir=Path(sys.argv[1]))) as emulator:
        emulator.script("GET", "/api/download", ScriptedResponse(500, b'{"error": "', body_size=size))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"base_url": emulator.base_url}), flush=True)
        sys.stdin.readline()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"maxrss_growth_kib": after - before}), flush=True)
    """
)


def read_line(process: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    """Read one JSON line from the probe's stdout, waiting at most until ``deadline``."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError("the emulator probe did not answer in time")
    line: dict[str, Any] = json.loads(process.stdout.readline())
    return line


def test_a_200_mb_generated_body_streams_with_flat_emulator_memory(tmp_path: Path) -> None:
    """The emulator process's peak RSS grows by less than 50 MB while it sends 200 MB."""
    size = 200 * MIB
    command = [sys.executable, "-c", _RSS_PROBE, str(tmp_path / "storage"), str(size)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        try:
            deadline = time.monotonic() + 30.0
            base_url = read_line(process, deadline)["base_url"]
            received, start = 0, b""
            with (
                httpx.Client(base_url=base_url, timeout=DEADLINE) as client,
                client.stream("GET", "/api/download") as response,
            ):
                for piece in response.iter_raw():
                    if len(start) < 16:
                        start += piece[:16]
                    received += len(piece)
            assert process.stdin is not None
            process.stdin.write("done\n")
            process.stdin.flush()
            growth_kib = read_line(process, deadline)["maxrss_growth_kib"]
        finally:
            process.kill()
    assert (500, str(size), size) == (response.status_code, response.headers["content-length"], received)
    assert start.startswith(b'{"error": "xxxxx')
    assert growth_kib < 50 * 1024


@pytest.mark.parametrize(
    ("framing", "expected_headers"),
    [
        (BodyFraming.CONTENT_LENGTH, {"content-length": str(3 * MIB)}),
        (BodyFraming.CHUNKED, {"transfer-encoding": "chunked"}),
        (BodyFraming.UNTIL_CLOSE, {"connection": "close"}),
    ],
)
def test_a_generated_json_body_arrives_whole_in_every_framing(
    emulator: Emulator, client: httpx.Client, framing: BodyFraming, expected_headers: dict[str, str]
) -> None:
    """Prefix, filler and end add up to body_size and parse as JSON, however the body is framed."""
    emulator.script(
        "POST",
        "/upload",
        ScriptedResponse(
            200, b'{"file_id": "f1"', body_size=3 * MIB, filler=b" ", body_end=b"}", framing=framing
        ),
    )
    response = client.post("/upload", json={})
    headers = {name: response.headers.get(name) for name in expected_headers}
    assert (expected_headers, 3 * MIB) == (headers, len(response.content))
    assert {"file_id": "f1"} == response.json()
    if framing is BodyFraming.UNTIL_CLOSE:
        assert "content-length" not in response.headers
    assert 422 == client.post("/upload", json={}).status_code


def test_a_client_that_stops_reading_a_huge_body_does_not_break_the_emulator(
    emulator: Emulator, client: httpx.Client
) -> None:
    """Hanging up after the first piece is a broken pipe for the handler, logged at most at debug."""
    emulator.script("GET", "/api/download", ScriptedResponse(200, body_size=100 * MIB))
    with (
        httpx.Client(base_url=emulator.base_url, timeout=DEADLINE) as quitter,
        quitter.stream("GET", "/api/download") as response,
    ):
        first = next(response.iter_raw())
    assert first.startswith(b"xxxx")
    # The autouse fixture checks that the handler logged no failure for the broken pipe.
    assert 422 == client.get("/consult-status").status_code


def test_a_body_size_smaller_than_its_fixed_parts_is_refused() -> None:
    """body_size counts the prefix and the end, so it cannot be below their sum."""
    with pytest.raises(ValueError, match="smaller than body plus body_end"):
        ScriptedResponse(200, b"0123456789", body_size=5)


# --- filenames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disposition", "name", "raw"),
    [
        (b'form-data; name="file"; filename="caf\xc3\xa9.csv"', "café.csv", b"caf\xc3\xa9.csv"),
        (b'form-data; name="file"; filename="caf\xe9.csv"', "café.csv", b"caf\xe9.csv"),
        (b'form-data; name="file"; filename="say %22hi%22.txt"', 'say "hi".txt', b"say %22hi%22.txt"),
        (b'form-data; name="file"; filename="a%0Ab%1B%25.txt"', "a\nb%1B%25.txt", b"a%0Ab%1B%25.txt"),
        (b'form-data; name="file"; filename="back\\\\slash.txt"', "back\\slash.txt", b"back\\\\slash.txt"),
        (
            b'form-data; name="file"; filename="cafe.csv"; filename*=UTF-8\'\'caf%C3%A9.csv',
            "café.csv",
            b"UTF-8''caf%C3%A9.csv",
        ),
        (b"form-data; name=\"file\"; filename*=UTF-8''caf%E9.csv", "café.csv", b"UTF-8''caf%E9.csv"),
    ],
)
def test_content_disposition_filenames_are_decoded_and_kept_raw(
    disposition: bytes, name: str, raw: bytes
) -> None:
    """UTF-8, latin-1, httpx's escapes, quoted-pairs and filename* all read as the client meant."""
    parsed = parse_content_disposition(disposition)
    assert ("form-data", "file", name, raw) == (
        parsed.kind,
        parsed.name,
        parsed.filename,
        parsed.raw_filename,
    )


@pytest.mark.parametrize(
    ("filename", "raw", "stored"),
    [
        (b"caf\xe9.csv".decode("latin-1"), b"caf\xc3\xa9.csv", "café.csv"),
        ('say "hi".txt', b"say %22hi%22.txt", 'say "hi".txt'),
        ("tab\there.txt", b"tab%09here.txt", "tab_here.txt"),
        ("back\\slash.txt", b"back\\\\slash.txt", "slash.txt"),
    ],
)
def test_t_filenames_sent_by_httpx_round_trip(
    emulator: Emulator, client: httpx.Client, filename: str, raw: bytes, stored: str
) -> None:
    """What httpx 0.28 writes for a name comes back as that name, raw bytes kept, stored safely."""
    response = client.post("/api/envio", headers=t_token(client), files={"file": (filename, b"data")})
    (received,) = emulator.received
    assert (200, filename) == (response.status_code, response.json()["name"])
    assert (filename, raw, stored) == (received.name, received.raw_filename, received.path.name)
    assert b"data" == received.path.read_bytes()


@pytest.mark.parametrize(
    ("disposition", "raw"),
    [
        (b'form-data; name="file"; filename="caf\xe9.csv"', b"caf\xe9.csv"),
        (b"form-data; name=\"file\"; filename*=UTF-8''caf%C3%A9.csv", b"UTF-8''caf%C3%A9.csv"),
    ],
)
def test_t_filenames_in_raw_latin1_or_rfc5987_round_trip(
    emulator: Emulator, client: httpx.Client, disposition: bytes, raw: bytes
) -> None:
    """A client writing raw latin-1 bytes or filename* gets the same text name as one writing UTF-8."""
    body, headers = raw_multipart(disposition, b"data")
    response = client.post("/api/envio", headers={**t_token(client), **headers}, content=body)
    (received,) = emulator.received
    assert (200, "café.csv") == (response.status_code, response.json()["name"])
    assert ("café.csv", raw, "café.csv") == (received.name, received.raw_filename, received.path.name)


def test_r_a_non_ascii_name_round_trips_through_the_document_and_storage(
    emulator: Emulator, client: httpx.Client
) -> None:
    """The JSON name, the presigned key, the storage POST's filename and the confirmation all agree."""
    name = b"caf\xe9.csv".decode("latin-1")
    created = client.post(
        "/documents",
        params={"task_id": "7"},
        headers=R_HEADERS,
        json={"document": {"data_file_name": name, "data_file_size": 4, "warning_duplicate": False}},
    )
    fields = created.json()["fields"]
    stored = client.post(emulator.storage_url, data=fields, files={"file": (name, b"data")})
    confirmed = client.post(f"/documents/{created.json()['id']}/mark_as_uploaded", headers=R_HEADERS)
    (received,) = emulator.received
    assert (200, 204, 200) == (created.status_code, stored.status_code, confirmed.status_code)
    assert ("documents/1/café.csv", name, "café.csv") == (fields["key"], received.name, received.path.name)


def test_p_a_non_ascii_name_round_trips_through_the_slot_and_storage(
    emulator: Emulator, client: httpx.Client
) -> None:
    """P answers the name it was given and stores the object under it."""
    name = "relatório final.pdf"
    slot = client.post(
        "/upload", json={"file_name": name, "extension": "pdf", "len": 4, "type": "application/pdf"}
    )
    body = slot.json()
    stored = client.post(body["url"], data=body["fields"], files={"file": (name, b"data")})
    confirmed = client.post("/confirm-upload", json={"file_id": body["file_id"]})
    (received,) = emulator.received
    assert (200, 204, 200) == (slot.status_code, stored.status_code, confirmed.status_code)
    assert (name, name, name) == (body["file_name"], received.name, received.path.name)


def test_c_a_non_ascii_name_round_trips_to_the_download(emulator: Emulator, client: httpx.Client) -> None:
    """C stores the file under its name and offers the converted one with filename*."""
    headers = c_token(client)
    created = client.post(
        "/api/tasks", headers=headers, data={"conversion_type": "mp4"}, files={"file": ("café.avi", b"data")}
    )
    task_id = created.json()["task_id"]
    for _poll in range(3):
        client.get(f"/api/tasks/{task_id}", headers=headers)
    download = client.get("/api/download", params={"task_id": task_id}, headers=headers)
    (received,) = emulator.received
    assert ("café.avi", b"caf\xc3\xa9.avi", "café.avi") == (
        received.name,
        received.raw_filename,
        received.path.name,
    )
    assert download.headers["content-disposition"].endswith("filename*=UTF-8''caf%C3%A9.mp4")


def test_safe_filename_handles_surrogates_controls_and_long_names() -> None:
    """Any decoded name becomes one path component that the file system can create."""
    long_name = "é" * 300 + ".csv"
    shortened = safe_filename(long_name)
    assert "a_b__c_.csv" == safe_filename("dir/a\x00b\x7f\x85c\udce9.csv")
    assert (MAX_FILENAME_BYTES, ".csv") == (len(shortened.encode()), shortened[-4:])
    assert ["upload.bin", "upload.bin"] == [safe_filename(".."), safe_filename("x/")]


def test_r_a_json_name_with_a_lone_surrogate_is_stored_safely(
    emulator: Emulator, client: httpx.Client
) -> None:
    """JSON may carry a name no file system can encode; the key gets a safe spelling instead."""
    created = client.post(
        "/documents",
        params={"task_id": "7"},
        headers={**R_HEADERS, "Content-Type": "application/json"},
        content=b'{"document": {"data_file_name": "caf\\udce9.csv", "data_file_size": 4, '
        b'"warning_duplicate": false}}',
    )
    assert (200, "documents/1/caf_.csv") == (created.status_code, created.json()["fields"]["key"])


# --- Idempotency-Key ------------------------------------------------------------------------


def test_idempotency_keys_are_recorded_per_received_file(emulator: Emulator, client: httpx.Client) -> None:
    """Without deduplication every request stores a file, and uploads_by_key shows the repeats."""
    headers = t_token(client)
    for key in ("k1", "k1", None):
        extra = {} if key is None else {"Idempotency-Key": key}
        client.post("/api/envio", headers={**headers, **extra}, files={"file": ("a.txt", b"a")})
    assert ["k1", "k1", None] == [received.idempotency_key for received in emulator.received]
    assert {"k1": 2, None: 1} == emulator.uploads_by_key()
    assert 0 == emulator.counters["replays_answered"]


def test_deduplication_replays_the_same_t_answer_and_stores_nothing_new(
    make_emulator: Callable[..., Emulator], new_client: Callable[..., httpx.Client]
) -> None:
    """A repeated key gets the first answer byte for byte; another key is a new upload."""
    emulator = make_emulator(deduplicate_by_idempotency_key=True)
    client = new_client(emulator)
    headers = t_token(client)
    first, again, other = (
        client.post(
            "/api/envio", headers={**headers, "Idempotency-Key": key}, files={"file": ("a.txt", b"a")}
        )
        for key in ("k1", "k1", "k2")
    )
    assert (200, first.content) == (again.status_code, again.content)
    assert first.json()["id"] != other.json()["id"]
    assert {"k1": 1, "k2": 1} == emulator.uploads_by_key()
    assert (2, 1) == (emulator.counters["uploads"], emulator.counters["replays_answered"])


def test_deduplication_keeps_only_successful_answers(
    make_emulator: Callable[..., Emulator], new_client: Callable[..., httpx.Client]
) -> None:
    """A key first answered 401 is handled afresh on the retry."""
    emulator = make_emulator(deduplicate_by_idempotency_key=True)
    client = new_client(emulator)
    key = {"Idempotency-Key": "k1"}
    refused = client.post("/api/envio", headers=key, files={"file": ("a.txt", b"a")})
    accepted = client.post("/api/envio", headers={**t_token(client), **key}, files={"file": ("a.txt", b"a")})
    assert (401, 200, 0) == (refused.status_code, accepted.status_code, emulator.counters["replays_answered"])


def test_deduplication_covers_the_r_p_and_c_create_calls(
    make_emulator: Callable[..., Emulator], new_client: Callable[..., httpx.Client]
) -> None:
    """Task, document, upload slot and conversion task: each is created once per key."""
    emulator = make_emulator(deduplicate_by_idempotency_key=True)
    client = new_client(emulator)
    c_headers = c_token(client)
    document = {"document": {"data_file_name": "a.pdf", "data_file_size": 1, "warning_duplicate": False}}
    slot = {"file_name": "a.pdf", "extension": "pdf", "len": 1, "type": "application/pdf"}
    calls: list[Callable[[dict[str, str]], httpx.Response]] = [
        lambda key: client.post("/tasks", headers={**R_HEADERS, **key}, json={"task": {"title": "t"}}),
        lambda key: client.post(
            "/documents", params={"task_id": "1"}, headers={**R_HEADERS, **key}, json=document
        ),
        lambda key: client.post("/upload", headers=key, json=slot),
        lambda key: client.post(
            "/api/tasks",
            headers={**c_headers, **key},
            data={"conversion_type": "mp4"},
            files={"file": ("a.avi", b"1")},
        ),
    ]
    for number, call in enumerate(calls):
        key = {"Idempotency-Key": f"key-{number}"}
        first, again = call(key), call(key)
        assert (200, first.json()) == (again.status_code, again.json())
    counters = emulator.counters
    # documents_created counts R documents and P upload slots alike: one of each.
    assert (2, 1, 1, 4) == (
        counters["documents_created"],
        counters["tasks_created"],
        len(emulator.received),
        counters["replays_answered"],
    )


# --- lost answers ---------------------------------------------------------------------------


def test_a_reset_after_the_body_stores_the_upload_but_loses_the_answer(
    emulator: Emulator, client: httpx.Client
) -> None:
    """The client sees a transport error although the file was stored and counted."""
    headers = t_token(client)
    emulator.script("POST", "/api/envio", ScriptedResponse(200, reset_after_body=True))
    with pytest.raises(httpx.TransportError):
        client.post(
            "/api/envio", headers={**headers, "Idempotency-Key": "k1"}, files={"file": ("a.txt", b"a")}
        )
    (received,) = emulator.received
    counters = emulator.counters
    assert (1, 1, "k1") == (counters["uploads"], counters["answers_dropped"], received.idempotency_key)
    assert [200, 0] == [record.status for record in emulator.requests]
    assert b"a" == received.path.read_bytes()


def test_a_retry_after_a_lost_answer_is_replayed_with_deduplication(
    make_emulator: Callable[..., Emulator], new_client: Callable[..., httpx.Client]
) -> None:
    """Sent, answer lost, retried with the same key: one stored file, and the retry learns its id."""
    emulator = make_emulator(deduplicate_by_idempotency_key=True)
    client = new_client(emulator)
    headers = {**t_token(client), "Idempotency-Key": "k1"}
    emulator.script("POST", "/api/envio", ScriptedResponse(200, reset_after_body=True))
    with pytest.raises(httpx.TransportError):
        client.post("/api/envio", headers=headers, files={"file": ("a.txt", b"a")})
    retry = client.post("/api/envio", headers=headers, files={"file": ("a.txt", b"a")})
    (received,) = emulator.received
    assert (200, received.path.parent.name) == (retry.status_code, retry.json()["id"])
    assert ({"k1": 1}, 1) == (emulator.uploads_by_key(), emulator.counters["replays_answered"])
