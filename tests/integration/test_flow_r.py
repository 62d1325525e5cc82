"""Flow R end to end: the real daemon, real folders and watchdog, the emulator's documents API.

create document (static ``app-key``/``user-token`` headers) -> storage POST with every
returned field, ``success_action_status=201``, the file last and no API header ->
``mark_as_uploaded``. Also the bad answers to the create step: logged with the step and
the missing value, retried, then failed by the rules, never lost.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.helpers import ConfigYaml, Retry, mapping_of, running_daemon, wait_until
from uploader_daemon.config import Config
from uploader_daemon.emulator import Emulator, ScriptedResponse

API_HEADERS = ("app-key", "user-token", "authorization")
V4_FIELDS = {"key", "Policy", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Signature"}
V2_FIELDS = {"key", "policy", "signature", "AWSAccessKeyId", "acl", "Content-Type"}


def config_for(
    emu: Emulator, folders: dict[str, Path], *, attempts: int = 3, task: str = "task_id: 77"
) -> Config:
    """Flow R on the test's folders; ``task`` is the upload's task key in YAML (``task_id: 77``)."""
    environ = {"RUNRUN_APP_KEY": emu.settings.app_key, "RUNRUN_USER_TOKEN": emu.settings.user_token}
    headers = {"app-key": {"env": "RUNRUN_APP_KEY"}, "user-token": {"env": "RUNRUN_USER_TOKEN"}}
    upload = {
        "type": "runrun_document",
        **mapping_of(task),
        "storage": {"url": emu.storage_url, "extra_fields": {"success_action_status": "201"}},
    }
    return ConfigYaml(
        folders,
        "runrun",
        emu.base_url,
        retry=Retry(attempts, "50ms", "100ms"),
        api_timeout="10s",
        auth={"type": "headers", "headers": headers},
        upload=upload,
    ).load(environ)


def drop(folders: dict[str, Path], name: str, data: bytes) -> None:
    (folders["drop"] / name).write_bytes(data)


def wait_for_files(folder: Path, *names: str) -> None:
    wait_until(lambda: all((folder / name).exists() for name in names), message=f"{names} in {folder}")


def api_requests(emu: Emulator) -> list[Any]:
    return [record for record in emu.requests if not record.path.startswith("/storage")]


def storage_requests(emu: Emulator) -> list[Any]:
    return [record for record in emu.requests if record.path.startswith("/storage")]


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.mark.parametrize(
    ("generation", "policy_fields"), [("v4", V4_FIELDS), ("v2", V2_FIELDS)], ids=["v4", "v2"]
)
def test_each_file_is_created_stored_with_every_returned_field_and_confirmed_once(
    start_emulator: Callable[..., Emulator],
    folders: dict[str, Path],
    generation: str,
    policy_fields: set[str],
) -> None:
    """Create -> storage POST (all fields, 201, file last, no API header) -> mark_as_uploaded."""
    emu = start_emulator(storage_generation=generation)
    contents = {f"report-{number}.pdf": f"%PDF-{number} {generation}\n".encode() * 50 for number in range(3)}
    with running_daemon(config_for(emu, folders)):
        for name, data in contents.items():
            drop(folders, name, data)
        wait_for_files(folders["sent"], *contents)

    received = {item.name: item for item in emu.received}
    assert sorted(contents) == sorted(received)
    for name, data in contents.items():
        item = received[name]
        assert "R" == item.flow
        assert hashlib.sha256(data).hexdigest() == item.sha256
        assert data == item.path.read_bytes()
        assert policy_fields | {"success_action_status"} == set(item.fields)
        assert "201" == item.fields["success_action_status"]
        assert ("success_action_status", "file") == item.part_order[-2:]
        assert set() == set(API_HEADERS) & set(item.headers)
    assert [201, 201, 201] == [record.status for record in storage_requests(emu)]
    for record in api_requests(emu):
        assert (emu.settings.app_key, emu.settings.user_token) == (
            record.headers.get("app-key"),
            record.headers.get("user-token"),
        )
    assert ["77", "77", "77"] == [r.query.get("task_id") for r in api_requests(emu) if r.path == "/documents"]
    counters = emu.counters
    assert {
        "documents_created": 3,
        "documents_confirmed": 3,
        "duplicate_confirms": 0,
        "storage_posts": 3,
        "storage_rejections": 0,
        "credential_leaks": 0,
    } == {
        name: counters[name]
        for name in (
            "documents_created",
            "documents_confirmed",
            "duplicate_confirms",
            "storage_posts",
            "storage_rejections",
            "credential_leaks",
        )
    }
    assert [] == list(folders["drop"].iterdir())
    assert [] == list(folders["failed"].iterdir())


class ClockThatJumpsAfterTheFirstGrant:
    """The emulator's wall clock, ten minutes ahead once the first document exists.

    As if the host slept between the create and storage steps: the first grant (five
    minutes) is stale when the file reaches storage, the grants after the jump are fresh.
    """

    def __init__(self) -> None:
        self.emulator: Emulator | None = None

    def __call__(self) -> float:
        jumped = self.emulator is not None and self.emulator.counters["documents_created"] >= 1
        return time.time() + (600.0 if jumped else 0.0)


def test_an_expired_upload_grant_restarts_from_the_first_step_and_the_file_is_delivered(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """Storage says "Policy expired": a new document and grant, no failed attempt, one confirm."""
    clock = ClockThatJumpsAfterTheFirstGrant()
    emu = start_emulator(clock=clock, storage_policy_lifetime=300.0)
    clock.emulator = emu
    with capture_logs() as logs, running_daemon(config_for(emu, folders, attempts=1)):
        drop(folders, "late.pdf", b"late but whole")
        wait_for_files(folders["sent"], "late.pdf")

    assert [403, 201] == [record.status for record in storage_requests(emu)]
    counters = emu.counters
    assert (2, 1, 1, 0) == (
        counters["documents_created"],
        counters["storage_rejections"],
        counters["documents_confirmed"],
        counters["duplicate_confirms"],
    )
    assert [b"late but whole"] == [item.path.read_bytes() for item in emu.received]
    assert ["store"] == [entry["step"] for entry in events(logs, "upload_grant_expired")]
    assert [] == events(logs, "delivery_failed") + events(logs, "file_failed")
    assert [] == list(folders["failed"].iterdir())


def test_create_task_makes_a_task_per_file_and_attaches_each_document_to_its_task(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """With ``create_task`` each file gets its own task (``POST /tasks``), used as ``task_id``."""
    emu = start_emulator()
    task = 'create_task: {title: "Upload {file.name}", board_id: 42, project_id: 7}'
    with running_daemon(config_for(emu, folders, task=task)):
        drop(folders, "one.csv", b"1\n")
        drop(folders, "two.csv", b"2\n")
        wait_for_files(folders["sent"], "one.csv", "two.csv")

    requests = api_requests(emu)
    assert 2 == len([record for record in requests if record.path == "/tasks"])
    task_ids = sorted(record.query["task_id"] for record in requests if record.path == "/documents")
    assert ["1", "2"] == task_ids
    assert {200} == {record.status for record in requests}
    assert (2, 0) == (emu.counters["documents_confirmed"], emu.counters["credential_leaks"])


@pytest.mark.parametrize(
    ("answer", "expected_error"),
    [
        (
            ScriptedResponse(200, "<html><body>Maintenance</body></html>", {"Content-Type": "text/html"}),
            "not JSON",
        ),
        (ScriptedResponse(200, {"id": 5}), "no 'fields'"),
    ],
    ids=["html-instead-of-json", "json-without-fields"],
)
def test_a_bad_answer_to_create_is_logged_with_the_step_retried_then_failed_and_the_daemon_goes_on(
    start_emulator: Callable[..., Emulator],
    folders: dict[str, Path],
    answer: ScriptedResponse,
    expected_error: str,
) -> None:
    """A 200 that is HTML, or JSON without ``fields``: named in the log, retried, failed, kept."""
    emu = start_emulator()
    emu.script("POST", "/documents", answer, answer)
    with capture_logs() as logs, running_daemon(config_for(emu, folders, attempts=2)):
        drop(folders, "broken.pdf", b"keep me")
        wait_for_files(folders["failed"], "broken.pdf", "broken.pdf.error.json")
        drop(folders, "after.pdf", b"the daemon goes on")
        wait_for_files(folders["sent"], "after.pdf")

    failures = [entry for entry in events(logs, "delivery_failed") if entry["file"] == "broken.pdf"]
    assert [("create", 1)] == [(entry["step"], entry["attempt"]) for entry in failures]
    assert expected_error in failures[0]["error"]
    assert "step create" in failures[0]["error"]
    [failed] = [entry for entry in events(logs, "file_failed") if entry["file"] == "broken.pdf"]
    assert ("create", 2) == (failed["step"], failed["attempts"])
    assert b"keep me" == (folders["failed"] / "broken.pdf").read_bytes()
    report = json.loads((folders["failed"] / "broken.pdf.error.json").read_text())
    assert ("create", 2) == (report["step"], report["attempts"])
    assert expected_error in report["error"]
    assert (1, 1, 1) == (
        emu.counters["documents_created"],
        emu.counters["storage_posts"],
        emu.counters["documents_confirmed"],
    )
    assert [b"the daemon goes on"] == [item.path.read_bytes() for item in emu.received]
