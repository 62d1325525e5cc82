"""What templates know about a file: name on the wire, MIME type, size, SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from uploader_daemon.delivery.facts import FileFacts, file_facts, wire_text

CONTENT = b"%PDF-1.7 a few bytes\n" * 100


def test_the_sha256_is_read_through_the_open_descriptor_only_when_asked(tmp_path: Path) -> None:
    """with_sha256 hashes the whole file (pread: the descriptor's offset is left alone)."""
    path = tmp_path / "report.pdf"
    path.write_bytes(CONTENT)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.lseek(descriptor, 5, os.SEEK_SET)
        hashed = asyncio.run(
            file_facts(path, "report.pdf", descriptor=descriptor, size=len(CONTENT), with_sha256=True)
        )
        plain = asyncio.run(
            file_facts(path, "report.pdf", descriptor=descriptor, size=len(CONTENT), with_sha256=False)
        )
        assert 5 == os.lseek(descriptor, 0, os.SEEK_CUR)
    finally:
        os.close(descriptor)
    assert hashlib.sha256(CONTENT).hexdigest() == hashed.sha256
    assert plain.sha256 is None


def test_open_reads_from_the_first_byte_through_a_descriptor_or_the_path(tmp_path: Path) -> None:
    """The descriptor is duplicated (closing the handle leaves the caller's open) and rewound."""
    path = tmp_path / "a.csv"
    path.write_bytes(b"id\n1\n")
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.read(descriptor, 2)
        with FileFacts(path, "a.csv", 5, descriptor=descriptor).open() as handle:
            assert b"id\n1\n" == handle.read()
        assert b"id\n1\n" == os.pread(descriptor, 10, 0)  # the caller's descriptor is still open
    finally:
        os.close(descriptor)
    with FileFacts(path, "a.csv", 5).open() as handle:
        assert b"id\n1\n" == handle.read()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("backup.tar.gz", "application/x-tar"),
        ("data.gz", "application/octet-stream"),
        ("table.csv", "text/csv"),
        ("report.pdf", "application/pdf"),
        ("v1.2.settings.json", "application/json"),
        ("README", "application/octet-stream"),
    ],
)
def test_the_mime_type_looks_at_the_last_two_suffixes(name: str, expected: str) -> None:
    """``.tar.gz`` is a tar archive; an unknown suffix is octet-stream."""
    assert expected == FileFacts(Path("/drop") / name, name, 1).mime_type


def test_a_name_that_is_not_utf8_goes_on_the_wire_decoded_as_latin1() -> None:
    """b"caf\\xe9.csv" (a latin-1 client's name) is sent as café.csv; UTF-8 names are unchanged."""
    legacy = os.fsdecode(b"caf\xe9.csv")
    assert "café.csv" == wire_text(legacy)
    assert "résumé.csv" == wire_text("résumé.csv")
    facts = FileFacts(Path("/drop") / "sub" / legacy, os.path.join("sub", legacy), 3)
    assert "café.csv" == facts.wire_name
    assert legacy == facts.name  # the file keeps its bytes on disk


def test_template_values_describe_the_file_as_the_wire_sees_it() -> None:
    """name, stem, extension, size, sha256, mime_type and relative_path of the ``file`` namespace."""
    legacy = os.fsdecode(b"r\xe9sum\xe9.pdf")
    facts = FileFacts(Path("/drop/in") / legacy, f"in/{legacy}", 42, sha256="ab" * 32)
    assert {
        "name": "résumé.pdf",
        "stem": "résumé",
        "extension": ".pdf",
        "size": 42,
        "sha256": "ab" * 32,
        "mime_type": "application/pdf",
        "relative_path": "in/résumé.pdf",
    } == facts.template_values()
