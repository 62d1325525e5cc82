"""Flow C end to end: the real daemon and the emulator's conversion API behind a JWT login.

login (a JWT in ``token``, no ``expires_in``: the expiry is the ``exp`` claim) ->
multipart ``POST /api/tasks`` with ``conversion_type`` -> poll the task -> download the
result into the output folder (``.part`` first, the name from Content-Disposition, never
overwriting) -> optionally ``DELETE`` the task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import PASSWORD
from tests.helpers import ConfigYaml, Retry, running_daemon, token_auth, wait_until
from uploader_daemon.config import Config
from uploader_daemon.emulator import Emulator

JWT_LIFETIME = 1234.0


def config_for(emu: Emulator, folders: dict[str, Path], *, delete_task: bool = False) -> Config:
    login = {
        "path": "/api/auth/login",
        "username": "uploader",
        "password": {"env": "CONVERTER_PASSWORD"},
        "token_field": "token",
    }
    upload = {
        "type": "conversion_task",
        "conversion_type": "mp4",
        "output_dir": folders["out"],
        "filename": "template-{file.stem}",
        "poll": {"interval": "20ms", "deadline": "10s"},
        "delete_task": delete_task,
    }
    return ConfigYaml(
        folders,
        "videos",
        emu.base_url,
        retry=Retry(3, "50ms", "100ms"),
        api_timeout="10s",
        auth=token_auth(
            login,
            refresh={"check_every": "1h", "before_expiry": "5m", "active_within": "30m"},
            default_lifetime="1h",
        ),
        upload=upload,
    ).load({"CONVERTER_PASSWORD": PASSWORD})


def wait_for_files(folder: Path, *names: str) -> None:
    wait_until(lambda: all((folder / name).exists() for name in names), message=f"{names} in {folder}")


def test_a_file_is_converted_and_the_result_saved_under_the_servers_name(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """Login, task, polls, download: ``holiday.mp4`` (Content-Disposition, not the template), whole."""
    emu = start_emulator(jwt_lifetime=JWT_LIFETIME)
    original = b"\x00\x01RIFF....AVI " * 1000
    logged_in_after = time.time()
    with running_daemon(config_for(emu, folders)) as runner:
        (folders["drop"] / "holiday.avi").write_bytes(original)
        wait_for_files(folders["sent"], "holiday.avi")
        daemon = runner.daemon
        assert daemon is not None
        expires_at = runner.call(lambda: daemon.services[0].credential.expires_at)

    assert ["holiday.mp4"] == sorted(path.name for path in folders["out"].iterdir())
    assert b"CONVERTED:mp4\n" + original == (folders["out"] / "holiday.mp4").read_bytes()
    # No expires_in in the answer: the token lives as long as its exp claim says, not default_lifetime.
    assert logged_in_after + JWT_LIFETIME - 2 <= expires_at <= time.time() + JWT_LIFETIME
    [submitted] = emu.received
    assert ("C", "holiday.avi", "mp4") == (
        submitted.flow,
        submitted.name,
        submitted.fields["conversion_type"],
    )
    [login] = [record for record in emu.requests if record.path == "/api/auth/login"]
    task_calls = [record for record in emu.requests if record.path.startswith("/api/t")]
    assert 1 == len({record.authorization for record in task_calls})
    assert "Bearer ey" == (task_calls[0].authorization or "")[:9]
    counters = emu.counters
    assert (1, 1, 3, 1) == (
        counters["logins"],
        counters["tasks_created"],
        counters["task_polls"],
        counters["downloads"],
    )
    assert "DELETE" not in {record.method for record in emu.requests}
    assert 200 == login.status


def test_a_second_result_with_the_same_name_gets_a_counter_instead_of_overwriting(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """``clip.avi`` and later ``clip.mov`` both convert to ``clip.mp4``: the second is ``clip.1.mp4``."""
    emu = start_emulator()
    with running_daemon(config_for(emu, folders)):
        (folders["drop"] / "clip.avi").write_bytes(b"first")
        wait_for_files(folders["sent"], "clip.avi")
        (folders["drop"] / "clip.mov").write_bytes(b"second")
        wait_for_files(folders["sent"], "clip.mov")

    assert ["clip.1.mp4", "clip.mp4"] == sorted(path.name for path in folders["out"].iterdir())
    assert b"CONVERTED:mp4\nfirst" == (folders["out"] / "clip.mp4").read_bytes()
    assert b"CONVERTED:mp4\nsecond" == (folders["out"] / "clip.1.mp4").read_bytes()


def test_a_task_that_ends_in_failure_moves_the_file_to_failed_dir_with_the_result(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """``FAILURE`` is terminal: failed_dir, the task's ``result`` in the sidecar, nothing downloaded."""
    emu = start_emulator()
    with running_daemon(config_for(emu, folders)):
        (folders["drop"] / "reject-codec.avi").write_bytes(b"odd codec")
        wait_for_files(folders["failed"], "reject-codec.avi", "reject-codec.avi.error.json")

    report = json.loads((folders["failed"] / "reject-codec.avi.error.json").read_text())
    assert ("task", "{'error': 'unsupported codec'}", 1) == (
        report["step"],
        report["details"],
        report["attempts"],
    )
    assert "'FAILURE'" in report["error"]
    assert b"odd codec" == (folders["failed"] / "reject-codec.avi").read_bytes()
    assert [] == list(folders["out"].iterdir())
    assert 0 == emu.counters["downloads"]


def test_delete_task_removes_the_task_once_the_result_is_saved(
    start_emulator: Callable[..., Emulator], folders: dict[str, Path]
) -> None:
    """With ``delete_task: true`` the last call is ``DELETE /api/tasks/{id}`` (204)."""
    emu = start_emulator(task_polls_until_done=0)
    with running_daemon(config_for(emu, folders, delete_task=True)):
        (folders["drop"] / "short.avi").write_bytes(b"short")
        wait_for_files(folders["sent"], "short.avi")

    [download] = [record for record in emu.requests if record.path == "/api/download"]
    task_id = download.query["task_id"]
    assert [
        ("POST", "/api/auth/login", 200),
        ("POST", "/api/tasks", 200),
        ("GET", f"/api/tasks/{task_id}", 200),
        ("GET", "/api/download", 200),
        ("DELETE", f"/api/tasks/{task_id}", 204),
    ] == [(record.method, record.path, record.status) for record in emu.requests]
    assert b"CONVERTED:mp4\nshort" == (folders["out"] / "short.mp4").read_bytes()
