"""Poll steps (until a terminal value, within a deadline) and download steps (streamed, never overwriting)."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
import respx

from tests.helpers import FakeClock, tls
from uploader_daemon import file_moves
from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import StaticCredential
from uploader_daemon.auth.wire import CredentialAuth
from uploader_daemon.config.presets import ConversionTaskUpload, PresignedStatusUpload
from uploader_daemon.config.upload import DownloadStep, PollStep, Step
from uploader_daemon.delivery import steps
from uploader_daemon.delivery.facts import FileFacts
from uploader_daemon.delivery.steps import StepContext, run_step
from uploader_daemon.errors import (
    BadResponseError,
    PermanentDeliveryError,
    PollDeadlineError,
    TransientDeliveryError,
)
from uploader_daemon.redaction import REDACTED

API = "https://convert.example.test"
ORIGIN = ("https", "convert.example.test", None)
TOKEN_HEADERS = {"Authorization": "Bearer t0k3n-value"}


def payload_file(tmp_path: Path, name: str = "clip.mov", content: bytes = b"movie") -> FileFacts:
    path = tmp_path / name
    path.write_bytes(content)
    return FileFacts(path=path, relative_path=name, size=len(content))


def run(
    step: Step,
    facts: FileFacts,
    outputs: Mapping[str, object] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, object]:
    """Run one step; respx routes (or ``transport``) answer."""
    return asyncio.run(run_async(step, facts, outputs, transport))


async def run_async(
    step: Step,
    facts: FileFacts,
    outputs: Mapping[str, object] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, object]:
    """:func:`run` on the caller's event loop."""
    async with httpx.AsyncClient(verify=tls(), transport=transport) as client:
        context = StepContext(
            client=client,
            base_url=API,
            auth=CredentialAuth(StaticCredential(TOKEN_HEADERS), ORIGIN, ApiActivity(FakeClock())),
            file=facts,
            values={"file": facts.template_values(), "target": {"name": "video"}, **(outputs or {})},
        )
        return await run_step(step, context)


def poll_step(**settings: Any) -> PollStep:
    return PollStep.model_validate(
        {
            "kind": "poll",
            "name": "status",
            "path": "/consult-status",
            "query": {"file_id": "{upload.file_id}"},
            "status_field": "status",
            "success": ["completed"],
            "failure": ["error"],
            "details_field": "details",
            "interval": 0.01,
            "deadline": 0.2,
            **settings,
        }
    )


def download_step(output_dir: Path, **settings: Any) -> DownloadStep:
    return DownloadStep.model_validate(
        {
            "kind": "download",
            "name": "result",
            "path": "/api/download",
            "query": {"task_id": "{submit.task_id}"},
            "output_dir": str(output_dir),
            "filename": "{file.stem}.mp4",
            **settings,
        }
    )


UPLOAD = {"upload": {"file_id": "f-17"}}
SUBMIT = {"submit": {"task_id": "t-9"}}


# --- poll ------------------------------------------------------------------------------


def test_a_poll_repeats_until_success_and_returns_status_and_details(tmp_path: Path) -> None:
    """processing, processing, completed: three requests, and the terminal answer is kept."""
    with respx.mock() as router:
        route = router.get(f"{API}/consult-status", params={"file_id": "f-17"}).mock(
            side_effect=[
                httpx.Response(200, json={"status": "processing", "details": None}),
                httpx.Response(200, json={"status": "processing", "details": "50%"}),
                httpx.Response(200, json={"status": "completed", "details": {"pages": 3}}),
            ]
        )
        saved = run(poll_step(), payload_file(tmp_path), UPLOAD)
    assert {"status": "completed", "details": {"pages": 3}} == saved
    assert 3 == route.call_count
    assert "Bearer t0k3n-value" == route.calls.last.request.headers["Authorization"]


def test_a_failure_value_is_permanent_and_carries_the_servers_details(tmp_path: Path) -> None:
    """Flow P: ``error`` is a failed delivery with the details logged."""
    with respx.mock() as router:
        router.get(f"{API}/consult-status").respond(200, json={"status": "error", "details": "virus found"})
        with pytest.raises(PermanentDeliveryError) as caught:
            run(poll_step(), payload_file(tmp_path), UPLOAD)
    assert "virus found" == caught.value.details
    assert "step status: the server reported 'error'" == str(caught.value)
    assert "virus found" in (caught.value.body_excerpt or "")


