"""Which journal a config asks for, opened: the embedded SQLite one or the shared PostgreSQL one.

The PostgreSQL backend is an optional extra; its driver is imported only when a config
asks for it, so a single daemon never needs psycopg installed.
"""

from __future__ import annotations

from pathlib import Path

from uploader_daemon.config.schema import JournalSettings
from uploader_daemon.errors import ConfigError
from uploader_daemon.journal.model import Journal
from uploader_daemon.journal.sqlite import SqliteJournal

# Connections beyond one per concurrent delivery: admissions, the heartbeat, look-ups.
_SPARE_CONNECTIONS = 4


async def open_journal(
    settings: JournalSettings,
    *,
    sqlite_path: Path,
    node: str,
    concurrency: int,
    may_set_aside: bool,
    now: float,
) -> tuple[Journal, Path | None]:
    """The daemon's journal, and where a damaged SQLite one was set aside (``None`` if not).

    ``concurrency`` is the sum of the targets' deliveries at once; the PostgreSQL pool is
    sized for it.
    """
    if settings.backend == "postgresql":
        journal = await _postgres(settings, node=node, connections=concurrency + _SPARE_CONNECTIONS)
        return journal, None
    return SqliteJournal.open_or_set_aside(sqlite_path, may_set_aside=may_set_aside, now=now)


async def open_for_reading(settings: JournalSettings, *, sqlite_path: Path, node: str) -> Journal | None:
    """The journal for ``status`` and ``list``; ``None`` when a SQLite one was never created."""
    if settings.backend == "postgresql":
        return await _postgres(settings, node=node, connections=2)
    if not sqlite_path.exists():
        return None
    return SqliteJournal.open(sqlite_path)


async def _postgres(settings: JournalSettings, *, node: str, connections: int) -> Journal:
    try:
        from uploader_daemon.journal.postgres import PostgresJournal
    except ImportError as error:
        raise ConfigError(
            "journal.backend",
            [
                f"postgresql needs the PostgreSQL driver ({error.name} is not installed): "
                "pip install 'uploader-daemon[postgresql]'"
            ],
        ) from None
    assert settings.dsn is not None, "the config model requires dsn with backend postgresql"
    return await PostgresJournal.open(
        settings.dsn.value, node=node, lease=settings.lease, connections=connections
    )
