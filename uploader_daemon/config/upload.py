"""The step kinds of a delivery: a delivery is an ordered list of HTTP steps.

Admins write either a preset (:mod:`uploader_daemon.config.presets`), which expands
into steps, or ``type: steps`` with the full step list for an unusual API.

Step kinds:

- ``request``      a JSON (or form) request to the API, saving values from the response
- ``multipart``    the file as a multipart part, to the API
- ``storage_post`` the file to presigned storage: returned fields first, file last,
                   never with the target's credential
- ``poll``         repeat a request until a field has a terminal value
- ``download``     stream a result into an output folder
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainValidator, field_validator, model_validator

from uploader_daemon.config.types import Model, OutputFolder, PositiveDuration
from uploader_daemon.templating import TemplateError, references_in

FILE_VALUES = ("name", "stem", "extension", "size", "sha256", "mime_type", "relative_path")
TARGET_VALUES = ("name",)
RESERVED_NAMES = ("file", "target")

StepName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
Scalar = str | int | float | bool


def _scalar(value: object) -> Scalar:
    if isinstance(value, str | int | float | bool):
        return value
    raise ValueError("must be a single value (text, number or true/false), not a list or mapping")


def _fields_source(value: object) -> str | dict[str, str]:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return value
    raise ValueError("must be a template such as '{create.fields}' or a mapping of text values")


ScalarValue = Annotated[Scalar, PlainValidator(_scalar)]


def _status_text(value: object) -> object:
    # A server may answer {"status": 2}; the poll compares values as text, so a number
    # in the config is the same value written without quotes.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


StatusValue = Annotated[str, BeforeValidator(_status_text)]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
Template = str


class ApiStep(Model):
    """Settings shared by the steps that talk to the API (or a URL from a response)."""

    name: StepName
    path: Template | None = Field(default=None, description="Joined to api.base_url; may use {values}.")
    url: Template | None = Field(default=None, description="An absolute URL, e.g. '{create.url}'.")
    query: dict[str, ScalarValue] = {}
    headers: dict[str, str] = {}
    credential: bool = Field(default=True, description="Send the target's credential with this step.")
    save: dict[str, str] = Field(
        default={}, description="Values to keep from the JSON response: name -> dotted path."
    )
    expect: tuple[int, ...] = Field(default=(), description="Accepted statuses; empty means any 2xx.")

    @model_validator(mode="after")
    def _exactly_one_address(self) -> ApiStep:
        if (self.path is None) == (self.url is None):
            raise ValueError(f"step {self.name!r} needs exactly one of path or url")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"step {self.name!r}: path {self.path!r} must start with /")
        return self

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved for template values; choose another step name")
        return name


class RequestStep(ApiStep):
    """A request with a JSON (``json``) or urlencoded (``form``) body, or none."""

    kind: Literal["request"]
    method: HttpMethod = "POST"
    body: Any = Field(default=None, alias="json")
    form: dict[str, ScalarValue] | None = None
    repeatable: bool | None = Field(
        default=None, description="Safe to send again after a crash; default: true for GET/PUT/DELETE."
    )

    @model_validator(mode="after")
    def _one_body(self) -> RequestStep:
        if self.body is not None and self.form is not None:
            raise ValueError(f"step {self.name!r} has both json and form; a request has one body: keep one")
        return self


class MultipartStep(ApiStep):
    """The file as a multipart/form-data part, plus extra form fields, to the API."""

    kind: Literal["multipart"]
    method: Literal["POST", "PUT"] = "POST"
    file_field: str = "file"
    fields: dict[str, ScalarValue] = {}
    repeatable: bool | None = None


class PollStep(ApiStep):
    """Repeat a request until ``status_field`` is a success or failure value."""

    kind: Literal["poll"]
    method: Literal["GET", "POST"] = "GET"
    status_field: str
    success: tuple[StatusValue, ...] = Field(min_length=1)
    failure: tuple[StatusValue, ...] = ()
    details_field: str | None = None
    interval: PositiveDuration = 5.0
    deadline: PositiveDuration = 600.0


class DownloadStep(ApiStep):
    """Stream the response body into ``output_dir`` (``.part`` first, renamed when whole)."""

    kind: Literal["download"]
    method: Literal["GET", "POST"] = "GET"
    output_dir: OutputFolder
    filename: Template = Field(
        default="{file.name}", description="Used when the response has no Content-Disposition filename."
    )

    @model_validator(mode="after")
    def _saves_nothing(self) -> DownloadStep:
        if self.save:
            raise ValueError(
                f"step {self.name!r} is a download: its answer is the file, not JSON, so save: has nothing "
                "to read; later steps can use {" + self.name + ".path} and {" + self.name + ".filename}"
            )
        return self


class StoragePostStep(Model):
    """The file to presigned storage (S3 POST policy): every returned field, the file last."""

    kind: Literal["storage_post"]
    name: StepName
    url: Template = Field(description="Storage endpoint, fixed or from a response ('{create.url}').")
    fields: Annotated[str | dict[str, str], PlainValidator(_fields_source)] = Field(
        description="The presigned fields, e.g. '{create.fields}'."
    )
    extra_fields: dict[str, str] = Field(default={}, description="Added after the returned fields.")
    file_field: str = "file"
    credential: bool = False

    @field_validator("credential")
    @classmethod
    def _never_credentialed(cls, credential: bool) -> bool:
        if credential:
            raise ValueError(
                "a storage_post never carries the target's credential: the presigned "
                "fields are the storage's authorization; remove credential: true"
            )
        return credential


Step = Annotated[
    RequestStep | MultipartStep | PollStep | DownloadStep | StoragePostStep,
    Field(discriminator="kind"),
]


def step_is_repeatable(step: Step) -> bool:
    """Whether sending this step again after an unknown outcome is harmless.

    Polls and downloads only read; a request is repeatable when its method is
    idempotent unless the admin says otherwise; storage POSTs are not, because their
    presigned grant is short-lived and must come fresh from the first step.
    """
    if isinstance(step, PollStep | DownloadStep):
        return True
    if isinstance(step, StoragePostStep):
        return False
    if step.repeatable is not None:
        return step.repeatable
    return step.method in ("GET", "PUT", "DELETE")


def step_sends_file(step: Step) -> bool:
    return isinstance(step, MultipartStep | StoragePostStep)


def step_creates(step: Step) -> bool:
    """Whether the step sends the file or creates something (it carries an idempotency key)."""
    return step_sends_file(step) or (isinstance(step, RequestStep) and step.method in ("POST", "PATCH"))


def step_templates(step: Step) -> list[object]:
    """Every admin-written value of a step that may hold ``{references}``."""
    if isinstance(step, StoragePostStep):
        return [step.url, step.fields, step.extra_fields]
    values: list[object] = [step.path, step.url, step.query, step.headers]
    if isinstance(step, RequestStep):
        values += [step.body, step.form]
    if isinstance(step, MultipartStep):
        values.append(step.fields)
    if isinstance(step, DownloadStep):
        values.append(step.filename)
    return [value for value in values if value is not None]


def step_outputs(step: Step) -> tuple[str, ...]:
    """Names a later step can use as ``{step_name.NAME}``."""
    saved = tuple(step.save) if not isinstance(step, StoragePostStep) else ()
    if isinstance(step, PollStep):
        return (*saved, "status", "details")
    if isinstance(step, DownloadStep):
        return (*saved, "path", "filename")
    return saved


def check_step_list(steps: tuple[Step, ...]) -> None:
    """Refuse a step list whose names clash or whose templates refer to unknown values."""
    if not any(step_sends_file(step) for step in steps):
        raise ValueError("no step sends the file; add a multipart or storage_post step")
    known: dict[str, tuple[str, ...]] = {"file": FILE_VALUES, "target": TARGET_VALUES}
    for position, step in enumerate(steps):
        if step.name in known:
            raise ValueError(f"steps[{position}]: step name {step.name!r} is used twice")
        for value in step_templates(step):
            try:
                refs = list(references_in(value))
            except TemplateError as error:
                raise ValueError(f"steps[{position}] ({step.name}): {error}") from None
            for ref in refs:
                _check_reference(ref, known, f"steps[{position}] ({step.name})")
        known[step.name] = step_outputs(step)


def check_templates(value: object, where: str) -> None:
    """Refuse a template (in a preset) that refers to anything but ``file``/``target``."""
    known = {"file": FILE_VALUES, "target": TARGET_VALUES}
    try:
        refs = list(references_in(value))
    except TemplateError as error:
        raise ValueError(str(error)) from None
    for ref in refs:
        _check_reference(ref, known, where)


def _check_reference(ref: str, known: dict[str, tuple[str, ...]], where: str) -> None:
    head, _, rest = ref.partition(".")
    if head not in known:
        available = ", ".join(sorted(known))
        raise ValueError(
            f"{where}: {{{ref}}} refers to {head!r}, which is not defined here; use one of: {available}"
        )
    if not rest:
        if head in ("file", "target"):
            raise ValueError(f"{where}: {{{ref}}} needs a field, e.g. {{{head}.name}}")
        return
    field = rest.split(".", 1)[0]
    if field not in known[head]:
        offered = ", ".join(known[head]) or "nothing (add a save: mapping to that step)"
        raise ValueError(
            f"{where}: {{{ref}}} refers to {field!r}, which {head!r} does not provide; it provides: {offered}"
        )
