"""Where an interrupted delivery resumes, and the journal checkpoints ``Delivery.run`` writes."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.helpers import OWNER, FakeClock, tls
from tests.helpers import SyncJournal as Journal
from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import StaticCredential
from uploader_daemon.auth.wire import CredentialAuth
from uploader_daemon.config.presets import ConversionTaskUpload, PresignedStatusUpload, RunrunDocumentUpload
from uploader_daemon.config.upload import RequestStep, Step
from uploader_daemon.delivery.facts import FileFacts
from uploader_daemon.delivery.run import Delivery, plan_of, resume_point
from uploader_daemon.delivery.steps import StepContext
from uploader_daemon.errors import PermanentDeliveryError, TransientDeliveryError
from uploader_daemon.journal import Claim, FileRecord

API = "https://runrun.example.test/api/v1.0"
ORIGIN = ("https", "runrun.example.test", None)
BUCKET = "https://bucket.s3.example.test"
EXPIRED = (
    b"<Error><Code>AccessDenied</Code><Message>Invalid according to Policy: Policy expired.</Message></Error>"
)


def runrun_steps() -> tuple[Step, ...]:
    """Flow R: create -> store -> confirm."""
    return RunrunDocumentUpload.model_validate(
        {"type": "runrun_document", "task_id": 77, "storage": {"url": BUCKET}}
    ).steps


def presigned_steps() -> tuple[Step, ...]:
    """Flow P: upload -> store -> confirm -> status (poll)."""
    return PresignedStatusUpload.model_validate(
        {
            "type": "presigned_with_status",
            "storage": {"url": BUCKET},
            "poll": {"interval": "10ms", "deadline": "1s"},
        }
    ).steps


def conversion_steps() -> tuple[Step, ...]:
    """Flow C with cleanup: submit (multipart) -> task (poll) -> result (download) -> cleanup (DELETE)."""
    return ConversionTaskUpload.model_validate(
        {"type": "conversion_task", "conversion_type": "mp4", "output_dir": "/srv/out", "delete_task": True}
    ).steps


def request(method: str, repeatable: bool | None = None) -> RequestStep:
    settings: dict[str, Any] = {"kind": "request", "name": "call", "path": "/x", "method": method}
    if repeatable is not None:
        settings["repeatable"] = repeatable
    return RequestStep.model_validate(settings)


# --- resume_point ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "in_flight", "expected"),
    [
        pytest.param(presigned_steps(), 3, 3, id="poll"),
        pytest.param(conversion_steps(), 1, 1, id="poll-after-multipart"),
        pytest.param(conversion_steps(), 2, 2, id="download"),
        pytest.param(conversion_steps(), 3, 3, id="delete-request"),
        pytest.param((runrun_steps()[0], request("GET")), 1, 1, id="get-request"),
        pytest.param((runrun_steps()[0], request("PUT")), 1, 1, id="put-request"),
        pytest.param((runrun_steps()[0], request("POST", repeatable=True)), 1, 1, id="post-repeatable"),
    ],
)
def test_an_in_flight_repeatable_step_is_sent_again(
    steps: Sequence[Step], in_flight: int, expected: int
) -> None:
    """Polls, downloads, GET/PUT/DELETE and ``repeatable: true`` are harmless to repeat."""
    assert expected == resume_point(steps, in_flight, in_flight)


@pytest.mark.parametrize(
    ("steps", "in_flight"),
    [
        pytest.param(runrun_steps(), 2, id="post-confirm"),
        pytest.param(runrun_steps(), 0, id="post-create"),
        pytest.param(presigned_steps(), 2, id="post-confirm-before-poll"),
        pytest.param(conversion_steps(), 0, id="multipart"),
        pytest.param(runrun_steps(), 1, id="storage-post"),
        pytest.param((runrun_steps()[0], request("GET", repeatable=False)), 1, id="get-not-repeatable"),
        pytest.param((runrun_steps()[0], request("PATCH")), 1, id="patch-request"),
    ],
)
def test_an_in_flight_step_that_must_not_repeat_starts_the_delivery_over(
    steps: Sequence[Step], in_flight: int
) -> None:
    """A POST, multipart or storage POST whose outcome is unknown is never sent twice from the middle."""
    assert 0 == resume_point(steps, in_flight, in_flight)


@pytest.mark.parametrize(
    ("steps", "next_step", "expected"),
    [
        pytest.param(presigned_steps(), 0, 0, id="not-started"),
        pytest.param(presigned_steps(), 1, 0, id="next-is-storage-post"),
        pytest.param(presigned_steps(), 2, 2, id="next-is-confirm"),
        pytest.param(presigned_steps(), 3, 3, id="next-is-poll"),
        pytest.param(conversion_steps(), 1, 1, id="next-is-poll-after-multipart"),
        pytest.param(runrun_steps(), 3, 3, id="all-done"),
        pytest.param(presigned_steps(), 4, 4, id="all-done-with-poll"),
    ],
)
def test_between_steps_the_next_step_runs_unless_it_needs_a_fresh_grant(
    steps: Sequence[Step], next_step: int, expected: int
) -> None:
    """A storage POST always follows a fresh grant; other steps continue where we stopped."""
    assert expected == resume_point(steps, next_step, None)


def test_a_checkpoint_beyond_a_shortened_step_list_starts_over() -> None:
    """After a config change removed steps, an out-of-range in-flight step restarts from step one."""
    assert 0 == resume_point(runrun_steps(), 5, 5)


# --- Delivery.run ----------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "j.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def facts(tmp_path: Path) -> FileFacts:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.7 payload")
    return FileFacts(path=path, relative_path="report.pdf", size=16)


def new_record(journal: Journal, facts: FileFacts) -> FileRecord:
    record = journal.admit("docs", facts.relative_path, facts.size, 1, 1_700_000_000.0)
    assert record is not None
    return journal.get(record.id)


def deliver(steps: Sequence[Step], journal: Journal, record: FileRecord, facts: FileFacts) -> None:
    """``Delivery.run`` for ``record`` against the active respx routes, as the worker wires it."""

    async def go() -> None:
        async with httpx.AsyncClient(verify=tls()) as client:

            def make_context(outputs: dict[str, object]) -> StepContext:
                return StepContext(
                    client=client,
                    base_url=API,
                    auth=CredentialAuth(
                        StaticCredential({"app-key": "k", "user-token": "u"}),
                        ORIGIN,
                        ApiActivity(FakeClock()),
                    ),
                    file=facts,
                    values={"file": facts.template_values(), "target": {"name": "docs"}, **outputs},
                )

            await Delivery(steps, journal.backend, FakeClock()).run(Claim(record, OWNER, 0), make_context)

    asyncio.run(go())


def grant(number: int) -> httpx.Response:
    """The n-th answer to "create document": a new id and a new policy each time."""
    fields = {"key": f"docs/{number}", "policy": f"p{number}"}
    return httpx.Response(200, json={"id": 100 + number, "fields": fields})


def sent_policy(request: httpx.Request) -> str:
    """The ``policy`` form field of a storage POST."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "policy":
            return bytes(part.get_payload(decode=True)).decode()
    raise AssertionError("no policy field was sent")


