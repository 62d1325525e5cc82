"""The journal: one row per file version, so that no file is ever lost or sent twice.

:mod:`.model` holds the states, the records and the :class:`Journal` interface;
:mod:`.sqlite` is the embedded backend every single daemon uses.
"""

from uploader_daemon.journal.model import (
    ACTIVE_STATES,
    SETTLED_IN_PLACE,
    Claim,
    Disposition,
    FileRecord,
    FileState,
    Journal,
    LeaseLostError,
    TargetCounts,
)
from uploader_daemon.journal.sqlite import SqliteJournal

__all__ = [
    "ACTIVE_STATES",
    "SETTLED_IN_PLACE",
    "Claim",
    "Disposition",
    "FileRecord",
    "FileState",
    "Journal",
    "LeaseLostError",
    "SqliteJournal",
    "TargetCounts",
]
