"""Every shipped example config delivers a file end to end, as shipped.

Each ``config/examples/*.yaml`` is loaded, and only what must point at the test world is
replaced in the loaded mapping: state_dir, the folders, api.base_url, the storage URL,
the Cognito endpoint, pool and client ids. Secrets come from the credential files the
example names, in a temporary ``$CREDENTIALS_DIRECTORY`` (as systemd's
``LoadCredential=`` provides them). Each test asserts the exact set of keys it changed,
so an edit to an example that this test would paper over shows up here. Settle times,
retries, poll intervals and everything else stay as shipped; the emulator finishes its
polls at once so the shipped 5-10 s intervals cost nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import PASSWORD
from tests.helpers import running_daemon, wait_until
from tests.integration.conftest import CognitoPool
from tests.integration.gateway import Gateway
from uploader_daemon.config import Config, parse_config
from uploader_daemon.emulator import Emulator

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
# The shipped settle times (up to 5 s) are waited out for real.
TIMEOUT = 20.0


@pytest.fixture
def emu(start_emulator: Callable[..., Emulator]) -> Emulator:
    """The emulator; its status and task polls report done at the first poll."""
    return start_emulator(status_polls_until_done=0, task_polls_until_done=0)


class Example:
    """One example config: shipped mapping, edited mapping, and the temporary world."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.source = EXAMPLES / name
        self.shipped: dict[str, Any] = yaml.safe_load(self.source.read_text(encoding="utf-8"))
        self.data = copy.deepcopy(self.shipped)
        self.target: dict[str, Any] = self.data["targets"][0]
        folders = ("state", "drop", "sent", "failed", "out", "credentials")
        self.paths = {key: tmp_path / key for key in folders}
        self.paths["drop"].mkdir()
        self.paths["credentials"].mkdir()
        self.data["state_dir"] = str(self.paths["state"])
        self.target["folder"] = str(self.paths["drop"])
        self.target["failed_dir"] = str(self.paths["failed"])
        if self.target["after_upload"].get("archive_dir"):
            self.target["after_upload"]["archive_dir"] = str(self.paths["sent"])

    def config(self, secrets: Mapping[str, str]) -> Config:
        """Write the credential files the example names and parse the edited mapping."""
        for name in credential_names(self.data):
            (self.paths["credentials"] / name).write_text(secrets[name] + "\n", encoding="utf-8")
        environ = {"CREDENTIALS_DIRECTORY": str(self.paths["credentials"])}
        return parse_config(yaml.safe_dump(self.data), str(self.source), environ)

    def changed_keys(self) -> set[str]:
        """Dotted paths of every value that differs from the shipped example."""
        return set(differences(self.shipped, self.data))

    def drop(self, name: str, data: bytes) -> None:
        (self.paths["drop"] / name).write_bytes(data)


def credential_names(value: object) -> Iterator[str]:
    """Every ``{credential: NAME}`` in a config mapping."""
    if isinstance(value, Mapping):
        if set(value) == {"credential"}:
            yield str(value["credential"])
            return
        for item in value.values():
            yield from credential_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from credential_names(item)


def differences(shipped: object, edited: object, path: str = "") -> Iterator[str]:
    if isinstance(shipped, Mapping) and isinstance(edited, Mapping):
        for key in sorted(set(shipped) | set(edited)):
            yield from differences(shipped.get(key), edited.get(key), f"{path}.{key}" if path else key)
    elif isinstance(shipped, list) and isinstance(edited, list) and len(shipped) == len(edited):
        for index, (old, new) in enumerate(zip(shipped, edited, strict=True)):
            yield from differences(old, new, f"{path}[{index}]")
    elif shipped != edited:
        yield path


COMMON_CHANGES = {"state_dir", "targets[0].folder", "targets[0].failed_dir", "targets[0].api.base_url"}
ARCHIVE = "targets[0].after_upload.archive_dir"


def wait_for_file(path: Path) -> None:
    wait_until(path.exists, TIMEOUT, f"{path}")


def test_example_t_token_api_delivers_a_file_end_to_end(tmp_path: Path, emu: Emulator) -> None:
    """``T-token-api.yaml``: login, then the file as multipart to ``/api/envio``, archived."""
    example = Example("T-token-api.yaml", tmp_path)
    example.target["api"]["base_url"] = emu.base_url
    assert COMMON_CHANGES | {ARCHIVE} == example.changed_keys()
    config = example.config({"uploader_password": PASSWORD})
    with running_daemon(config):
        example.drop("report.csv", b"id,total\n1,42\n")
        wait_for_file(example.paths["sent"] / "report.csv")

    [received] = emu.received
    assert ("T", "report.csv", b"id,total\n1,42\n") == (
        received.flow,
        received.name,
        received.path.read_bytes(),
    )
    assert 1 == emu.counters["logins"]


