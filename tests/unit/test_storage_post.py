"""The presigned storage POST: every returned field, the extras, the file last, no API credential."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.helpers import FakeClock, RecordingCredential, tls
from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.wire import CredentialAuth
from uploader_daemon.config.presets import RunrunDocumentUpload
from uploader_daemon.config.upload import StoragePostStep
from uploader_daemon.delivery.facts import FileFacts
from uploader_daemon.delivery.steps import StepContext, run_step
from uploader_daemon.errors import (
    BadResponseError,
    PermanentDeliveryError,
    StaleUploadGrantError,
    TransientDeliveryError,
)

API = "https://runrun.example.test/api/v1.0"
ORIGIN = ("https", "runrun.example.test", None)
BUCKET = "https://bucket.s3.example.test/"

SIGV4_FIELDS = {
    "key": "documents/123/report.pdf",
    "Policy": "eyJleHBpcmF0aW9uIjoiMjAzMC0wMS0wMVQwMDowMDowMFoifQ==",
    "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
    "X-Amz-Credential": "AKIAEXAMPLE/20300101/us-east-1/s3/aws4_request",
    "X-Amz-Date": "20300101T000000Z",
    "X-Amz-Signature": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
}
SIGV2_FIELDS = {
    "key": "uploads/abc/${filename}",
    "policy": "eyJjb25kaXRpb25zIjpbXX0=",
    "signature": "c2lnbmF0dXJl",
    "AWSAccessKeyId": "AKIAEXAMPLE",
    "acl": "private",
    "Content-Type": "application/pdf",
}


# Everything the API may carry, to prove none of it reaches the storage host.
API_HEADERS = {"Authorization": "Bearer t0k3n-value", "app-key": "k", "user-token": "u"}


def payload_file(tmp_path: Path, name: str = "report.pdf", content: bytes = b"%PDF-1.7 body") -> FileFacts:
    path = tmp_path / name
    path.write_bytes(content)
    return FileFacts(path=path, relative_path=name, size=len(content))


def storage_step(**settings: Any) -> StoragePostStep:
    return StoragePostStep.model_validate(
        {"kind": "storage_post", "name": "store", "url": BUCKET, "fields": "{create.fields}", **settings}
    )


def run(
    step: StoragePostStep,
    facts: FileFacts,
    outputs: Mapping[str, object],
    credential: RecordingCredential | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, object]:
    """Run the storage step; respx routes (or ``transport``) answer."""

    async def go() -> dict[str, object]:
        headers = {"User-Agent": "uploader-daemon"}
        async with httpx.AsyncClient(verify=tls(), transport=transport, headers=headers) as client:
            context = StepContext(
                client=client,
                base_url=API,
                auth=CredentialAuth(
                    credential or RecordingCredential(API_HEADERS), ORIGIN, ApiActivity(FakeClock())
                ),
                file=facts,
                values={"file": facts.template_values(), "target": {"name": "docs"}, **outputs},
            )
            return await run_step(step, context)

    return asyncio.run(go())


def form_parts(content_type: str, body: bytes) -> list[tuple[str, str | None, str, bytes]]:
    """``(name, filename, content type, content)`` of each multipart part, in order."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
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


def s3_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        "<RequestId>4442587FB7D0A2F9</RequestId></Error>"
    ).encode()


# --- what is sent --------------------------------------------------------------------


def test_sigv4_fields_are_all_forwarded_then_the_extras_then_the_file_last(tmp_path: Path) -> None:
    """The six SigV4 fields in order, ``success_action_status``, and the file part at the end."""
    step = storage_step(extra_fields={"success_action_status": "201"})
    with respx.mock() as router:
        route = router.post(BUCKET).respond(201)
        assert {} == run(step, payload_file(tmp_path), {"create": {"id": 9, "fields": SIGV4_FIELDS}})
    request = route.calls.last.request
    parts = form_parts(request.headers["Content-Type"], request.content)
    assert [
        *[(name, None, "text/plain", value.encode()) for name, value in SIGV4_FIELDS.items()],
        ("success_action_status", None, "text/plain", b"201"),
        ("file", "report.pdf", "application/pdf", b"%PDF-1.7 body"),
    ] == parts