def test_a_reported_failure_quotes_the_answer_and_details_without_presigned_credentials(
    tmp_path: Path,
) -> None:
    """Details carrying a presigned grant reach the sidecar with signature, policy and credential blanked."""
    grant = {
        "url": "https://bucket.s3.test/",
        "fields": {
            "key": "in/clip.mov",
            "x-amz-credential": "AKIAEX/2030",
            "policy": "eyJwb2xp",
            "x-amz-signature": "0f1e2d",
        },
    }
    with respx.mock() as router:
        router.get(f"{API}/consult-status").respond(
            200, json={"status": "error", "details": {"retry_with": grant}}
        )
        with pytest.raises(PermanentDeliveryError) as caught:
            run(poll_step(), payload_file(tmp_path), UPLOAD)
    assert {
        "retry_with": {
            "url": "https://bucket.s3.test/",
            "fields": {
                "key": "in/clip.mov",
                "x-amz-credential": REDACTED,
                "policy": REDACTED,
                "x-amz-signature": REDACTED,
            },
        }
    } == caught.value.details
    quoted = caught.value.body_excerpt or ""
    assert [] == [secret for secret in ("AKIAEX/2030", "eyJwb2xp", "0f1e2d") if secret in quoted]
    assert '"key":"in/clip.mov"' in quoted


def test_the_conversion_preset_fails_on_failure_with_the_result_as_details(tmp_path: Path) -> None:
    """Flow C: ``FAILURE`` ends the poll; ``result`` is the details."""
    steps = ConversionTaskUpload.model_validate(
        {
            "type": "conversion_task",
            "conversion_type": "mp4",
            "output_dir": str(tmp_path / "out"),
            "poll": {"interval": "10ms", "deadline": "1s"},
        }
    ).steps
    with respx.mock() as router:
        router.get(f"{API}/api/tasks/t-9").mock(
            side_effect=[
                httpx.Response(200, json={"state": "PENDING", "result": None}),
                httpx.Response(200, json={"state": "FAILURE", "result": "codec not supported"}),
            ]
        )
        with pytest.raises(PermanentDeliveryError) as caught:
            run(steps[1], payload_file(tmp_path), SUBMIT)
    assert "codec not supported" == caught.value.details


def test_a_poll_past_its_deadline_is_a_transient_deadline_error(tmp_path: Path) -> None:
    """Never terminal within 0.1 s: PollDeadlineError, which is retried later."""
    with respx.mock() as router:
        route = router.get(f"{API}/consult-status").respond(200, json={"status": "processing"})
        with pytest.raises(PollDeadlineError) as caught:
            run(poll_step(deadline=0.1), payload_file(tmp_path), UPLOAD)
    assert isinstance(caught.value, TransientDeliveryError)
    assert route.call_count >= 2
    assert f"step status: still 'processing' after {route.call_count} polls over 0.1s" == str(caught.value)


@pytest.mark.parametrize(("value", "success"), [(2, "2"), (1.5, "1.5"), (True, "true")])
def test_numeric_and_boolean_status_values_are_compared_as_text(
    tmp_path: Path, value: object, success: str
) -> None:
    """``{"status": 2}`` matches ``success: ["2"]``."""
    with respx.mock() as router:
        router.get(f"{API}/consult-status").mock(
            side_effect=[
                httpx.Response(200, json={"status": 0}),
                httpx.Response(200, json={"status": value}),
            ]
        )
        saved = run(poll_step(success=[success], failure=["-1"]), payload_file(tmp_path), UPLOAD)
    assert success == saved["status"]


def test_a_numeric_failure_value_is_compared_as_text(tmp_path: Path) -> None:
    """``{"status": -1}`` matches ``failure: ["-1"]``."""
    with respx.mock() as router:
        router.get(f"{API}/consult-status").respond(200, json={"status": -1, "details": "rejected"})
        with pytest.raises(PermanentDeliveryError):
            run(poll_step(success=["2"], failure=["-1"]), payload_file(tmp_path), UPLOAD)