def test_example_r_runrun_documents_delivers_a_file_end_to_end(tmp_path: Path, emu: Emulator) -> None:
    """``R-runrun-documents.yaml``: document for task 123456, storage POST with 201, confirmed."""
    example = Example("R-runrun-documents.yaml", tmp_path)
    example.target["api"]["base_url"] = emu.base_url
    example.target["upload"]["storage"]["url"] = emu.storage_url
    assert COMMON_CHANGES | {ARCHIVE, "targets[0].upload.storage.url"} == example.changed_keys()
    config = example.config(
        {"runrun_app_key": emu.settings.app_key, "runrun_user_token": emu.settings.user_token}
    )
    with running_daemon(config):
        example.drop("contract.pdf", b"%PDF contract")
        wait_for_file(example.paths["sent"] / "contract.pdf")

    [received] = emu.received
    assert ("R", b"%PDF contract", "201") == (
        received.flow,
        received.path.read_bytes(),
        received.fields["success_action_status"],
    )
    assert ["123456"] == [record.query["task_id"] for record in emu.requests if record.path == "/documents"]
    assert (1, 0, 0) == (
        emu.counters["documents_confirmed"],
        emu.counters["duplicate_confirms"],
        emu.counters["credential_leaks"],
    )


def test_example_p_presigned_status_delivers_a_file_end_to_end(tmp_path: Path, emu: Emulator) -> None:
    """``P-presigned-status.yaml``: upload, storage, confirm, ``completed``; then deleted as configured."""
    example = Example("P-presigned-status.yaml", tmp_path)
    example.target["api"]["base_url"] = emu.base_url
    assert COMMON_CHANGES == example.changed_keys()
    config = example.config({})
    with running_daemon(config):
        example.drop("scan.pdf", b"%PDF scan")
        dropped = example.paths["drop"] / "scan.pdf"
        wait_until(
            lambda: emu.counters["status_polls"] >= 1 and not dropped.exists(),
            TIMEOUT,
            "scan.pdf delivered and deleted",
        )

    [received] = emu.received
    assert ("P", b"%PDF scan") == (received.flow, received.path.read_bytes())
    assert (1, 1) == (emu.counters["documents_confirmed"], emu.counters["status_polls"])
    assert [] == list(example.paths["failed"].iterdir())


def test_example_c_conversion_tasks_delivers_a_file_end_to_end(tmp_path: Path, emu: Emulator) -> None:
    """``C-conversion-tasks.yaml``: JWT login, task, poll, result in output_dir, task deleted."""
    example = Example("C-conversion-tasks.yaml", tmp_path)
    example.target["api"]["base_url"] = emu.base_url
    example.target["upload"]["output_dir"] = str(example.paths["out"])
    assert COMMON_CHANGES | {ARCHIVE, "targets[0].upload.output_dir"} == example.changed_keys()
    config = example.config({"converter_password": PASSWORD})
    with running_daemon(config):
        example.drop("talk.avi", b"AVI talk")
        wait_for_file(example.paths["sent"] / "talk.avi")

    assert ["talk.mp4"] == [path.name for path in example.paths["out"].iterdir()]
    assert b"CONVERTED:mp4\nAVI talk" == (example.paths["out"] / "talk.mp4").read_bytes()
    assert ["DELETE"] == [record.method for record in emu.requests if record.method == "DELETE"]


def test_example_g_cognito_gateway_delivers_a_file_end_to_end(
    tmp_path: Path,
    new_cognito_pool: Callable[..., CognitoPool],
    bucket: str,
    s3: Any,
    moto_url: str,
    start_gateway: Callable[[str, str], Gateway],
) -> None:
    """``G-cognito-gateway.yaml``: SRP login on moto, gateway with ``TOK:``, object in S3."""
    example = Example("G-cognito-gateway.yaml", tmp_path)
    auth = example.target["auth"]
    # A pool in the example's own region, so the region stays as shipped.
    pool = new_cognito_pool(region=auth["region"])
    gateway = start_gateway(bucket, pool.region)
    stage = urlsplit(example.target["api"]["base_url"]).path
    example.target["api"]["base_url"] = gateway.url + stage
    auth.update(user_pool_id=pool.user_pool_id, client_id=pool.client_id, endpoint_url=moto_url)
    assert (
        COMMON_CHANGES
        | {
            ARCHIVE,
            "targets[0].auth.user_pool_id",
            "targets[0].auth.client_id",
            "targets[0].auth.endpoint_url",
        }
        == example.changed_keys()
    )
    config = example.config({"cognito_password": pool.password})
    with running_daemon(config):
        example.drop("goal.mp4", b"\x00\x00\x00\x18ftypmp42 goal")
        wait_for_file(example.paths["sent"] / "goal.mp4")

    stored = s3.get_object(Bucket=bucket, Key="video/goal.mp4")["Body"].read()
    assert b"\x00\x00\x00\x18ftypmp42 goal" == stored
    [call] = gateway.calls
    assert (stage + "/live/uploadclip/", 200) == (call.path, call.status)
    assert call.token is not None
