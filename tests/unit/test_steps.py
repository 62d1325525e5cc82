"""API steps (request, multipart): templates, the credential, and every bad answer as an error."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.helpers import FakeClock, RecordingCredential, tls
from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.wire import CredentialAuth
from uploader_daemon.config.presets import MultipartUpload
from uploader_daemon.config.upload import MultipartStep, RequestStep, Step
from uploader_daemon.delivery.facts import FileFacts
from uploader_daemon.delivery.steps import StepContext, run_step
from uploader_daemon.errors import (
    AuthRejectedError,
    BadResponseError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

API = "https://api.example.test/v1"
ORIGIN = ("https", "api.example.test", None)
TOKEN = "t0k3n-value"


def payload_file(tmp_path: Path, name: str = "report.pdf", content: bytes = b"%PDF-1.7 twelve") -> FileFacts:
    path = tmp_path / name
    path.write_bytes(content)
    return FileFacts(path=path, relative_path=name, size=len(content))


def request_step(**settings: Any) -> RequestStep:
    return RequestStep.model_validate({"kind": "request", "name": "create", "path": "/documents", **settings})


def run(
    step: Step,
    facts: FileFacts,
    outputs: Mapping[str, object] | None = None,
    credential: RecordingCredential | None = None,
    activity: ApiActivity | None = None,
) -> dict[str, object]:
    """Run one step against whatever respx routes are active."""

    async def go() -> dict[str, object]:
        async with httpx.AsyncClient(verify=tls()) as client:
            context = StepContext(
                client=client,
                base_url=API,
                auth=CredentialAuth(
                    credential or RecordingCredential(), ORIGIN, activity or ApiActivity(FakeClock())
                ),
                file=facts,
                values={"file": facts.template_values(), "target": {"name": "docs"}, **(outputs or {})},
            )
            return await run_step(step, context)

    return asyncio.run(go())


def form_parts(request: httpx.Request) -> list[tuple[str, str | None, str, bytes]]:
    """``(name, filename, content type, content)`` of each multipart part, in order."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    assert message.is_multipart()
    return [
        (
            str(part.get_param("name", header="content-disposition")),
            part.get_filename(),
            part.get_content_type(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    ]


# --- bad answers to a 2xx -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (
            b"<html>502 Bad Gateway</html>",
            "text/html",
            "the response is not JSON (text/html): <html>502 Bad Gateway",
        ),
        (b"", "application/json", "the response body is empty; expected JSON"),
        (b"   \n", "application/json", "the response body is empty; expected JSON"),
        (b'{"fields": {"key": "k"}}', "application/json", "the response has no 'id' (is missing)"),
        (b'{"id": null, "fields": {}}', "application/json", "the response's 'id' is null"),
        (b'["id", 1]', "application/json", "the response has no 'id' (is missing)"),
        (b'"id"', "application/json", "the response has no 'id' (cannot be looked up in a str)"),
    ],
)
def test_an_unusable_2xx_body_is_a_bad_response_naming_the_step_and_value(
    tmp_path: Path, body: bytes, content_type: str, expected: str
) -> None:
    """HTML, empty, id missing or null: a transient BadResponseError, never a crash."""
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200, content=body, headers={"Content-Type": content_type})
        with pytest.raises(BadResponseError) as caught:
            run(request_step(save={"id": "id"}), payload_file(tmp_path))
    assert isinstance(caught.value, TransientDeliveryError)
    assert "create" == caught.value.step
    assert f"step create: {expected}" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id": 7}', "the response has no 'fields' (is missing)"),
        (b'{"id": 7, "fields": null}', "the response's 'fields' is null"),
    ],
)
def test_a_grant_without_fields_is_a_bad_response_naming_fields(
    tmp_path: Path, body: bytes, expected: str
) -> None:
    """Flow R's create answer must carry the presigned ``fields`` the storage POST needs."""
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200, content=body)
        with pytest.raises(BadResponseError) as caught:
            run(request_step(save={"id": "id", "fields": "fields"}), payload_file(tmp_path))
    assert f"step create: {expected}" == str(caught.value)


