"""This node's own view of the leases it holds in a shared journal, by its monotonic clock.

The database decides who owns a row (owner, fence, ``lease_expires`` in the database's
clock); this module decides when *this* node must stop trusting a claim without asking
it. A lease's local deadline runs from the moment the claim (or its last renewal) was
*sent*, so it always ends before the database's expiry, whatever the hosts' wall clocks
say and however long the answer took. A claim past its local deadline is lost here, and
its worker is told at once (:meth:`Leases.watch`), even while the database cannot be
reached: that is how a node cut off from the database gives up its work in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class _Lease:
    fence: int
    deadline: float  # monotonic
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class Leases:
    """The claims this node holds: their fence, their local deadline, a "lost" signal each."""

    def __init__(self, lease: float, monotonic: Callable[[], float]) -> None:
        self._lease = lease
        self._monotonic = monotonic
        self._held: dict[int, _Lease] = {}

    def sent_at(self) -> float:
        """The monotonic time to note just before sending a claim or a renewal."""
        return self._monotonic()

    def hold(self, record_id: int, fence: int, sent_at: float) -> None:
        """A claim of ``record_id`` with ``fence`` was granted by a statement sent at ``sent_at``."""
        self._held[record_id] = _Lease(fence, sent_at + self._lease)

    def renewed(self, renewed: Iterable[tuple[int, int]], sent_at: float) -> None:
        """The renewal sent at ``sent_at`` extended these ``(record_id, fence)`` claims."""
        for record_id, fence in renewed:
            held = self._held.get(record_id)
            if held is not None and held.fence == fence and not held.lost.is_set():
                held.deadline = max(held.deadline, sent_at + self._lease)

    def alive(self, record_id: int, fence: int, margin: float = 0.0) -> bool:
        """Whether the claim is held and its local deadline is more than ``margin`` s away."""
        held = self._held.get(record_id)
        if held is None or held.fence != fence or held.lost.is_set():
            return False
        return self._monotonic() + margin < held.deadline

    def watch(self, record_id: int, fence: int) -> asyncio.Event:
        """An event set when the claim is lost (an already lost one is set at once)."""
        held = self._held.get(record_id)
        if held is None or held.fence != fence:
            lost = asyncio.Event()
            lost.set()
            return lost
        return held.lost

    def lose(self, record_id: int, fence: int | None = None) -> None:
        """The database said the claim (with ``fence``, or any) is someone else's now."""
        held = self._held.get(record_id)
        if held is not None and (fence is None or held.fence == fence):
            del self._held[record_id]
            held.lost.set()

    def drop(self, record_id: int) -> None:
        """The claim ended on purpose (released, finished): nothing to renew, nobody to tell."""
        self._held.pop(record_id, None)

    def expire(self) -> list[int]:
        """Mark every claim past its local deadline lost; returns their record ids."""
        now = self._monotonic()
        expired = [record_id for record_id, held in self._held.items() if held.deadline <= now]
        for record_id in expired:
            self.lose(record_id)
        return expired

    def clear(self) -> None:
        for record_id in list(self._held):
            self.lose(record_id)

    def held(self) -> list[int]:
        return list(self._held)

    def fences(self) -> dict[int, int]:
        return {record_id: held.fence for record_id, held in self._held.items()}

    def next_deadline(self) -> float | None:
        """The earliest local deadline (monotonic), if any claim is held."""
        return min((held.deadline for held in self._held.values()), default=None)

    def __len__(self) -> int:
        return len(self._held)