def test_values_to_save_are_read_from_the_terminal_answer_only(tmp_path: Path) -> None:
    """A ``save`` path that only exists once the task is done does not break the waiting polls."""
    with respx.mock() as router:
        router.get(f"{API}/consult-status").mock(
            side_effect=[
                httpx.Response(200, json={"status": "processing", "result": None}),
                httpx.Response(
                    200, json={"status": "completed", "result": {"url": "https://cdn.test/r.pdf"}}
                ),
            ]
        )
        saved = run(poll_step(save={"result_url": "result.url"}), payload_file(tmp_path), UPLOAD)
    assert "https://cdn.test/r.pdf" == saved["result_url"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>502 Bad Gateway</html>", "the response is not JSON"),
        (b'{"details": "x"}', "the response has no 'status' (is missing)"),
        (b'{"status": null}', "the response's 'status' is null"),
        (b"", "the response body is empty"),
    ],
)
def test_a_poll_answer_without_a_status_is_a_bad_response(tmp_path: Path, body: bytes, expected: str) -> None:
    """A 200 that does not say the status is reported, never a crash."""
    with respx.mock() as router:
        router.get(f"{API}/consult-status").respond(200, content=body)
        with pytest.raises(BadResponseError) as caught:
            run(poll_step(), payload_file(tmp_path), UPLOAD)
    assert f"step status: {expected}" in str(caught.value)


def test_a_server_error_while_polling_is_transient(tmp_path: Path) -> None:
    """A 503 between polls stops this attempt; the poll resumes on the next one."""
    with respx.mock() as router:
        router.get(f"{API}/consult-status").mock(
            side_effect=[
                httpx.Response(200, json={"status": "processing"}),
                httpx.Response(503, headers={"Retry-After": "2"}),
            ]
        )
        with pytest.raises(TransientDeliveryError) as caught:
            run(poll_step(), payload_file(tmp_path), UPLOAD)
    assert 2.0 == caught.value.retry_after


def test_the_presigned_preset_polls_consult_status_with_the_file_id(tmp_path: Path) -> None:
    """Flow P's fourth step sends ``file_id`` from the first step's answer."""
    steps = PresignedStatusUpload.model_validate(
        {"type": "presigned_with_status", "poll": {"interval": "10ms", "deadline": "1s"}}
    ).steps
    with respx.mock() as router:
        answer = {"status": "completed", "details": "ok"}
        route = router.get(f"{API}/consult-status").respond(200, json=answer)
        assert {"status": "completed", "details": "ok"} == run(steps[3], payload_file(tmp_path), UPLOAD)
    assert "f-17" == route.calls.last.request.url.params["file_id"]


# --- download --------------------------------------------------------------------------


class PeekingStream(httpx.AsyncByteStream):
    """A response body in chunks that runs ``peek`` between them, as a slow server would."""

    def __init__(self, chunks: list[bytes], peek: Callable[[], None], fail_after: int | None = None) -> None:
        self._chunks = chunks
        self._peek = peek
        self._fail_after = fail_after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for position, chunk in enumerate(self._chunks):
            if position == self._fail_after:
                raise httpx.ReadError("connection reset by peer")
            yield chunk
            self._peek()


class OneResponse(httpx.AsyncBaseTransport):
    """The transport edge answering every request with one prepared response."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self._response


def test_a_download_is_written_to_a_part_file_first_then_renamed(tmp_path: Path) -> None:
    """While the body arrives only a ``.part`` file exists; afterwards only the final name."""
    out = tmp_path / "out"
    seen: list[list[str]] = []

    def peek() -> None:
        seen.append(sorted(path.name for path in out.iterdir()))

    chunks = [b"a" * 300_000, b"b" * 300_000, b"c" * 10]
    response = httpx.Response(
        200,
        stream=PeekingStream(chunks, peek),
        headers={"Content-Disposition": 'attachment; filename="converted.mp4"', "Content-Length": "600010"},
    )
    saved = run(download_step(out), payload_file(tmp_path), SUBMIT, transport=OneResponse(response))
    assert seen
    assert all(
        len(names) == 1 and names[0].startswith("converted.mp4.") and names[0].endswith(".part")
        for names in seen
    )
    assert ["converted.mp4"] == sorted(path.name for path in out.iterdir())
    assert b"".join(chunks) == (out / "converted.mp4").read_bytes()
    assert {"path": str(out / "converted.mp4"), "filename": "converted.mp4"} == saved


def test_a_download_uses_the_content_disposition_name(tmp_path: Path) -> None:
    """The server's file name wins over the template; the request carries the task id and token."""
    out = tmp_path / "out"
    with respx.mock() as router:
        route = router.get(f"{API}/api/download", params={"task_id": "t-9"}).respond(
            200,
            content=b"MP4DATA",
            headers={"Content-Disposition": "attachment; filename=clip-converted.mp4"},
        )
        saved = run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert "clip-converted.mp4" == saved["filename"]
    assert b"MP4DATA" == (out / "clip-converted.mp4").read_bytes()
    assert "Bearer t0k3n-value" == route.calls.last.request.headers["Authorization"]