PRESIGNED_GRANT = {
    "url": "https://bucket.s3.example.test/",
    "fields": {
        "key": "documents/1/report.pdf",
        "x-amz-algorithm": "AWS4-HMAC-SHA256",
        "x-amz-credential": "AKIAEXAMPLE/20300101/us-east-1/s3/aws4_request",
        "x-amz-date": "20300101T000000Z",
        "x-amz-security-token": "FwoGZXIvYXdzEJr",
        "policy": "eyJleHBpcmF0aW9uIjoiMjAzMC0wMS0wMSJ9",
        "x-amz-signature": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    },
}
PRESIGNED_SECRETS = (
    "AKIAEXAMPLE",
    "FwoGZXIvYXdzEJr",
    "eyJleHBpcmF0aW9uIjoiMjAzMC0wMS0wMSJ9",
    "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
)


def test_a_missing_value_quotes_the_response_without_its_presigned_credentials(tmp_path: Path) -> None:
    """The excerpt that reaches the sidecar keeps the field names but not signature, policy or credential."""
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200, json={"upload": PRESIGNED_GRANT})
        with pytest.raises(BadResponseError) as caught:
            run(request_step(save={"id": "id"}), payload_file(tmp_path))
    quoted = caught.value.body_excerpt or ""
    assert [] == [secret for secret in PRESIGNED_SECRETS if secret in quoted]
    assert '"x-amz-signature":"[REDACTED]"' in quoted
    assert '"key":"documents/1/report.pdf"' in quoted


def test_a_body_that_is_not_json_is_quoted_without_the_credentials_it_echoes(tmp_path: Path) -> None:
    """The error message and the excerpt both lose an echoed Bearer token and a presigned signature."""
    body = (
        b"upstream refused Authorization: Bearer t0k3n-value for https://s3.test/k?X-Amz-Signature=0f1e2d3c"
    )
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200, content=body, headers={"Content-Type": "text/plain"})
        with pytest.raises(BadResponseError) as caught:
            run(request_step(save={"id": "id"}), payload_file(tmp_path))
    for text in (str(caught.value), caught.value.body_excerpt or ""):
        assert "t0k3n-value" not in text
        assert "0f1e2d3c" not in text
    expected = "the response is not JSON (text/plain): upstream refused Authorization: Bearer [REDACTED]"
    assert f"step create: {expected}" in str(caught.value)


def test_a_nested_save_path_names_the_full_path_when_missing(tmp_path: Path) -> None:
    """``upload.fields`` missing inside ``upload`` is reported as ``upload.fields``."""
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200, json={"id": 1, "upload": {"url": "https://s3.test"}})
        with pytest.raises(BadResponseError) as caught:
            run(request_step(save={"id": "id", "fields": "upload.fields"}), payload_file(tmp_path))
    assert "the response has no 'upload.fields' (is missing)" in str(caught.value)


def test_a_step_without_save_ignores_a_body_that_is_not_json(tmp_path: Path) -> None:
    """A confirm step that keeps nothing does not care what the 2xx body holds."""
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200, text="OK")
        assert {} == run(request_step(), payload_file(tmp_path))


def test_saved_values_keep_their_json_types(tmp_path: Path) -> None:
    """Numbers stay numbers and mappings stay mappings for later templates."""
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200, json={"id": 42, "fields": {"key": "k/1"}, "extra": 1})
        saved = run(request_step(save={"id": "id", "fields": "fields"}), payload_file(tmp_path))
    assert {"id": 42, "fields": {"key": "k/1"}} == saved


def test_a_template_that_refers_to_a_missing_earlier_value_is_a_bad_response(tmp_path: Path) -> None:
    """``{create.id}`` without a saved ``create.id`` names the reference, not a KeyError."""
    step = request_step(name="confirm", path="/documents/{create.id}/mark_as_uploaded")
    with respx.mock(), pytest.raises(BadResponseError) as caught:
        run(step, payload_file(tmp_path), outputs={"create": {}})
    assert "step confirm: {create.id} is missing; an earlier response lacked it" == str(caught.value)


# --- statuses --------------------------------------------------------------------------