def test_sigv2_fields_are_forwarded_and_their_content_type_labels_the_file(tmp_path: Path) -> None:
    """The older generation's fields go out untouched; the file part uses the policy's Content-Type."""
    fields = {**SIGV2_FIELDS, "Content-Type": "application/octet-stream"}
    with respx.mock() as router:
        route = router.post(BUCKET).respond(204)
        run(storage_step(), payload_file(tmp_path), {"create": {"fields": fields}})
    request = route.calls.last.request
    parts = form_parts(request.headers["Content-Type"], request.content)
    assert [name for name, *_ in parts] == [*fields, "file"]
    assert [value.encode() for value in fields.values()] == [content for *_, content in parts[:-1]]
    assert ("file", "report.pdf", "application/octet-stream", b"%PDF-1.7 body") == parts[-1]


def test_the_storage_never_receives_the_api_credential(tmp_path: Path) -> None:
    """No Authorization or API key header goes to storage; the credential is not even asked for."""
    credential = RecordingCredential(API_HEADERS)
    with respx.mock() as router:
        route = router.post(BUCKET).respond(204)
        run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}}, credential)
    headers = route.calls.last.request.headers
    assert "authorization" not in headers
    assert "app-key" not in headers
    assert "user-token" not in headers
    assert 0 == credential.asked


def test_the_runrun_preset_posts_to_the_configured_bucket_with_success_action_status(tmp_path: Path) -> None:
    """Flow R: the storage URL is configuration and ``success_action_status=201`` is added."""
    steps = RunrunDocumentUpload.model_validate(
        {"type": "runrun_document", "task_id": 77, "storage": {"url": "https://bucket.s3.example.test"}}
    ).steps
    store = steps[1]
    assert isinstance(store, StoragePostStep)
    with respx.mock() as router:
        route = router.post("https://bucket.s3.example.test").respond(201)
        run(store, payload_file(tmp_path), {"create": {"id": 1, "fields": SIGV2_FIELDS}})
    request = route.calls.last.request
    names = [name for name, *_ in form_parts(request.headers["Content-Type"], request.content)]
    assert [*SIGV2_FIELDS, "success_action_status", "file"] == names


def test_a_storage_url_from_the_response_is_used(tmp_path: Path) -> None:
    """Flow G: ``{locate.url}`` names the bucket."""
    step = storage_step(url="{locate.url}", fields="{locate.fields}")
    with respx.mock() as router:
        route = router.post("https://gateway-bucket.s3.example.test/").respond(204)
        run(
            step,
            payload_file(tmp_path),
            {"locate": {"url": "https://gateway-bucket.s3.example.test/", "fields": {"key": "a/b"}}},
        )
    assert route.called


def test_fixed_fields_given_as_a_mapping_are_rendered_as_templates(tmp_path: Path) -> None:
    """``fields: {key: '{create.key}'}`` sends the saved key, not the literal template."""
    step = storage_step(fields={"key": "{create.key}", "acl": "private"})
    with respx.mock() as router:
        route = router.post(BUCKET).respond(204)
        run(step, payload_file(tmp_path), {"create": {"key": "uploads/42/report.pdf"}})
    request = route.calls.last.request
    parts = form_parts(request.headers["Content-Type"], request.content)
    assert [("key", b"uploads/42/report.pdf"), ("acl", b"private")] == [(p[0], p[3]) for p in parts[:2]]


def test_scalar_field_values_are_sent_as_text(tmp_path: Path) -> None:
    """A number or boolean in the returned fields is forwarded as its text."""
    with respx.mock() as router:
        route = router.post(BUCKET).respond(204)
        fields = {"key": "k", "max": 10, "flag": True}
        run(storage_step(), payload_file(tmp_path), {"create": {"fields": fields}})
    request = route.calls.last.request
    parts = form_parts(request.headers["Content-Type"], request.content)
    assert [("key", b"k"), ("max", b"10"), ("flag", b"true")] == [(p[0], p[3]) for p in parts[:3]]


class StreamSpy(httpx.AsyncBaseTransport):
    """The transport edge: records how the request body arrives, then answers 204."""

    def __init__(self) -> None:
        self.stream_type: type | None = None
        self.chunk_sizes: list[int] = []
        self.content_length: str | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.stream_type = type(request.stream)
        self.content_length = request.headers.get("Content-Length")
        assert isinstance(request.stream, AsyncIterator | httpx.AsyncByteStream)
        async for chunk in request.stream:  # type: ignore[union-attr]
            self.chunk_sizes.append(len(chunk))
        return httpx.Response(204)


