"""How ``upload`` shows its progress: a bar per file on a terminal, plain lines otherwise.

Both print to the stream they are given (stdout); logs go to stderr. The plain form is
for scripts, cron mails and CI logs: one line per event, never a carriage return.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Plain lines say how far a large file got at every quarter.
_PLAIN_STEPS = 4
_PLAIN_MIN_SIZE = 1024 * 1024


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover -- the loop always returns


class BarReporter:
    """A rich progress bar per file (for a terminal); use it as a context manager."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=stream),
        )
        self._tasks: dict[int, TaskID] = {}
        self._names: dict[int, str] = {}
        self._sizes: dict[int, int] = {}

    def __enter__(self) -> BarReporter:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def started(self, index: int, path: Path, size: int) -> None:
        self._names[index] = path.name
        self._sizes[index] = size
        self._tasks[index] = self._progress.add_task(path.name, total=size or 1, status="starting")

    def request(self, index: int, method: str, url: str) -> None:
        self._progress.update(self._tasks[index], status=f"{method} {url}")

    def sent(self, index: int, sent: int) -> None:
        self._progress.update(self._tasks[index], completed=min(sent, self._sizes[index]))

    def retrying(self, index: int, attempt: int, delay: float, error: str) -> None:
        status = f"[yellow]attempt {attempt} failed ({error}); again in {delay:.0f}s"
        self._progress.update(self._tasks[index], completed=0, status=status)

    def finished(self, index: int, error: str | None, seconds: float) -> None:
        task = self._tasks[index]
        name = self._names[index]
        if error is None:
            self._progress.update(
                task,
                description=f"[green]✓ {name}",
                completed=self._sizes.get(index, 1) or 1,
                status=f"[green]delivered in {seconds:.1f}s",
            )
        else:
            self._progress.update(task, description=f"[red]✗ {name}", status=f"[red]failed: {error}")


class LineReporter:
    """Plain progress lines (for pipes and logs)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._names: dict[int, str] = {}
        self._sizes: dict[int, int] = {}
        self._quarters: dict[int, int] = {}

    def __enter__(self) -> LineReporter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def started(self, index: int, path: Path, size: int) -> None:
        self._names[index] = str(path)
        self._sizes[index] = size
        self._say(index, f"sending {human_size(size)}")

    def request(self, index: int, method: str, url: str) -> None:
        self._say(index, f"{method} {url}")

    def sent(self, index: int, sent: int) -> None:
        size = self._sizes[index]
        if size < _PLAIN_MIN_SIZE:
            return
        quarter = min(sent, size) * _PLAIN_STEPS // size
        if quarter > self._quarters.get(index, 0):
            self._quarters[index] = quarter
            self._say(index, f"{quarter * 100 // _PLAIN_STEPS}% of {human_size(size)} sent")

    def retrying(self, index: int, attempt: int, delay: float, error: str) -> None:
        self._quarters[index] = 0
        self._say(index, f"attempt {attempt} failed ({error}); trying again in {delay:.0f}s")

    def finished(self, index: int, error: str | None, seconds: float) -> None:
        if error is None:
            self._say(index, f"delivered in {seconds:.1f}s")
        else:
            self._say(index, f"FAILED: {error}")

    def _say(self, index: int, message: str) -> None:
        print(f"{self._names.get(index, '?')}: {message}", file=self._stream, flush=True)
