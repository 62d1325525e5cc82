"""The API presets of the ``upload:`` section: each supported API as a short config.

A preset (``type: multipart``, ``runrun_document``, ``presigned_with_status``,
``conversion_task``, ``gateway_presigned``) expands into the step list of
:mod:`uploader_daemon.config.upload`; ``type: steps`` is that list written out. At run
time there is only the step list; ``uploader-daemon check-config --show-steps`` prints it.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, model_validator

from uploader_daemon.config.types import HttpUrl, Model, OutputFolder, PositiveDuration
from uploader_daemon.config.upload import (
    DownloadStep,
    MultipartStep,
    PollStep,
    RequestStep,
    Scalar,
    ScalarValue,
    StatusValue,
    Step,
    StoragePostStep,
    check_step_list,
    check_templates,
)


class StorageSettings(Model):
    """Where the presigned POST goes and what it adds to the returned fields."""

    url: HttpUrl | None = Field(
        default=None, description="Fixed storage endpoint; else taken from the response."
    )
    url_field: str = Field(default="url", description="Dotted path of the storage URL in the response.")
    fields_field: str = Field(default="fields", description="Dotted path of the presigned fields.")
    extra_fields: dict[str, str] = {}


class RunrunStorageSettings(StorageSettings):
    """Runrun.it's answer carries no storage URL: it is configuration."""

    url: HttpUrl = Field(description="The S3 bucket endpoint the document fields are for.")
    extra_fields: dict[str, str] = {"success_action_status": "201"}


class PollSettings(Model):
    interval: PositiveDuration = 5.0
    deadline: PositiveDuration = 600.0


class ConversionPollSettings(PollSettings):
    """A conversion takes longer than a status check: an hour unless said otherwise."""

    deadline: PositiveDuration = 3600.0


class MultipartUpload(Model):
    """Flow T: the file as a multipart POST to the API, with the credential."""

    type: Literal["multipart"]
    path: str = "/api/envio"
    method: Literal["POST", "PUT"] = "POST"
    file_field: str = "file"
    fields: dict[str, ScalarValue] = Field(
        default={}, description="Extra form fields; may use {file.*} values."
    )

    @model_validator(mode="after")
    def _templates(self) -> MultipartUpload:
        check_templates([self.path, self.fields], "upload")
        return self

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        return (
            MultipartStep(
                kind="multipart",
                name="upload",
                path=self.path,
                method=self.method,
                file_field=self.file_field,
                fields=self.fields,
            ),
        )


class RunrunTask(Model):
    """Create a Runrun.it task per file instead of attaching to a configured task_id."""

    title: str = "{file.name}"
    description: str = ""
    board_id: int
    project_id: int | None = None


class RunrunDocumentUpload(Model):
    """Flow R: create document -> storage POST -> mark_as_uploaded (static headers)."""

    type: Literal["runrun_document"]
    task_id: int | None = None
    create_task: RunrunTask | None = None
    storage: RunrunStorageSettings

    @model_validator(mode="after")
    def _one_task_source(self) -> RunrunDocumentUpload:
        if (self.task_id is None) == (self.create_task is None):
            raise ValueError("set exactly one of task_id (attach to that task) or create_task")
        if self.create_task is not None:
            check_templates([self.create_task.title, self.create_task.description], "create_task")
        return self

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        steps: list[Step] = []
        task_id: Scalar = self.task_id if self.task_id is not None else "{task.id}"
        if self.create_task is not None:
            task = {
                "title": self.create_task.title,
                "description": self.create_task.description,
                "board_id": self.create_task.board_id,
            }
            if self.create_task.project_id is not None:
                task["project_id"] = self.create_task.project_id
            steps.append(
                RequestStep(
                    kind="request", name="task", path="/tasks", json={"task": task}, save={"id": "id"}
                )
            )
        save = {"id": "id", "fields": self.storage.fields_field}
        document = {
            "data_file_name": "{file.name}",
            "data_file_size": "{file.size}",
            "warning_duplicate": False,
        }
        steps += [
            RequestStep(
                kind="request",
                name="create",
                path="/documents",
                query={"task_id": task_id},
                json={"document": document},
                save=save,
            ),
            _storage_step("create", self.storage),
            RequestStep(kind="request", name="confirm", path="/documents/{create.id}/mark_as_uploaded"),
        ]
        return tuple(steps)


