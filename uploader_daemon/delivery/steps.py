"""Running one step of a delivery: build the request, send it, judge the answer.

Each step kind has one function here. All of them raise from the error tree
(:mod:`uploader_daemon.errors`) with the step's name in the message, so a log line says
which part of a multi-step delivery went wrong, and return the values the step saves
for later steps. Whatever of a response an error quotes (an excerpt, the server's
details) has its credentials blanked first: errors reach the journal and the
``.error.json`` sidecar, and presigned answers carry signatures.
"""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from uploader_daemon.auth.wire import ForeignOriginError
from uploader_daemon.config.upload import (
    ApiStep,
    DownloadStep,
    MultipartStep,
    PollStep,
    RequestStep,
    Step,
    StoragePostStep,
)
from uploader_daemon.delivery.body import FileShrankError, MultipartBody
from uploader_daemon.delivery.facts import FileFacts
from uploader_daemon.delivery.results import attachment_name, check_complete, discard, safe_name, stream_to
from uploader_daemon.errors import (
    ApiUnavailableError,
    BadResponseError,
    InvalidRequestError,
    NetworkError,
    PermanentDeliveryError,
    PollDeadlineError,
    StaleUploadGrantError,
    TransientDeliveryError,
)
from uploader_daemon.file_moves import place
from uploader_daemon.http import (
    ANSWER_LIMIT,
    ERROR_BODY_LIMIT,
    EXCERPT_LENGTH,
    check_status,
    excerpt,
    read_bounded,
    send,
    truncated,
)
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, TargetEvents
from uploader_daemon.redaction import redact_structure, scrub_text
from uploader_daemon.templating import (
    MissingValueError,
    as_text,
    dig,
    dig_optional,
    render_text,
    render_tree,
)
from uploader_daemon.urls import join_url

log = get_logger(__name__)


@dataclass(frozen=True)
class StepContext:
    """Everything a step needs besides its settings.

    ``auth`` is the target's credential on the wire (:class:`~uploader_daemon.auth.wire.
    CredentialAuth`), attached only to the steps that carry it.
    """

    client: httpx.AsyncClient
    base_url: str
    auth: httpx.Auth
    file: FileFacts
    values: Mapping[str, object]
    events: TargetEvents = QUIET
    idempotency: tuple[str, str] | None = None  # (header name, key) for steps that create


async def run_step(step: Step, context: StepContext) -> dict[str, object]:
    """Execute ``step``; returns the values it saves (``{name: value}``)."""
    try:
        if isinstance(step, StoragePostStep):
            return await _storage_post(step, context)
        if isinstance(step, MultipartStep):
            return await _multipart(step, context)
        if isinstance(step, PollStep):
            return await _poll(step, context)
        if isinstance(step, DownloadStep):
            return await _download(step, context)
        return await _request(step, context)
    except MissingValueError as error:
        raise BadResponseError(
            f"step {step.name}: {{{error.path}}} {error.reason}; an earlier response lacked it",
            step=step.name,
        ) from None


async def _request(step: RequestStep, context: StepContext) -> dict[str, object]:
    options: dict[str, Any] = {}
    if step.body is not None:
        options["json"] = render_tree(step.body, context.values)
    elif step.form is not None:
        form = render_tree(step.form, context.values)
        options["data"] = {key: as_text(value) for key, value in form.items()}
    response = await _api_call(step, step.method, context, options)
    return _saved(step, response)


async def _multipart(step: MultipartStep, context: StepContext) -> dict[str, object]:
    fields = {key: as_text(value) for key, value in render_tree(step.fields, context.values).items()}
    body = MultipartBody(fields, step.file_field, context.file, context.file.mime_type)
    response = await _api_call(step, step.method, context, await _body_options(body))
    return _saved(step, response)


async def _body_options(body: MultipartBody) -> dict[str, Any]:
    return {"content": await body.content(), "headers": body.headers}