def test_a_download_decodes_an_rfc5987_file_name(tmp_path: Path) -> None:
    """``filename*=UTF-8''relat%C3%B3rio.pdf`` becomes ``relatório.pdf``."""
    out = tmp_path / "out"
    with respx.mock() as router:
        router.get(f"{API}/api/download").respond(
            200,
            content=b"PDF",
            headers={
                "Content-Disposition": "attachment; filename=\"relatorio.pdf\"; filename*=UTF-8''relat%C3%B3rio.pdf",  # noqa: E501
            },
        )
        saved = run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert "relatório.pdf" == saved["filename"]
    assert b"PDF" == (out / "relatório.pdf").read_bytes()


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="..\\\\..\\\\windows\\\\win.ini"', "win.ini"),
        ("attachment; filename*=UTF-8''..%2F..%2Fetc%2Fcron.d%2Fevil", "evil"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ('attachment; filename="/abs/path/result.mp4"', "result.mp4"),
    ],
)
def test_a_malicious_download_name_is_reduced_to_a_plain_name_in_the_output_folder(
    tmp_path: Path, disposition: str, expected: str
) -> None:
    """Folders, parent references and leading dots are stripped; nothing lands outside."""
    out = tmp_path / "deep" / "out"
    with respx.mock() as router:
        router.get(f"{API}/api/download").respond(
            200, content=b"x", headers={"Content-Disposition": disposition}
        )
        saved = run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert expected == saved["filename"]
    assert [expected] == [path.name for path in out.iterdir()]
    assert sorted(["clip.mov", "deep"]) == sorted(path.name for path in tmp_path.iterdir())


def test_a_download_without_a_server_name_uses_the_template(tmp_path: Path) -> None:
    """No Content-Disposition (or one reduced to nothing): ``{file.stem}.mp4``."""
    out = tmp_path / "out"
    with respx.mock() as router:
        router.get(f"{API}/api/download").mock(
            side_effect=[
                httpx.Response(200, content=b"one"),
                httpx.Response(
                    200, content=b"two", headers={"Content-Disposition": 'attachment; filename=".."'}
                ),
            ]
        )
        first = run(download_step(out), payload_file(tmp_path, "holiday.mov"), SUBMIT)
        second = run(download_step(out), payload_file(tmp_path, "holiday.mov"), SUBMIT)
    assert "holiday.mp4" == first["filename"]
    assert "holiday.1.mp4" == second["filename"]


def test_a_download_never_overwrites_an_earlier_result(tmp_path: Path) -> None:
    """The second result of the same name is ``name.1.ext``; the first is untouched."""
    out = tmp_path / "out"
    header = {"Content-Disposition": 'attachment; filename="result.mp4"'}
    with respx.mock() as router:
        router.get(f"{API}/api/download").mock(
            side_effect=[
                httpx.Response(200, content=b"first", headers=header),
                httpx.Response(200, content=b"second", headers=header),
            ]
        )
        run(download_step(out), payload_file(tmp_path), SUBMIT)
        saved = run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert "result.1.mp4" == saved["filename"]
    assert b"first" == (out / "result.mp4").read_bytes()
    assert b"second" == (out / "result.1.mp4").read_bytes()
    assert ["result.1.mp4", "result.mp4"] == sorted(path.name for path in out.iterdir())