def routes(
    router: respx.MockRouter,
    store: Callable[[httpx.Request], httpx.Response] | list[httpx.Response] | None = None,
    confirm_status: int = 200,
) -> tuple[respx.Route, respx.Route, respx.Route]:
    """create, store, confirm routes of flow R on ``router``."""
    counter = iter(range(1, 100))
    create = router.post(f"{API}/documents").mock(side_effect=lambda request: grant(next(counter)))
    storage = router.post(BUCKET)
    if store is None:
        storage.respond(201)
    else:
        storage.mock(side_effect=store)
    confirm = router.post(url__regex=rf"{API}/documents/\d+/mark_as_uploaded").respond(confirm_status)
    return create, storage, confirm


def test_each_step_is_checkpointed_and_a_failure_leaves_its_step_in_flight(
    journal: Journal, facts: FileFacts
) -> None:
    """Failure in step 2: next_step 1, step 1 in flight, step 0's outputs kept."""
    record = new_record(journal, facts)
    with respx.mock(assert_all_called=False) as router:
        create, _, confirm = routes(router, store=[httpx.Response(500, text="oops")])
        with pytest.raises(TransientDeliveryError):
            deliver(runrun_steps(), journal, record, facts)
    row = journal.get(record.id)
    assert 1 == row.next_step
    assert 1 == row.step_in_flight
    assert {"create": {"id": 101, "fields": {"key": "docs/1", "policy": "p1"}}} == row.outputs
    assert 1 == create.call_count
    assert not confirm.called