def test_a_401_is_an_auth_rejection_and_the_credential_learns_which_headers_failed(tmp_path: Path) -> None:
    """The exact headers sent (with their generation) are handed to ``rejected``."""
    credential = RecordingCredential(generation=3)
    with respx.mock() as router:
        route = router.post(f"{API}/documents").respond(401, json={"error": "invalid token"})
        with pytest.raises(AuthRejectedError) as caught:
            run(request_step(), payload_file(tmp_path), credential=credential)
    assert f"Bearer {TOKEN}" == route.calls.last.request.headers["Authorization"]
    assert [credential.sent] == credential.rejections
    assert 3 == credential.rejections[0].generation
    assert 401 == caught.value.status
    assert "step create" in str(caught.value)


def test_a_401_to_a_step_without_the_credential_is_permanent_and_rejects_nothing(tmp_path: Path) -> None:
    """No token went out, so no token is discarded."""
    credential = RecordingCredential()
    with respx.mock() as router:
        route = router.post(f"{API}/documents").respond(401)
        with pytest.raises(PermanentDeliveryError):
            run(request_step(credential=False), payload_file(tmp_path), credential=credential)
    assert "Authorization" not in route.calls.last.request.headers
    assert 0 == credential.asked
    assert [] == credential.rejections


@pytest.mark.parametrize(
    ("status", "header", "seconds"), [(429, "7", 7.0), (503, "120", 120.0), (408, None, None)]
)
def test_throttling_and_server_errors_are_transient_with_retry_after(
    tmp_path: Path, status: int, header: str | None, seconds: float | None
) -> None:
    """408/429/5xx are retried later, as soon as the server's Retry-After allows."""
    headers = {"Retry-After": header} if header else {}
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(status, headers=headers, text="slow down")
        with pytest.raises(TransientDeliveryError) as caught:
            run(request_step(), payload_file(tmp_path))
    assert status == caught.value.status
    assert seconds == caught.value.retry_after
    assert "slow down" == caught.value.body_excerpt


def test_a_404_is_permanent(tmp_path: Path) -> None:
    """A missing task will not appear by retrying."""
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(404, json={"error": "task not found"})
        with pytest.raises(PermanentDeliveryError) as caught:
            run(request_step(), payload_file(tmp_path))
    assert "step create: the server refused the request with 404 Not Found" == str(caught.value)


def test_an_expect_list_accepts_only_its_statuses(tmp_path: Path) -> None:
    """``expect: [201]`` turns a 200 into a refusal and accepts 201."""
    with respx.mock() as router:
        router.post(f"{API}/documents").mock(side_effect=[httpx.Response(201), httpx.Response(200)])
        assert {} == run(request_step(expect=[201]), payload_file(tmp_path))
        with pytest.raises(PermanentDeliveryError):
            run(request_step(expect=[201]), payload_file(tmp_path))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "failed: Connection refused"),
        (httpx.ReadTimeout("The read operation timed out"), "timed out (ReadTimeout)"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "Server disconnected"),
    ],
)
def test_no_response_is_transient_and_names_the_host(tmp_path: Path, error: Exception, expected: str) -> None:
    """Refused, timed out or cut: retry later; the message is one line naming the host."""
    with respx.mock() as router:
        router.post(f"{API}/documents").mock(side_effect=error)
        with pytest.raises(TransientDeliveryError) as caught:
            run(request_step(), payload_file(tmp_path))
    message = str(caught.value)
    assert message.startswith("step create: POST api.example.test ")
    assert expected in message
    assert "Traceback" not in message
    assert "\n" not in message
    assert caught.value.__cause__ is None


def test_a_successful_credentialed_call_marks_the_api_as_in_use(tmp_path: Path) -> None:
    """Token renewal depends on recent use: every credentialed call counts."""
    clock = FakeClock(1_700_000_123.0)
    activity = ApiActivity(clock)
    with respx.mock() as router:
        router.post(f"{API}/documents").respond(200)
        run(request_step(), payload_file(tmp_path), activity=activity)
    assert 1_700_000_123.0 == activity.last_used_at


# --- templates -------------------------------------------------------------------------


