"""Progress lines of a large upload: one at the start, then one every ~10 s, on an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from tests.helpers import FakeClock
from uploader_daemon.delivery.body import CHUNK_SIZE, MultipartBody, MultipartStream
from uploader_daemon.delivery.facts import FileFacts

MIB = 1024 * 1024


def big_file(tmp_path: Path, size: int) -> FileFacts:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"v" * size)
    return FileFacts(path=path, relative_path="video.mp4", size=size)


def drain(stream: MultipartStream, clock: FakeClock, seconds_per_chunk: float) -> int:
    """Send the body, the clock moving ``seconds_per_chunk`` per chunk of the file; returns the bytes."""

    async def main() -> int:
        sent = 0
        async for chunk in stream:
            sent += len(chunk)
            if len(chunk) == CHUNK_SIZE:  # not the multipart head or tail
                clock.advance(seconds_per_chunk)
        return sent

    return asyncio.run(main())


def test_a_large_upload_says_when_it_starts_and_how_far_it_got_every_ten_seconds(tmp_path: Path) -> None:
    """8 chunks at 4 s each: a start line, then a line at 12 s and 24 s with bytes, rate and ETA."""
    clock = FakeClock(0.0)
    file = big_file(tmp_path, 8 * CHUNK_SIZE)
    stream = MultipartStream(b"head", file, b"tail", clock=clock, progress_from=MIB)

    with capture_logs() as logs:
        sent = drain(stream, clock, 4.0)

    assert 8 * CHUNK_SIZE + 8 == sent
    started, *progress = logs
    assert ("upload_started", "video.mp4", 8 * CHUNK_SIZE) == (
        started["event"],
        started["file"],
        started["size"],
    )
    assert [3 * CHUNK_SIZE, 6 * CHUNK_SIZE] == [line["sent"] for line in progress]
    assert [37.5, 75.0] == [line["percent"] for line in progress]
    # 3 chunks of 0.5 MiB in 12 s; 5 chunks left at that rate take 20 s.
    assert [0.12, 0.12] == [line["rate_mib_s"] for line in progress]
    assert [20, 8] == [line["eta_s"] for line in progress]
    assert {"info"} == {line["log_level"] for line in logs}


def test_a_body_below_the_threshold_says_nothing(tmp_path: Path) -> None:
    """A small upload finishes before anyone wonders: no progress lines."""
    clock = FakeClock(0.0)
    stream = MultipartStream(
        b"head", big_file(tmp_path, 4 * CHUNK_SIZE), b"tail", clock=clock, progress_from=8 * MIB
    )

    with capture_logs() as logs:
        drain(stream, clock, 30.0)

    assert [] == logs


def test_the_multipart_body_hands_its_clock_to_the_stream(tmp_path: Path) -> None:
    """MultipartBody(clock=...) times the progress of the stream it returns."""
    clock = FakeClock(0.0)
    body = MultipartBody({"name": "x"}, "file", big_file(tmp_path, 17 * CHUNK_SIZE), "video/mp4", clock=clock)
    content = asyncio.run(body.content())
    assert isinstance(content, MultipartStream)

    with capture_logs() as logs:
        drain(content, clock, 1.0)

    assert ["upload_started", "upload_progress"] == [line["event"] for line in logs]
