"""The S3-like storage endpoint that receives presigned POSTs from flows R and P.

It enforces what S3 enforces and the daemon can get wrong: every issued field present
and unmodified, the file part last, the signature, the policy's expiry and its
content-length-range. It also counts API credentials sent to it (a leak: storage
must never see them) without refusing the upload, as S3 would not refuse it either.
Errors are S3's XML documents.
"""

from __future__ import annotations

import re
from urllib.parse import quote
from xml.sax.saxutils import escape

from uploader_daemon.emulator.multipart import MultipartError, MultipartForm
from uploader_daemon.emulator.policy import BUCKET, PolicyViolation
from uploader_daemon.emulator.state import EmulatorState
from uploader_daemon.emulator.wire import HttpError, Request, Response, Route, route

FILE_FIELD = "file"
# Headers that belong to the APIs; the storage endpoint must never receive them.
CREDENTIAL_HEADERS = ("authorization", "app-key", "user-token")
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def s3_error(status: int, code: str, message: str) -> Response:
    """An S3 error document: ``<Error><Code>..</Code><Message>..</Message></Error>``."""
    body = f"{_XML_DECLARATION}<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    return Response(status, body.encode(), {"Content-Type": "application/xml"})


class StorageApi:
    """``POST /storage/``: a presigned form, fields first and the file part last."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def routes(self) -> list[Route]:
        """The storage endpoint (with or without the trailing slash)."""
        return [route("POST", r"/storage/?", self.post)]

    def post(self, request: Request, _match: re.Match[str]) -> Response:
        """Check and store one object; answer as S3 does for ``success_action_status``."""
        leaked = any(name in request.headers for name in CREDENTIAL_HEADERS)
        with self._state.lock:
            self._state.counters["storage_posts"] += 1
            if leaked:
                self._state.counters["credential_leaks"] += 1
        try:
            form = request.read_multipart(self._state.spool_dir)
        except MultipartError as error:
            raise self._reject(
                400,
                "MalformedPOSTRequest",
                f"The body of your POST request is not well-formed multipart/form-data: {error}",
            ) from error
        try:
            return self._store(request, form)
        finally:
            form.discard()

    def _store(self, request: Request, form: MultipartForm) -> Response:
        files = [part for part in form.files if part.name == FILE_FIELD]
        if len(files) != 1 or form.part_order.count(FILE_FIELD) != 1:
            raise self._reject(400, "InvalidArgument", "POST requires exactly one file upload per request.")
        if form.part_order[-1] != FILE_FIELD:
            raise self._reject(
                400,
                "InvalidArgument",
                "The file must be the last field in the form; fields after it are not covered by the policy.",
            )
        part = files[0]
        try:
            with self._state.lock:
                issued = self._state.policies.check(form.fields, self._state.now())
        except PolicyViolation as violation:
            raise self._reject(violation.status, violation.code, violation.message) from violation
        minimum, maximum = issued.size_range
        if part.size < minimum:
            raise self._reject(
                400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"
            )
        if part.size > maximum:
            raise self._reject(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        received = self._state.receive(issued.flow, part, form, request, "objects", *issued.key.split("/"))
        with self._state.lock:
            self._state.objects[issued.key] = received
            self._state.add_received(received)
        return self._success(form.fields.get("success_action_status", ""), issued.key, part.sha256)

    def _success(self, wanted_status: str, key: str, sha256: str) -> Response:
        if wanted_status == "201":
            location = f"{self._state.storage_url}{quote(key)}"
            # S3's ETag is an MD5; any stable content hash serves the client as well.
            etag = f'"{sha256[:32]}"'
            body = (
                f"{_XML_DECLARATION}<PostResponse><Location>{escape(location)}</Location>"
                f"<Bucket>{BUCKET}</Bucket><Key>{escape(key)}</Key>"
                f"<ETag>{escape(etag)}</ETag></PostResponse>"
            )
            return Response(
                201, body.encode(), {"Content-Type": "application/xml", "ETag": etag, "Location": location}
            )
        if wanted_status == "200":
            return Response(200, b"", {"ETag": f'"{sha256[:32]}"'})
        # S3 answers 204 when the field is absent or not one of 200/201.
        return Response(204, b"", {"ETag": f'"{sha256[:32]}"'})

    def _reject(self, status: int, code: str, message: str) -> HttpError:
        self._state.bump("storage_rejections")
        return HttpError(s3_error(status, code, message))