def test_the_file_is_streamed_in_chunks_not_read_into_memory(tmp_path: Path) -> None:
    """A 1 MiB file leaves as a multipart stream of small chunks, with a known length."""
    content = bytes(range(256)) * 4096
    spy = StreamSpy()
    run(
        storage_step(),
        payload_file(tmp_path, "big.bin", content),
        {"create": {"fields": SIGV4_FIELDS}},
        transport=spy,
    )
    assert spy.stream_type is not httpx.ByteStream
    assert spy.stream_type is not None
    assert "Multipart" in spy.stream_type.__name__
    assert sum(spy.chunk_sizes) > len(content)
    assert max(spy.chunk_sizes) < len(content)
    assert str(sum(spy.chunk_sizes)) == spy.content_length


# --- what comes back -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204])
def test_the_storage_success_statuses_are_accepted(tmp_path: Path, status: int) -> None:
    """S3 answers 204 by default, 201 or 200 with ``success_action_status``."""
    with respx.mock() as router:
        router.post(BUCKET).respond(status, content=b"<PostResponse/>" if status == 201 else b"")
        assert {} == run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})


def test_an_expired_policy_is_a_stale_grant(tmp_path: Path) -> None:
    """403 AccessDenied "Invalid according to Policy: Policy expired." means: start over."""
    with respx.mock() as router:
        body = s3_error("AccessDenied", "Invalid according to Policy: Policy expired.")
        router.post(BUCKET).respond(403, content=body)
        with pytest.raises(StaleUploadGrantError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})
    assert "store" == caught.value.step
    assert 403 == caught.value.status
    assert "the storage says the upload grant expired (Invalid according to Policy: Policy expired.)" in str(
        caught.value
    )


def test_another_403_is_permanent_with_the_s3_code_and_message(tmp_path: Path) -> None:
    """A policy condition that fails will fail again: the file goes to failed_dir."""
    body = s3_error("AccessDenied", "Invalid according to Policy: Policy Condition failed: key")
    with respx.mock() as router:
        router.post(BUCKET).respond(403, content=body, headers={"Content-Type": "application/xml"})
        with pytest.raises(PermanentDeliveryError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})
    assert (
        "step store: the server refused the request with 403 Forbidden "
        "(AccessDenied: Invalid according to Policy: Policy Condition failed: key)" == str(caught.value)
    )


def test_a_signature_mismatch_is_quoted_without_the_signature_or_the_signed_policy(tmp_path: Path) -> None:
    """S3's SignatureDoesNotMatch body echoes the signature and the policy it signed: cut both."""
    body = (
        b"<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not "
        b"match the signature you provided.</Message><AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId>"
        b"<StringToSign>"
        + SIGV4_FIELDS["Policy"].encode()
        + b"</StringToSign><SignatureProvided>"
        + SIGV4_FIELDS["X-Amz-Signature"].encode()
        + b"</SignatureProvided><RequestId>4442587FB7D0A2F9</RequestId></Error>"
    )
    with respx.mock() as router:
        router.post(BUCKET).respond(403, content=body, headers={"Content-Type": "application/xml"})
        with pytest.raises(PermanentDeliveryError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})
    report = f"{caught.value} {caught.value.body_excerpt}"
    for secret in ("AKIAEXAMPLE", SIGV4_FIELDS["Policy"], SIGV4_FIELDS["X-Amz-Signature"]):
        assert secret not in report
    assert "(SignatureDoesNotMatch: The request signature we calculated" in str(caught.value)
    assert "<SignatureProvided>[REDACTED]</SignatureProvided>" in (caught.value.body_excerpt or "")


def test_a_storage_401_is_permanent_and_rejects_no_token(tmp_path: Path) -> None:
    """No API token went to storage, so a 401 there discards nothing."""
    credential = RecordingCredential(API_HEADERS)
    with respx.mock() as router:
        router.post(BUCKET).respond(401)
        with pytest.raises(PermanentDeliveryError):
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}}, credential)
    assert [] == credential.rejections