def test_templates_fill_the_path_the_query_and_the_json_body(tmp_path: Path) -> None:
    """``{create.id}`` in the path, ``{file.size}`` as a JSON integer, query values as text."""
    step = request_step(
        name="confirm",
        path="/documents/{create.id}/mark_as_uploaded",
        query={"task_id": 99, "name": "{file.name}", "size": "{file.size}"},
        json={
            "document": {
                "data_file_name": "{file.name}",
                "data_file_size": "{file.size}",
                "label": "size {file.size} bytes",
                "warning_duplicate": False,
            }
        },
    )
    facts = payload_file(tmp_path, "relatório final.pdf", b"x" * 1234)
    with respx.mock() as router:
        route = router.post(f"{API}/documents/555/mark_as_uploaded").respond(200)
        run(step, facts, outputs={"create": {"id": 555}})
    request = route.calls.last.request
    assert {"task_id": "99", "name": "relatório final.pdf", "size": "1234"} == dict(request.url.params)
    assert {
        "document": {
            "data_file_name": "relatório final.pdf",
            "data_file_size": 1234,
            "label": "size 1234 bytes",
            "warning_duplicate": False,
        }
    } == json.loads(request.content)
    assert "application/json" == request.headers["Content-Type"]


def test_a_form_body_is_sent_urlencoded_as_text(tmp_path: Path) -> None:
    """``form:`` values are rendered and sent as ``application/x-www-form-urlencoded``."""
    step = request_step(form={"name": "{file.name}", "size": "{file.size}", "keep": True})
    with respx.mock() as router:
        route = router.post(f"{API}/documents").respond(200)
        run(step, payload_file(tmp_path, content=b"abc"))
    request = route.calls.last.request
    assert "application/x-www-form-urlencoded" == request.headers["Content-Type"]
    assert b"name=report.pdf&size=3&keep=true" == request.content


def test_the_credential_is_refused_for_a_url_outside_the_api_origin(tmp_path: Path) -> None:
    """A response-supplied URL on another host never receives the token."""
    credential = RecordingCredential()
    step = request_step(name="fetch", path=None, url="{create.next}", method="GET")
    with respx.mock(assert_all_called=False) as router:
        route = router.get("https://evil.example.test/steal").respond(200)
        with pytest.raises(PermanentDeliveryError) as caught:
            run(
                step,
                payload_file(tmp_path),
                outputs={"create": {"next": "https://evil.example.test/steal?x=1"}},
                credential=credential,
            )
    assert not route.called
    assert 0 == credential.asked
    assert (
        "step fetch: refusing to send the credential to https://evil.example.test/steal, "
        "which is not api.base_url's host" == str(caught.value)
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.test/v1/x",
        "https://api.example.test:8443/v1/x",
        "https://api.example.test.evil.test/x",
    ],
)
def test_the_credential_is_refused_for_another_scheme_port_or_lookalike_host(
    tmp_path: Path, url: str
) -> None:
    """Origin means scheme, host and port together."""
    step = request_step(name="fetch", path=None, url=url, method="GET")
    with respx.mock(), pytest.raises(PermanentDeliveryError):
        run(step, payload_file(tmp_path))


def test_the_credential_goes_to_a_url_on_the_api_origin(tmp_path: Path) -> None:
    """An absolute URL on api.base_url's origin (explicit default port too) gets the token."""
    step = request_step(name="fetch", path=None, url="{create.next}", method="GET")
    with respx.mock() as router:
        route = router.get(f"{API}/next").respond(200)
        run(
            step, payload_file(tmp_path), outputs={"create": {"next": "https://API.example.test:443/v1/next"}}
        )
    assert f"Bearer {TOKEN}" == route.calls.last.request.headers["Authorization"]


def test_a_step_without_the_credential_may_go_anywhere_without_it(tmp_path: Path) -> None:
    """``credential: false`` sends no Authorization header to a foreign host."""
    credential = RecordingCredential()
    step = request_step(name="notify", path=None, url="https://hooks.example.test/x", credential=False)
    with respx.mock() as router:
        route = router.post("https://hooks.example.test/x").respond(204)
        run(step, payload_file(tmp_path), credential=credential)
    assert "Authorization" not in route.calls.last.request.headers
    assert 0 == credential.asked


