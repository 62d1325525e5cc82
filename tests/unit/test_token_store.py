"""The token file: one per target, mode 0600, replaced atomically, tied to an identity."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from uploader_daemon.auth.grant import TokenGrant
from uploader_daemon.auth.store import TokenStore

IDENTITY = "token https://api.example.test/auth/login uploader"
GRANT = TokenGrant(token="abc.def.ghi", expires_at=1_700_003_600.0, obtained_at=1_700_000_000.0)


@pytest.fixture
def tokens_dir(tmp_path: Path) -> Path:
    """The state directory's ``tokens`` folder, as the daemon creates it."""
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o700)
    return directory


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_saved_grant_loads_back_unchanged(tokens_dir: Path) -> None:
    """Token, expiry, send time and refresh token survive the round trip."""
    grant = TokenGrant("abc.def.ghi", 1_700_003_600.5, 1_700_000_000.25, refresh_token="refresh-1")
    TokenStore(tokens_dir, "reports", IDENTITY).save(grant)

    assert grant == TokenStore(tokens_dir, "reports", IDENTITY).load()


def test_the_file_is_named_after_the_target_and_readable_only_by_the_owner(tokens_dir: Path) -> None:
    """``tokens/<target>.json`` with mode 0600, and no temporary file left beside it."""
    store = TokenStore(tokens_dir, "reports", IDENTITY)
    store.save(GRANT)

    assert tokens_dir / "reports.json" == store.path
    assert 0o600 == mode_of(store.path)
    assert ["reports.json"] == sorted(path.name for path in tokens_dir.iterdir())


def test_the_file_is_0600_even_under_a_permissive_umask(tokens_dir: Path) -> None:
    """The mode does not depend on the process umask."""
    previous = os.umask(0)
    try:
        TokenStore(tokens_dir, "reports", IDENTITY).save(GRANT)
    finally:
        os.umask(previous)

    assert 0o600 == mode_of(tokens_dir / "reports.json")


def test_a_leftover_temporary_file_does_not_lend_its_mode_to_the_token_file(tokens_dir: Path) -> None:
    """A world-readable temporary file left by a crash is not reused with its old mode."""
    leftover = tokens_dir / f".reports.json.{os.getpid()}.tmp"
    leftover.write_text("half a token", encoding="utf-8")
    leftover.chmod(0o644)

    TokenStore(tokens_dir, "reports", IDENTITY).save(GRANT)

    assert 0o600 == mode_of(tokens_dir / "reports.json")
    assert not leftover.exists()


def test_saving_replaces_the_previous_grant_through_a_rename(tokens_dir: Path) -> None:
    """The new file is a new inode renamed over the old one: never a half-written file."""
    store = TokenStore(tokens_dir, "reports", IDENTITY)
    store.save(GRANT)
    first_inode = store.path.stat().st_ino
    newer = TokenGrant("new.token.value", GRANT.expires_at + 3600, GRANT.obtained_at + 3600)

    store.save(newer)

    assert first_inode != store.path.stat().st_ino
    assert newer == store.load()


def test_the_file_records_the_identity_it_was_issued_for(tokens_dir: Path) -> None:
    """The identity travels with the token, so a config change can be detected."""
    store = TokenStore(tokens_dir, "reports", IDENTITY)
    store.save(GRANT)

    assert IDENTITY == json.loads(store.path.read_text(encoding="utf-8"))["identity"]


def test_a_grant_saved_for_another_identity_is_not_loaded(tokens_dir: Path) -> None:
    """Another user or API (same target name) must log in for itself."""
    TokenStore(tokens_dir, "reports", IDENTITY).save(GRANT)

    other = TokenStore(tokens_dir, "reports", "token https://api.example.test/auth/login someone-else")

    assert other.load() is None


def test_a_missing_file_loads_as_nothing(tokens_dir: Path) -> None:
    """No file yet: no grant, no warning."""
    with capture_logs() as events:
        assert TokenStore(tokens_dir, "reports", IDENTITY).load() is None
    assert [] == events


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2, 3]",
        json.dumps({"identity": IDENTITY}),
        json.dumps({"identity": IDENTITY, "token": "t", "expires_at": "soon", "obtained_at": 1.0}),
        json.dumps({"identity": IDENTITY, "token": "t", "expires_at": None, "obtained_at": 1.0}),
        json.dumps({"identity": IDENTITY, "token": None, "expires_at": 2.0, "obtained_at": 1.0}),
        json.dumps(
            {"identity": IDENTITY, "token": "t", "expires_at": 2.0, "obtained_at": 1.0, "refresh_token": 7}
        ),
    ],
)
def test_a_corrupt_file_loads_as_nothing(tokens_dir: Path, content: str) -> None:
    """Unparseable or incomplete files mean "log in again", never a crash or a bogus token."""
    (tokens_dir / "reports.json").write_text(content, encoding="utf-8")

    assert TokenStore(tokens_dir, "reports", IDENTITY).load() is None


def test_an_unparseable_file_is_reported(tokens_dir: Path) -> None:
    """A file that is not JSON is logged, so an admin can see why a restart logged in again."""
    (tokens_dir / "reports.json").write_text("{not json", encoding="utf-8")

    with capture_logs() as events:
        TokenStore(tokens_dir, "reports", IDENTITY).load()

    assert ["token_store_unreadable"] == [event["event"] for event in events]


def test_clear_removes_the_file_and_tolerates_a_missing_one(tokens_dir: Path) -> None:
    """A discarded token is gone from disk; clearing twice is harmless."""
    store = TokenStore(tokens_dir, "reports", IDENTITY)
    store.save(GRANT)

    store.clear()
    store.clear()

    assert not store.path.exists()
    assert store.load() is None


def test_a_failed_write_is_logged_not_raised(tmp_path: Path) -> None:
    """Losing the stored token only costs a login after a restart: the daemon keeps running."""
    store = TokenStore(tmp_path / "no-such-dir", "reports", IDENTITY)

    with capture_logs() as events:
        store.save(GRANT)

    assert ["token_store_write_failed"] == [event["event"] for event in events]
    assert not store.path.parent.exists()
