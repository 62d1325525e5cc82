"""The present state: the credential's cause, the STATUS= line, present.json, parked files now."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FakeClock
from uploader_daemon.monitor import Outcome
from uploader_daemon.present import (
    CredentialState,
    DaemonPresent,
    PresentFile,
    TargetRecorder,
    TargetSnapshot,
    credential_view,
    target_present,
)
from uploader_daemon.status import count_parked
from uploader_daemon.supervision import status_line

NOW = 1_700_000_000.0


def snapshot(**changes: object) -> TargetSnapshot:
    values: dict[str, object] = {
        "name": "reports",
        "scheduled": 0,
        "in_flight": 0,
        "watching": True,
        "token_expires_at": NOW + 3600,
        "logs_in": True,
        "api_down_since": None,
        "api_down_reason": None,
    } | changes
    return TargetSnapshot(**values)  # type: ignore[arg-type]


def recorder() -> TargetRecorder:
    return TargetRecorder(FakeClock(NOW), ["upload"])


def test_a_valid_token_reads_logged_in_until_its_expiry() -> None:
    """No trouble: "logged in until T"."""
    view = credential_view(snapshot(), recorder(), NOW)

    assert CredentialState.LOGGED_IN == view.state
    assert "logged in until 2023-11-14T23:13:20+00:00" == view.sentence()


def test_a_refused_password_is_blamed_on_the_password_even_during_the_outage_it_causes() -> None:
    """A rejected login outranks the gate's outage: the admin must fix the password."""
    events = recorder()
    events.login_finished(Outcome.REJECTED)
    view = credential_view(snapshot(token_expires_at=None, api_down_since=NOW - 60), events, NOW)

    assert CredentialState.LOGIN_REFUSED == view.state
    assert view.sentence().endswith(": check the username and password")


def test_a_login_that_succeeds_again_clears_the_refusal() -> None:
    """Fixed password: the state goes back to logged in."""
    events = recorder()
    events.login_finished(Outcome.REJECTED)
    events.login_finished(Outcome.SUCCESS)

    assert CredentialState.LOGGED_IN == credential_view(snapshot(), events, NOW).state


def test_a_401_to_the_upload_is_a_refused_token_until_the_next_login() -> None:
    """A 401 on a step carrying the credential, token discarded: "token refused"."""
    events = recorder()
    events.request_answered("upload", 401)
    view = credential_view(snapshot(token_expires_at=None), events, NOW)

    assert CredentialState.TOKEN_REFUSED == view.state
    assert view.sentence().startswith("token refused since ")


def test_a_401_from_a_step_without_the_credential_says_nothing_of_the_token() -> None:
    """A storage host's 401 is not the token's fault."""
    events = recorder()
    events.request_answered("store", 401)

    assert (
        CredentialState.NOT_LOGGED_IN == credential_view(snapshot(token_expires_at=None), events, NOW).state
    )


def test_an_outage_reads_api_unreachable_since_with_its_reason() -> None:
    """The gate's outage: "API unreachable since T (reason)"."""
    view = credential_view(
        snapshot(api_down_since=NOW - 240, api_down_reason="connection refused"), recorder(), NOW
    )

    assert "API unreachable since 2023-11-14T22:09:20+00:00 (connection refused)" == view.sentence()


@pytest.mark.parametrize(
    ("changes", "state"),
    [
        ({"token_expires_at": NOW - 1}, CredentialState.TOKEN_EXPIRED),
        ({"token_expires_at": None}, CredentialState.NOT_LOGGED_IN),
        ({"token_expires_at": None, "logs_in": False}, CredentialState.STATIC),
    ],
    ids=["expired while idle", "no token yet", "static headers"],
)
def test_without_trouble_the_token_itself_decides(changes: dict[str, object], state: CredentialState) -> None:
    """Expired, absent, or never needed."""
    assert state == credential_view(snapshot(**changes), recorder(), NOW).state


def test_the_status_line_names_pending_files_the_last_delivery_and_an_outage() -> None:
    """As in the issue: "reports: 3 pending, last delivery 12 s ago; scans: ..., API down for 4 min"."""
    events = recorder()
    events.last_delivery_at = NOW - 12
    reports = target_present(snapshot(scheduled=3, in_flight=1), events, NOW)
    scans = target_present(
        snapshot(name="scans", api_down_since=NOW - 250, api_down_reason="503"), recorder(), NOW
    )

    text, changes_in = status_line([reports, scans], NOW)

    assert (
        "reports: 3 pending (1 uploading), last delivery 12 s ago; scans: 0 pending, API down for 4 min, "
        "no delivery yet" == text
    )
    assert 2.0 <= changes_in <= 60


def test_the_status_line_changes_rarely_once_the_last_delivery_is_hours_old() -> None:
    """ "2 h ago" reads the same for up to an hour: an idle daemon is not woken every second."""
    events = recorder()
    events.last_delivery_at = NOW - 2 * 3600 - 10

    text, changes_in = status_line([target_present(snapshot(), events, NOW)], NOW)

    assert "reports: 0 pending, last delivery 2 h ago" == text
    assert 3590 == round(changes_in)


def test_present_json_is_written_0600_and_read_back(tmp_path: Path) -> None:
    """What the daemon writes, status reads: the same facts."""
    present = DaemonPresent(
        "node-a", 42, NOW - 60, NOW, True, (target_present(snapshot(scheduled=2), recorder(), NOW),)
    )
    file = PresentFile(tmp_path)

    file.write(present)

    assert present == file.read()
    assert 0o600 == (tmp_path / "present.json").stat().st_mode & 0o777
    assert [] == [path.name for path in tmp_path.iterdir() if path.name != "present.json"]


def test_a_damaged_present_json_reads_as_none(tmp_path: Path) -> None:
    """status falls back to the journal alone instead of failing."""
    (tmp_path / "present.json").write_text("{not json")

    assert PresentFile(tmp_path).read() is None


def test_parked_files_are_counted_now_without_their_sidecars(tmp_path: Path) -> None:
    """Two files and their .error.json (one in a sub-folder): 2; a missing failed_dir: 0."""
    failed = tmp_path / "failed"
    (failed / "sub").mkdir(parents=True)
    for path in (failed / "a.csv", failed / "sub" / "b.csv"):
        path.write_text("x")
        path.with_name(path.name + ".error.json").write_text("{}")

    assert (2, None) == count_parked(failed)
    assert (0, None) == count_parked(tmp_path / "missing")