class PresignedStatusUpload(Model):
    """Flow P: /upload -> storage POST -> /confirm-upload -> poll /consult-status."""

    type: Literal["presigned_with_status"]
    upload_path: str = "/upload"
    confirm_path: str = "/confirm-upload"
    status_path: str = "/consult-status"
    file_type: str = Field(default="{file.mime_type}", description="Sent as the 'type' field.")
    storage: StorageSettings = StorageSettings()
    poll: PollSettings = PollSettings()
    success: tuple[StatusValue, ...] = ("completed",)
    failure: tuple[StatusValue, ...] = ("error",)

    @model_validator(mode="after")
    def _templates(self) -> PresignedStatusUpload:
        check_templates([self.upload_path, self.confirm_path, self.status_path, self.file_type], "upload")
        return self

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        save = {"file_id": "file_id", "fields": self.storage.fields_field}
        if self.storage.url is None:
            save["url"] = self.storage.url_field
        announce = {
            "file_name": "{file.name}",
            "extension": "{file.extension}",
            "len": "{file.size}",
            "type": self.file_type,
        }
        return (
            RequestStep(kind="request", name="upload", path=self.upload_path, json=announce, save=save),
            _storage_step("upload", self.storage),
            RequestStep(
                kind="request", name="confirm", path=self.confirm_path, json={"file_id": "{upload.file_id}"}
            ),
            PollStep(
                kind="poll",
                name="status",
                path=self.status_path,
                query={"file_id": "{upload.file_id}"},
                status_field="status",
                success=self.success,
                failure=self.failure,
                details_field="details",
                interval=self.poll.interval,
                deadline=self.poll.deadline,
            ),
        )


class ConversionTaskUpload(Model):
    """Flow C: multipart task -> poll its state -> download the result."""

    type: Literal["conversion_task"]
    conversion_type: str = Field(min_length=1)
    output_dir: OutputFolder
    tasks_path: str = "/api/tasks"
    download_path: str = "/api/download"
    filename: str = Field(
        default="{file.stem}",
        description="Result name when the server sends none "
        "(the conversion type is appended as the extension).",
    )
    poll: ConversionPollSettings = ConversionPollSettings()
    delete_task: bool = Field(default=False, description="DELETE the task once the result is saved.")

    @model_validator(mode="after")
    def _templates(self) -> ConversionTaskUpload:
        check_templates([self.tasks_path, self.download_path, self.filename], "upload")
        return self

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        steps: list[Step] = [
            MultipartStep(
                kind="multipart",
                name="submit",
                path=self.tasks_path,
                fields={"conversion_type": self.conversion_type},
                save={"task_id": "task_id"},
            ),
            PollStep(
                kind="poll",
                name="task",
                path=self.tasks_path + "/{submit.task_id}",
                status_field="state",
                success=("SUCCESS",),
                failure=("FAILURE", "REVOKED"),
                details_field="result",
                interval=self.poll.interval,
                deadline=self.poll.deadline,
            ),
            DownloadStep(
                kind="download",
                name="result",
                path=self.download_path,
                query={"task_id": "{submit.task_id}"},
                output_dir=self.output_dir,
                filename=f"{self.filename}.{self.conversion_type}",
            ),
        ]
        if self.delete_task:
            steps.append(
                RequestStep(
                    kind="request",
                    name="cleanup",
                    method="DELETE",
                    path=self.tasks_path + "/{submit.task_id}",
                )
            )
        return tuple(steps)


class GatewayPresignedUpload(Model):
    """Flow G: gateway POST with upload_key/folder -> storage POST to the returned url."""

    type: Literal["gateway_presigned"]
    path: str = Field(description="The gateway route, joined to api.base_url.")
    folder: str
    upload_key: str = "{file.name}"
    storage: StorageSettings = StorageSettings()

    @model_validator(mode="after")
    def _templates(self) -> GatewayPresignedUpload:
        check_templates([self.path, self.folder, self.upload_key], "upload")
        return self

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        save = {"fields": self.storage.fields_field}
        if self.storage.url is None:
            save["url"] = self.storage.url_field
        return (
            RequestStep(
                kind="request",
                name="locate",
                path=self.path,
                query={"upload_key": self.upload_key, "folder": self.folder},
                save=save,
            ),
            _storage_step("locate", self.storage),
        )


class StepsUpload(Model):
    """The full form: an explicit list of steps."""

    type: Literal["steps"]
    step_list: tuple[Step, ...] = Field(alias="steps", min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> StepsUpload:
        check_step_list(self.step_list)
        return self

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.step_list


def _storage_step(source: str, storage: StorageSettings) -> StoragePostStep:
    return StoragePostStep(
        kind="storage_post",
        name="store",
        url=storage.url if storage.url is not None else f"{{{source}.url}}",
        fields=f"{{{source}.fields}}",
        extra_fields=storage.extra_fields,
    )


UploadSettings = Annotated[
    MultipartUpload
    | RunrunDocumentUpload
    | PresignedStatusUpload
    | ConversionTaskUpload
    | GatewayPresignedUpload
    | StepsUpload,
    Field(discriminator="type"),
]