def test_a_complete_delivery_leaves_every_output_and_nothing_in_flight(
    journal: Journal, facts: FileFacts
) -> None:
    """After the last step the journal says: all steps done, none in flight."""
    record = new_record(journal, facts)
    with respx.mock() as router:
        _, _, confirm = routes(router)
        deliver(runrun_steps(), journal, record, facts)
    row = journal.get(record.id)
    assert (3, None) == (row.next_step, row.step_in_flight)
    assert {"create", "store", "confirm"} == set(row.outputs)
    assert f"{API}/documents/101/mark_as_uploaded" == str(confirm.calls.last.request.url)


def test_a_permanent_failure_propagates_with_the_checkpoint_kept(journal: Journal, facts: FileFacts) -> None:
    """A 404 on confirm reaches the caller as is; step 2 stays in flight."""
    record = new_record(journal, facts)
    with respx.mock() as router:
        routes(router, confirm_status=404)
        with pytest.raises(PermanentDeliveryError):
            deliver(runrun_steps(), journal, record, facts)
    row = journal.get(record.id)
    assert (2, 2) == (row.next_step, row.step_in_flight)


def test_a_delivery_whose_confirm_succeeded_does_not_confirm_again(
    journal: Journal, facts: FileFacts
) -> None:
    """Flow P stopped before its poll: only the poll is sent, with the saved file id."""
    record = new_record(journal, facts)
    outputs = {"upload": {"file_id": "f-17", "fields": {"key": "k"}}, "store": {}, "confirm": {}}
    journal.step_finished(record.id, 2, outputs, 1_700_000_001.0)
    with respx.mock(assert_all_called=False) as router:
        upload = router.post(f"{API}/upload").respond(200, json={"file_id": "f-new", "fields": {"key": "x"}})
        storage = router.post(BUCKET).respond(204)
        confirm = router.post(f"{API}/confirm-upload").respond(200)
        status = router.get(f"{API}/consult-status").respond(200, json={"status": "completed"})
        deliver(presigned_steps(), journal, journal.get(record.id), facts)
    assert not upload.called
    assert not storage.called
    assert not confirm.called
    assert "f-17" == status.calls.last.request.url.params["file_id"]
    assert 4 == journal.get(record.id).next_step


def test_a_delivery_with_every_step_done_sends_nothing(journal: Journal, facts: FileFacts) -> None:
    """Flow R after mark_as_uploaded succeeded: resuming sends no request at all."""
    record = new_record(journal, facts)
    outputs = {"create": {"id": 5, "fields": {"k": "v"}}, "store": {}, "confirm": {}}
    journal.step_finished(record.id, 2, outputs, 1_700_000_001.0)
    with respx.mock(assert_all_called=False) as router:
        create, storage, confirm = routes(router)
        deliver(runrun_steps(), journal, journal.get(record.id), facts)
    assert (0, 0, 0) == (create.call_count, storage.call_count, confirm.call_count)


def test_an_in_flight_poll_resumes_with_the_saved_values(journal: Journal, facts: FileFacts) -> None:
    """A crash during the poll repeats only the poll."""
    record = new_record(journal, facts)
    journal.step_finished(
        record.id,
        2,
        {"upload": {"file_id": "f-3", "fields": {"k": "v"}}, "store": {}, "confirm": {}},
        1_700_000_001.0,
    )
    journal.step_started(record.id, 3, plan_of(presigned_steps()), 1_700_000_002.0)
    with respx.mock(assert_all_called=False) as router:
        confirm = router.post(f"{API}/confirm-upload").respond(200)
        status = router.get(f"{API}/consult-status").respond(200, json={"status": "completed"})
        deliver(presigned_steps(), journal, journal.get(record.id), facts)
    assert not confirm.called
    assert "f-3" == status.calls.last.request.url.params["file_id"]


def test_an_in_flight_confirm_starts_over_with_a_fresh_grant(journal: Journal, facts: FileFacts) -> None:
    """A POST whose outcome is unknown is not repeated from the middle: the delivery restarts."""
    record = new_record(journal, facts)
    journal.step_finished(
        record.id, 1, {"create": {"id": 5, "fields": {"policy": "old"}}, "store": {}}, 1_700_000_001.0
    )
    journal.step_started(record.id, 2, plan_of(runrun_steps()), 1_700_000_002.0)
    with respx.mock() as router:
        create, storage, confirm = routes(router)
        deliver(runrun_steps(), journal, journal.get(record.id), facts)
    assert 1 == create.call_count
    assert "p1" == sent_policy(storage.calls.last.request)
    assert f"{API}/documents/101/mark_as_uploaded" == str(confirm.calls.last.request.url)


