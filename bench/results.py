"""What a benchmark reports: rows with both sides' figures, a goal, and whether it was met.

Every comparison with a peer is a rate (files/s, MB/s), so the ratio is always
daemon / peer and higher is better. Rows without a peer (latency, memory, idle CPU)
have an absolute goal instead.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Detail = float | int | str


class GoalKind(enum.StrEnum):
    """How a row's goal is judged."""

    RATIO_AT_LEAST = "ratio_at_least"  # daemon / peer >= threshold
    AT_MOST = "at_most"  # daemon's figure <= threshold


@dataclass(frozen=True)
class Goal:
    """A row's target: a ratio to the peer, or a bound on the daemon's own figure."""

    kind: GoalKind
    threshold: float

    @classmethod
    def ratio_at_least(cls, threshold: float) -> Goal:
        """Met when the daemon's rate is at least ``threshold`` times the peer's."""
        return cls(GoalKind.RATIO_AT_LEAST, threshold)

    @classmethod
    def at_most(cls, threshold: float) -> Goal:
        """Met when the daemon's figure is at most ``threshold`` (in the row's unit)."""
        return cls(GoalKind.AT_MOST, threshold)


@dataclass(frozen=True)
class Row:
    """One line of the table: what was measured, on each side, against which goal.

    ``details`` carries what explains the figure (seconds, CPU per file, the other
    clock's reading) for the lines under the table and ``--json``.
    """

    benchmark: str
    unit: str
    daemon: float
    goal: Goal
    peer: float | None = None
    details: Mapping[str, Detail] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """daemon / peer, or None without a peer."""
        if self.peer is None or self.peer == 0:
            return None
        return self.daemon / self.peer

    @property
    def met(self) -> bool:
        """Whether the goal was reached."""
        if self.goal.kind is GoalKind.RATIO_AT_LEAST:
            return self.ratio is not None and self.ratio >= self.goal.threshold
        return self.daemon <= self.goal.threshold

    def goal_text(self) -> str:
        """The goal as a person reads it: ``≥ 1.0x`` or ``≤ 150 MiB``."""
        if self.goal.kind is GoalKind.RATIO_AT_LEAST:
            return f"≥ {self.goal.threshold:.1f}x"
        return f"≤ {_number(self.goal.threshold)} {self.unit}"

    def as_json(self) -> dict[str, object]:
        """The row as plain JSON values."""
        return {
            "benchmark": self.benchmark,
            "unit": self.unit,
            "peer": self.peer,
            "daemon": self.daemon,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "goal": self.goal_text(),
            "met": self.met,
            "details": dict(self.details),
        }


_NO_VALUE = "—"
_HEADINGS = ("benchmark", "peer", "daemon", "ratio", "goal", "met")


def table(rows: Sequence[Row]) -> str:
    """The rows as an aligned ``benchmark | peer | daemon | ratio | goal | met`` table."""
    cells = [
        (
            row.benchmark,
            _NO_VALUE if row.peer is None else f"{_number(row.peer)} {row.unit}",
            f"{_number(row.daemon)} {row.unit}",
            _NO_VALUE if row.ratio is None else f"{row.ratio:.2f}x",
            row.goal_text(),
            "yes" if row.met else "NO",
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [_HEADINGS, *cells]) for column in range(len(_HEADINGS))]
    lines = [_joined(_HEADINGS, widths), "-+-".join("-" * width for width in widths)]
    lines.extend(_joined(line, widths) for line in cells)
    return "\n".join(lines)


def details(rows: Sequence[Row]) -> str:
    """One line per row with its details (``key=value``), for reading under the table."""
    return "\n".join(
        f"{row.benchmark}: " + ", ".join(f"{key}={value}" for key, value in row.details.items())
        for row in rows
        if row.details
    )


def _joined(cells: Sequence[str], widths: Sequence[int]) -> str:
    return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _number(value: float) -> str:
    """Three significant figures or so, without scientific notation for everyday sizes."""
    if value == 0:
        return "0.00"  # a measured zero, at the resolution of its clock
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