def test_a_body_shorter_than_its_content_length_is_transient_and_leaves_nothing(tmp_path: Path) -> None:
    """A cut download is retried; no final file and no ``.part`` remain."""
    out = tmp_path / "out"
    with respx.mock() as router:
        router.get(f"{API}/api/download").respond(
            200,
            content=b"only part",
            headers={"Content-Length": "100", "Content-Disposition": "attachment; filename=r.mp4"},
        )
        with pytest.raises(TransientDeliveryError) as caught:
            run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert "step result: the download stopped after 9 of 100 bytes" == str(caught.value)
    assert [] == list(out.iterdir())


def test_a_gzip_encoded_download_is_saved_decoded_and_judged_by_its_encoded_length(tmp_path: Path) -> None:
    """Content-Length counts the gzip bytes on the wire; the file holds the decoded content."""
    out = tmp_path / "out"
    content = b"frame " * 20_000
    encoded = gzip.compress(content)
    with respx.mock() as router:
        route = router.get(f"{API}/api/download").respond(
            200,
            content=encoded,
            headers={"Content-Encoding": "gzip", "Content-Disposition": "attachment; filename=r.mp4"},
        )
        saved = run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert str(len(encoded)) == route.calls.last.response.headers["Content-Length"]
    assert "r.mp4" == saved["filename"]
    assert content == (out / "r.mp4").read_bytes()
    assert ["r.mp4"] == [path.name for path in out.iterdir()]


def test_a_gzip_encoded_download_cut_short_is_transient_counting_encoded_bytes(tmp_path: Path) -> None:
    """A gzip body shorter than its Content-Length is still caught, in bytes on the wire."""
    out = tmp_path / "out"
    encoded = gzip.compress(b"frame " * 20_000)
    response = httpx.Response(
        200,
        stream=PeekingStream([encoded], lambda: None),
        headers={"Content-Encoding": "gzip", "Content-Length": str(len(encoded) + 50)},
    )
    with pytest.raises(TransientDeliveryError) as caught:
        run(download_step(out), payload_file(tmp_path), SUBMIT, transport=OneResponse(response))
    assert f"step result: the download stopped after {len(encoded)} of {len(encoded) + 50} bytes" == str(
        caught.value
    )
    assert [] == list(out.iterdir())