def test_a_storage_post_next_in_line_gets_a_fresh_grant(journal: Journal, facts: FileFacts) -> None:
    """Stopped after "create": the old grant may have expired, so the delivery starts over."""
    record = new_record(journal, facts)
    journal.step_finished(record.id, 0, {"create": {"id": 5, "fields": {"policy": "old"}}}, 1_700_000_001.0)
    with respx.mock() as router:
        create, storage, _ = routes(router)
        deliver(runrun_steps(), journal, journal.get(record.id), facts)
    assert 1 == create.call_count
    assert "p1" == sent_policy(storage.calls.last.request)


def test_an_expired_grant_restarts_from_step_one_and_succeeds_with_the_next(
    journal: Journal, facts: FileFacts
) -> None:
    """Storage 403 "Policy expired": a new create, the new policy, then confirm once."""
    record = new_record(journal, facts)
    with respx.mock() as router:
        answers = [httpx.Response(403, content=EXPIRED), httpx.Response(201)]
        create, storage, confirm = routes(router, store=answers)
        deliver(runrun_steps(), journal, record, facts)
    assert 2 == create.call_count
    assert ["p1", "p2"] == [sent_policy(call.request) for call in storage.calls]
    assert 1 == confirm.call_count
    assert f"{API}/documents/102/mark_as_uploaded" == str(confirm.calls.last.request.url)
    row = journal.get(record.id)
    assert (3, None) == (row.next_step, row.step_in_flight)
    assert 102 == row.outputs["create"]["id"]


def test_four_expired_grants_in_a_row_give_up_this_attempt_and_suspect_the_clock(
    journal: Journal, facts: FileFacts
) -> None:
    """Three restarts are allowed; the fourth expiry is a transient error that mentions the clock."""
    record = new_record(journal, facts)
    with respx.mock(assert_all_called=False) as router:
        create, storage, confirm = routes(router, store=lambda request: httpx.Response(403, content=EXPIRED))
        with pytest.raises(TransientDeliveryError) as caught:
            deliver(runrun_steps(), journal, record, facts)
    assert 4 == create.call_count
    assert 4 == storage.call_count
    assert not confirm.called
    assert "clock" in str(caught.value)
    assert "store" == caught.value.step
    assert 403 == caught.value.status


def test_a_confirm_refused_with_429_is_sent_again_without_starting_over(
    journal: Journal, facts: FileFacts
) -> None:
    """A definite refusal did nothing on the server: the next attempt repeats only that step."""
    record = new_record(journal, facts)
    with respx.mock() as router:
        create, storage, confirm = routes(router, confirm_status=429)
        with pytest.raises(TransientDeliveryError):
            deliver(runrun_steps(), journal, record, facts)
    refused = journal.get(record.id)
    assert (2, None) == (refused.next_step, refused.step_in_flight)
    with respx.mock(assert_all_called=False) as router:
        create, storage, confirm = routes(router)
        deliver(runrun_steps(), journal, refused, facts)
    assert (0, 0, 1) == (create.call_count, storage.call_count, confirm.call_count)


def test_a_checkpoint_of_another_step_list_is_not_trusted(journal: Journal, facts: FileFacts) -> None:
    """After a config change the saved step indexes mean other steps: the delivery starts over."""
    record = new_record(journal, facts)
    journal.step_started(record.id, 2, "a-different-plan", 1_700_000_001.0)
    journal.step_finished(record.id, 2, {"create": {"id": 5}}, 1_700_000_002.0)
    with respx.mock() as router:
        create, storage, confirm = routes(router)
        deliver(runrun_steps(), journal, journal.get(record.id), facts)
    assert (1, 1, 1) == (create.call_count, storage.call_count, confirm.call_count)


def test_tuning_a_poll_keeps_checkpoints_valid() -> None:
    """A longer deadline or interval is not a different step list: no upload is repeated."""
    from uploader_daemon.config.presets import PresignedStatusUpload

    def preset(deadline: str) -> Sequence[Step]:
        return PresignedStatusUpload.model_validate(
            {"type": "presigned_with_status", "poll": {"interval": "1s", "deadline": deadline}}
        ).steps

    assert plan_of(preset("10m")) == plan_of(preset("1h"))
    assert plan_of(preset("10m")) != plan_of(runrun_steps())