def test_a_response_url_that_is_not_http_is_a_bad_response(tmp_path: Path) -> None:
    """``{create.next}`` holding ``ftp://...`` or garbage is reported, not sent."""
    step = request_step(name="fetch", path=None, url="{create.next}", method="GET", credential=False)
    for bad in ("ftp://files.example.test/x", "not a url", "http://[::1/x"):
        with respx.mock(), pytest.raises(BadResponseError) as caught:
            run(step, payload_file(tmp_path), outputs={"create": {"next": bad}})
        assert "step fetch: the URL" in str(caught.value)
        assert "is not an http(s) URL" in str(caught.value)


def test_a_header_template_that_renders_non_ascii_is_permanent(tmp_path: Path) -> None:
    """``X-File-Name: {file.name}`` for ``relatório.pdf`` is refused with a sentence, not a crash."""
    step = request_step(headers={"X-File-Name": "{file.name}"})
    with respx.mock(), pytest.raises(PermanentDeliveryError) as caught:
        run(step, payload_file(tmp_path, "relatório.pdf"))
    assert "step create:" in str(caught.value)
    assert "X-File-Name header value is not ASCII" in str(caught.value)


def test_configured_headers_are_rendered_and_sent_with_the_credential(tmp_path: Path) -> None:
    """Static headers and the credential's headers go out together."""
    step = request_step(headers={"X-Upload-Size": "{file.size}", "Accept": "application/json"})
    with respx.mock() as router:
        route = router.post(f"{API}/documents").respond(200)
        run(step, payload_file(tmp_path, content=b"12345"))
    headers = route.calls.last.request.headers
    assert "5" == headers["X-Upload-Size"]
    assert "application/json" == headers["Accept"]
    assert f"Bearer {TOKEN}" == headers["Authorization"]


# --- multipart to the API --------------------------------------------------------------


def test_a_multipart_step_sends_the_fields_then_the_file_with_the_credential(tmp_path: Path) -> None:
    """Field name, file name, rendered extra fields and the bearer token all arrive."""
    step = MultipartStep.model_validate(
        {
            "kind": "multipart",
            "name": "submit",
            "path": "/api/tasks",
            "file_field": "upload",
            "fields": {"conversion_type": "mp4", "original": "{file.name}", "bytes": "{file.size}"},
            "save": {"task_id": "task_id"},
        }
    )
    facts = payload_file(tmp_path, "clip.mov", b"\x00\x01movie-bytes")
    with respx.mock() as router:
        answer = {"message": "Conversion started", "task_id": "t-1"}
        route = router.post(f"{API}/api/tasks").respond(200, json=answer)
        saved = run(step, facts)
    request = route.calls.last.request
    assert {"task_id": "t-1"} == saved
    assert f"Bearer {TOKEN}" == request.headers["Authorization"]
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert [
        ("conversion_type", None, "text/plain", b"mp4"),
        ("original", None, "text/plain", b"clip.mov"),
        ("bytes", None, "text/plain", b"13"),
        ("upload", "clip.mov", "video/quicktime", b"\x00\x01movie-bytes"),
    ] == form_parts(request)


def test_the_flow_t_preset_posts_the_file_to_api_envio(tmp_path: Path) -> None:
    """``type: multipart`` is one credentialed POST of the file as ``file``."""
    (step,) = MultipartUpload.model_validate({"type": "multipart"}).steps
    with respx.mock() as router:
        route = router.post(f"{API}/api/envio").respond(200, json={"ok": True})
        assert {} == run(step, payload_file(tmp_path, "nota.xml", b"<nota/>"))
    request = route.calls.last.request
    assert f"Bearer {TOKEN}" == request.headers["Authorization"]
    assert [("file", "nota.xml", "application/xml", b"<nota/>")] == form_parts(request)


def test_a_multipart_401_discards_the_token_that_was_used(tmp_path: Path) -> None:
    """Flow T: a 401 to the send cancels it and the token is treated as invalid."""
    credential = RecordingCredential()
    (step,) = MultipartUpload.model_validate({"type": "multipart"}).steps
    with respx.mock() as router:
        router.post(f"{API}/api/envio").respond(401)
        with pytest.raises(AuthRejectedError):
            run(step, payload_file(tmp_path), credential=credential)
    assert [credential.sent] == credential.rejections