async def _poll(step: PollStep, context: StepContext) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + step.deadline
    polls = 0
    while True:
        polls += 1
        response = await _api_call(step, step.method, context, {})
        data = _json(step.name, response)
        status = as_text(_value(step.name, data, step.status_field))
        details = dig_optional(data, step.details_field)
        if status in step.success:
            # Values to save often exist only in the terminal answer (a result URL).
            return {**_saved(step, response), "status": status, "details": details}
        if status in step.failure:
            raise PermanentDeliveryError(
                f"step {step.name}: the server reported {status!r}",
                step=step.name,
                status=response.status_code,
                body_excerpt=_quoted(data),
                details=redact_structure(details),
            )
        if loop.time() + step.interval > deadline:
            raise PollDeadlineError(
                f"step {step.name}: still {status!r} after {polls} polls over {step.deadline:g}s",
                step=step.name,
                status=response.status_code,
                body_excerpt=_quoted(data),
            )
        log.debug("poll_waiting", step=step.name, status=status, polls=polls)
        await asyncio.sleep(step.interval)


async def _download(step: DownloadStep, context: StepContext) -> dict[str, object]:
    """Stream the result into ``NAME.xxxxxxxx.part``, then move it to a free name.

    Results can be gigabytes: every write, the fsync and the move run in a worker
    thread, so the event loop keeps serving the other deliveries. The ``.part`` file is
    removed on any failure, cancellation included; an existing result is never replaced.
    """
    response = await _api_call(step, step.method, context, {}, stream=True)
    try:
        name = attachment_name(response) or safe_name(render_text(step.filename, context.values))
        if not name:
            raise PermanentDeliveryError(
                f"step {step.name}: the result has no usable file name", step=step.name
            )
        partial = step.output_dir / f"{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            written = await stream_to(response, partial)
            check_complete(step.name, response)
            final = await asyncio.to_thread(place, partial, step.output_dir, name)
        except BaseException:
            await asyncio.to_thread(discard, partial)
            raise
    except httpx.HTTPError as error:
        # The connection dropped mid-way: the API stopped answering, not the file's fault.
        raise ApiUnavailableError(
            f"step {step.name}: the download broke off: {scrub_text(str(error))}", step=step.name
        ) from None
    except OSError as error:
        # A full disk or a missing permission: retried later, and the sentence says where.
        raise TransientDeliveryError(
            f"step {step.name}: cannot write the result into {step.output_dir}: {error.strerror or error}; "
            "check output_dir's free space and permissions",
            step=step.name,
        ) from None
    finally:
        await response.aclose()
    log.info("result_saved", step=step.name, path=str(final), size=written)
    return {"path": str(final), "filename": final.name}


async def _storage_post(step: StoragePostStep, context: StepContext) -> dict[str, object]:
    url = _http_url(step.name, "storage URL", render_text(step.url, context.values))
    # A mapping in the config is a set of templates too (``key: '{create.key}'``).
    granted = render_tree(step.fields, context.values)
    if not isinstance(granted, Mapping):
        kind = "null" if granted is None else type(granted).__name__
        raise BadResponseError(
            f"step {step.name}: the presigned fields are {kind}, not a mapping of form fields", step=step.name
        )
    if not granted:
        raise BadResponseError(f"step {step.name}: the presigned fields are an empty mapping", step=step.name)
    form = {str(key): as_text(value) for key, value in granted.items()}
    form.update({key: render_text(value, context.values) for key, value in step.extra_fields.items()})
    # The fields first, the file last, as S3 requires.
    body = MultipartBody(
        form, step.file_field, context.file, form.get("Content-Type", context.file.mime_type)
    )
    options = await _body_options(body)
    if context.idempotency is not None:
        options["headers"] = {**options["headers"], context.idempotency[0]: context.idempotency[1]}
    try:
        response = await send(context.client, "POST", url, **options)
    except NetworkError as error:
        context.events.request_answered(step.name, None)
        raise ApiUnavailableError(f"step {step.name}: {error}", step=step.name) from None
    except FileShrankError as error:
        raise TransientDeliveryError(f"step {step.name}: {error}", step=step.name) from None
    except InvalidRequestError as error:
        raise PermanentDeliveryError(f"step {step.name}: {error}", step=step.name) from None
    context.events.request_answered(step.name, response.status_code)
    storage_error = _s3_error(response)
    if storage_error is not None:
        storage_error = (scrub_text(storage_error[0]), scrub_text(storage_error[1]))
    if response.status_code == 403 and storage_error and "expired" in storage_error[1].lower():
        raise StaleUploadGrantError(
            f"step {step.name}: the storage says the upload grant expired ({storage_error[1]})",
            step=step.name,
            status=403,
            body_excerpt=excerpt(response),
        )
    detail = f" ({storage_error[0]}: {storage_error[1]})" if storage_error else ""
    check_status(response, step.name, credentialed=False, detail=detail)
    return {}