def test_entity_too_large_is_permanent_with_the_s3_code(tmp_path: Path) -> None:
    """The S3 error code and message end the sentence."""
    with respx.mock() as router:
        body = s3_error("EntityTooLarge", "Your proposed upload exceeds the maximum")
        router.post(BUCKET).respond(400, content=body)
        with pytest.raises(PermanentDeliveryError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})
    assert str(caught.value).endswith("(EntityTooLarge: Your proposed upload exceeds the maximum)")


def test_slow_down_is_transient_with_retry_after(tmp_path: Path) -> None:
    """503 SlowDown is retried later, as the storage asks."""
    with respx.mock() as router:
        router.post(BUCKET).respond(
            503,
            content=s3_error("SlowDown", "Please reduce your request rate."),
            headers={"Retry-After": "3"},
        )
        with pytest.raises(TransientDeliveryError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})
    assert 3.0 == caught.value.retry_after
    assert "(SlowDown: Please reduce your request rate.)" in str(caught.value)


def test_a_storage_error_that_is_not_xml_keeps_the_plain_message(tmp_path: Path) -> None:
    """An HTML error page from a proxy is not mistaken for an S3 error."""
    with respx.mock() as router:
        router.post(BUCKET).respond(502, text="<html>502 Bad Gateway</html>")
        with pytest.raises(TransientDeliveryError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})
    assert "step store: the server answered 502 Bad Gateway" == str(caught.value)
    assert "<html>502 Bad Gateway</html>" == caught.value.body_excerpt


@pytest.mark.parametrize(
    "error", [httpx.ConnectError("[Errno -2] Name or service not known"), httpx.WriteTimeout("timed out")]
)
def test_no_answer_from_storage_is_transient_and_names_the_host(tmp_path: Path, error: Exception) -> None:
    """DNS failure or a stalled upload: retry later, one line naming the bucket host."""
    with respx.mock() as router:
        router.post(BUCKET).mock(side_effect=error)
        with pytest.raises(TransientDeliveryError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": SIGV4_FIELDS}})
    assert str(caught.value).startswith("step store: POST bucket.s3.example.test ")
    assert "Traceback" not in str(caught.value)


# --- unusable grants -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ("key=abc&policy=xyz", "str"),
        (["key", "policy"], "list"),
        ({}, "an empty mapping"),
        (12, "int"),
        (None, "null"),
    ],
)
def test_fields_that_are_not_a_mapping_are_a_bad_response(tmp_path: Path, fields: object, kind: str) -> None:
    """A string, list, number, null or empty mapping where the form fields belong is reported, not sent."""
    with respx.mock(assert_all_called=False) as router:
        route = router.post(BUCKET).respond(204)
        with pytest.raises(BadResponseError) as caught:
            run(storage_step(), payload_file(tmp_path), {"create": {"fields": fields}})
    assert not route.called
    assert isinstance(caught.value, TransientDeliveryError)
    assert f"step store: the presigned fields are {kind}" in str(caught.value)


def test_missing_fields_are_a_bad_response_naming_the_reference(tmp_path: Path) -> None:
    """``{create.fields}`` absent from the saved values names exactly that."""
    with respx.mock(), pytest.raises(BadResponseError) as caught:
        run(storage_step(), payload_file(tmp_path), {"create": {"id": 1}})
    assert "step store: {create.fields} is missing; an earlier response lacked it" == str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://bucket.example.test/", "s3://bucket/key", "", "/relative/path", "https://", "http://[::1/x"],
)
def test_a_storage_url_that_is_not_http_is_a_bad_response(tmp_path: Path, url: str) -> None:
    """Only absolute http(s) URLs with a host are posted to."""
    step = storage_step(url="{locate.url}", fields="{locate.fields}")
    with respx.mock(), pytest.raises(BadResponseError) as caught:
        run(step, payload_file(tmp_path), {"locate": {"url": url, "fields": SIGV4_FIELDS}})
    assert "step store: the storage URL" in str(caught.value)
    assert "is not an http(s) URL" in str(caught.value)


def test_a_storage_url_in_an_error_message_carries_no_signature(tmp_path: Path) -> None:
    """A presigned query string is cut from the message."""
    step = storage_step(url="{locate.url}", fields="{locate.fields}")
    grant = {"url": "ftp://b.test/k?X-Amz-Signature=abc", "fields": {"k": "v"}}
    with respx.mock(), pytest.raises(BadResponseError) as caught:
        run(step, payload_file(tmp_path), {"locate": grant})
    assert "X-Amz-Signature" not in str(caught.value)
