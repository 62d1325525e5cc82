"""journald priorities: the <N> prefix only when stdout is the journal, on every kind of line."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog

from uploader_daemon.logs import configure_logging, get_logger, stream_is_journal
from uploader_daemon.redaction import Redactor


def journal_of(path: Path) -> str:
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


def test_stdout_is_the_journal_only_when_journal_stream_names_its_device_and_inode(tmp_path: Path) -> None:
    """The same file: yes; another file, a malformed value, no variable, no descriptor: no."""
    ours, other = tmp_path / "ours.log", tmp_path / "other.log"
    other.touch()
    with ours.open("w") as stream:
        assert stream_is_journal(stream, {"JOURNAL_STREAM": journal_of(ours)})
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": journal_of(other)})
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(stream, {})
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": journal_of(ours)})


def configured(tmp_path: Path, journal: bool | None) -> Path:
    path = tmp_path / "stdout.log"
    stream = path.open("w", encoding="utf-8")
    configure_logging("debug", "json", Redactor(), stream, cache_loggers=False, journal=journal)
    log = get_logger("uploader_daemon.test")
    log.debug("looked")
    log.info("delivered")
    log.warning("retrying")
    log.error("parked")
    log.critical("crashed")
    logging.getLogger("watchdog").warning("observer trouble")
    logging.getLogger("apscheduler").error("job failed")
    stream.close()
    return path


def test_each_line_carries_its_priority_and_the_rest_is_the_json_object(tmp_path: Path) -> None:
    """debug 7, info 6, warning 4, error 3, critical 2; the libraries' lines too."""
    lines = configured(tmp_path, journal=True).read_text(encoding="utf-8").splitlines()

    prefixes = [(line[:3], json.loads(line[3:])["event"]) for line in lines]
    assert [
        ("<7>", "looked"),
        ("<6>", "delivered"),
        ("<4>", "retrying"),
        ("<3>", "parked"),
        ("<2>", "crashed"),
        ("<4>", "observer trouble"),
        ("<3>", "job failed"),
    ] == prefixes


def test_a_terminal_pipe_or_file_gets_plain_json_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the journal (detected from the environment here), no prefix: every line is JSON."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    lines = configured(tmp_path, journal=None).read_text(encoding="utf-8").splitlines()

    assert 7 == len([json.loads(line) for line in lines])


def test_an_exception_logged_with_its_traceback_is_at_error_priority(tmp_path: Path) -> None:
    """log.exception() renders the traceback into the same line, prefixed <3>."""
    path = tmp_path / "stdout.log"
    with path.open("w", encoding="utf-8") as stream:
        configure_logging("info", "json", Redactor(), stream, cache_loggers=False, journal=True)
        try:
            int("boom")
        except ValueError:
            structlog.get_logger("x").exception("went_wrong")

    [line] = path.read_text(encoding="utf-8").splitlines()
    assert line.startswith("<3>{")
    assert "ValueError: invalid literal" in json.loads(line[3:])["exception"]