async def _api_call(
    step: ApiStep, method: str, context: StepContext, options: dict[str, Any], *, stream: bool = False
) -> httpx.Response:
    """Send a step's request to the API, with the credential when the step carries it."""
    url = (
        _http_url(step.name, "URL", render_text(step.url, context.values))
        if step.url
        else join_url(context.base_url, render_text(step.path or "", context.values))
    )
    query = {key: as_text(value) for key, value in render_tree(step.query, context.values).items()}
    headers = {key: render_text(value, context.values) for key, value in step.headers.items()}
    headers.update(options.pop("headers", {}))
    if context.idempotency is not None:
        headers[context.idempotency[0]] = context.idempotency[1]
    try:
        response = await send(
            context.client,
            method,
            url,
            params=query or None,
            headers=headers,
            stream=stream,
            auth=context.auth if step.credential else None,
            **options,
        )
    except NetworkError as error:
        context.events.request_answered(step.name, None)
        raise ApiUnavailableError(f"step {step.name}: {error}", step=step.name) from None
    except FileShrankError as error:
        raise TransientDeliveryError(f"step {step.name}: {error}", step=step.name) from None
    except (InvalidRequestError, ForeignOriginError) as error:
        raise PermanentDeliveryError(f"step {step.name}: {error}", step=step.name) from None
    context.events.request_answered(step.name, response.status_code)
    accepted = (response.status_code in step.expect) if step.expect else 200 <= response.status_code < 300
    if not accepted:
        if stream:
            try:
                response = await read_bounded(response, ERROR_BODY_LIMIT)
            except NetworkError as error:
                raise ApiUnavailableError(f"step {step.name}: {error}", step=step.name) from None
        check_status(response, step.name, step.expect, credentialed=step.credential)
    return response


def _http_url(step: str, what: str, url: str) -> str:
    """``url`` when it is an absolute http(s) URL; else :class:`BadResponseError`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = url.split("?", 1)[0][:80]
        raise BadResponseError(f"step {step}: the {what} {shown!r} is not an http(s) URL", step=step)
    return url


def _saved(step: ApiStep, response: httpx.Response) -> dict[str, object]:
    if not step.save:
        return {}
    data = _json(step.name, response)
    return {name: _value(step.name, data, path) for name, path in step.save.items()}


def _json(step: str, response: httpx.Response) -> object:
    if truncated(response):
        raise PermanentDeliveryError(
            f"step {step}: the answer is larger than {ANSWER_LIMIT // 1024} KiB, far more than a step's "
            "JSON answer; the server is broken or the step's address is not the API's",
            step=step,
            status=response.status_code,
            body_excerpt=excerpt(response),
        )
    if not response.content.strip():
        raise BadResponseError(
            f"step {step}: the response body is empty; expected JSON", step=step, status=response.status_code
        )
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "unknown type")
        raise BadResponseError(
            f"step {step}: the response is not JSON ({kind}): {excerpt(response, 80)}",
            step=step,
            status=response.status_code,
            body_excerpt=excerpt(response),
        ) from None


def _value(step: str, data: object, path: str) -> object:
    try:
        value = dig(data, path)
    except MissingValueError as error:
        raise BadResponseError(
            f"step {step}: the response has no {error.path!r} ({error.reason})",
            step=step,
            body_excerpt=_quoted(data),
        ) from None
    if value is None:
        raise BadResponseError(f"step {step}: the response's {path!r} is null", step=step)
    return value


def _quoted(data: object) -> str:
    """Parsed JSON as an error's body excerpt: secrets blanked by key, then by shape.

    Presigned grants name their signature, policy and credential fields; their values
    must reach neither the journal nor the ``.error.json`` sidecar.
    """
    text = scrub_text(as_text(redact_structure(data)))
    return text[:EXCERPT_LENGTH] + ("..." if len(text) > EXCERPT_LENGTH else "")


def _s3_error(response: httpx.Response) -> tuple[str, str] | None:
    """``(Code, Message)`` from an S3-style XML error body, if it is one."""
    body = response.content[:65536]
    if b"<Error" not in body:
        return None
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 -- small body from the storage we upload to
    except ElementTree.ParseError:
        return None
    return (root.findtext("Code") or "", root.findtext("Message") or "")