class LoopWitness:
    """Wraps blocking calls so each one checks the event loop still runs while it works.

    A call made on the loop's own thread would wait for a loop that cannot turn: it
    records ``False`` after the deadline instead of hanging the test (and later calls
    do not wait again).
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.calls: list[tuple[str, bool]] = []

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def witnessed(*args: Any, **kwargs: Any) -> Any:
            assert self.loop is not None
            answered = threading.Event()
            self.loop.call_soon_threadsafe(answered.set)
            blocked_before = any(not ran for _, ran in self.calls)
            self.calls.append((name, not blocked_before and answered.wait(2.0)))
            return function(*args, **kwargs)

        return witnessed


class WitnessedFile:
    """A ``.part`` file whose writes are witnessed."""

    def __init__(self, handle: BinaryIO, witness: LoopWitness) -> None:
        self._handle = handle
        self.write = witness.wrap("write", handle.write)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> WitnessedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()


def test_the_download_is_written_synced_and_moved_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flow C results are gigabytes: other deliveries keep running while one is saved."""
    out = tmp_path / "out"
    witness = LoopWitness()
    real_open = Path.open

    def open_part(path: Path, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(path, *args, **kwargs)
        return WitnessedFile(handle, witness) if path.name.endswith(".part") else handle

    monkeypatch.setattr(Path, "open", open_part)
    monkeypatch.setattr(os, "fsync", witness.wrap("fsync", os.fsync))
    monkeypatch.setattr(steps, "place", witness.wrap("place", file_moves.place))
    content = os.urandom(3 * 1024 * 1024 + 5)

    async def go() -> dict[str, object]:
        witness.loop = asyncio.get_running_loop()
        with respx.mock() as router:
            router.get(f"{API}/api/download").respond(
                200, content=content, headers={"Content-Disposition": "attachment; filename=big.mp4"}
            )
            return await run_async(download_step(out), payload_file(tmp_path), SUBMIT)

    saved = asyncio.run(go())
    assert "big.mp4" == saved["filename"]
    assert content == (out / "big.mp4").read_bytes()
    names = [name for name, _ in witness.calls]
    assert [] == [name for name, ran in witness.calls if not ran]
    assert ["fsync", "place"] == names[-2:]
    assert 1 <= names.count("write") <= 4  # MiB-sized chunks: few thread hops


def test_a_cancelled_download_leaves_no_part_file(tmp_path: Path) -> None:
    """Shutdown cancels a delivery mid-download: the half-written ``.part`` is removed."""
    out = tmp_path / "out"

    class StalledStream(httpx.AsyncByteStream):
        def __init__(self) -> None:
            self.started = asyncio.Event()

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"first chunk"
            self.started.set()
            await asyncio.Event().wait()  # the rest never comes
            yield b"never"

    async def go() -> list[str]:
        stream = StalledStream()
        response = httpx.Response(
            200, stream=stream, headers={"Content-Disposition": "attachment; filename=r.mp4"}
        )
        task = asyncio.create_task(
            run_async(download_step(out), payload_file(tmp_path), SUBMIT, OneResponse(response))
        )
        await asyncio.wait_for(stream.started.wait(), 5)
        during = sorted(path.name for path in out.iterdir())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return during

    during = asyncio.run(go())
    assert 1 == len(during)
    assert during[0].endswith(".part")
    assert [] == list(out.iterdir())


def test_a_connection_lost_mid_download_is_transient_and_leaves_nothing(tmp_path: Path) -> None:
    """A reset after the first chunk: retried later, the ``.part`` file is removed."""
    out = tmp_path / "out"
    stream = PeekingStream([b"a" * 1000, b"b" * 1000], lambda: None, fail_after=1)
    response = httpx.Response(200, stream=stream)
    with pytest.raises(TransientDeliveryError) as caught:
        run(download_step(out), payload_file(tmp_path), SUBMIT, transport=OneResponse(response))
    assert "step result: the download broke off: connection reset by peer" == str(caught.value)
    assert [] == list(out.iterdir())


def test_a_download_refused_by_the_server_is_classified_and_leaves_nothing(tmp_path: Path) -> None:
    """404 is permanent with the body excerpt; no output folder content appears."""
    out = tmp_path / "out"
    with respx.mock() as router:
        router.get(f"{API}/api/download").respond(404, json={"error": "no such task"})
        with pytest.raises(PermanentDeliveryError) as caught:
            run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert '{"error":"no such task"}' == caught.value.body_excerpt
    assert not out.exists() or [] == list(out.iterdir())


def test_a_download_that_gets_no_answer_is_transient(tmp_path: Path) -> None:
    """A refused connection names the host and leaves the output folder alone."""
    out = tmp_path / "out"
    with respx.mock() as router:
        refused = httpx.ConnectError("[Errno 111] Connection refused")
        router.get(f"{API}/api/download").mock(side_effect=refused)
        with pytest.raises(TransientDeliveryError) as caught:
            run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert "step result: GET convert.example.test failed: Connection refused" == str(caught.value)


def test_a_download_name_too_long_for_the_filesystem_is_shortened(tmp_path: Path) -> None:
    """A 300-character server name still lands, cut to fit with its extension kept."""
    out = tmp_path / "out"
    long_name = "x" * 300 + ".mp4"
    with respx.mock() as router:
        router.get(f"{API}/api/download").respond(
            200, content=b"v", headers={"Content-Disposition": f'attachment; filename="{long_name}"'}
        )
        saved = run(download_step(out), payload_file(tmp_path), SUBMIT)
    name = str(saved["filename"])
    assert name.endswith(".mp4")
    assert len(name.encode()) <= 200
    assert b"v" == (out / name).read_bytes()


def test_an_output_folder_that_cannot_be_written_is_a_transient_error_naming_it(tmp_path: Path) -> None:
    """``output_dir`` blocked by a plain file: a sentence naming the folder, not an OSError."""
    out = tmp_path / "out"
    out.write_text("not a folder")
    with respx.mock() as router:
        router.get(f"{API}/api/download").respond(200, content=b"v")
        with pytest.raises(TransientDeliveryError) as caught:
            run(download_step(out), payload_file(tmp_path), SUBMIT)
    assert f"step result: cannot write the result into {out}: " in str(caught.value)
    assert "not a folder" == out.read_text()
