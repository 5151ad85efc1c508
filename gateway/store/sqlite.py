"""Opening gasguard's SQLite files the one durable way.

Every file gasguard writes (the event log, the uplinks' outbox, the console's store) is opened
with the same settings, chosen for SD cards and power cuts:
* WAL journal: readers never block the writer, and a commit appends instead of rewriting pages;
* ``synchronous=FULL``: every commit is fsynced, so a record written just before the power is
  cut survives it (``NORMAL`` survives only a crash of the process);
* 1 KiB pages (``PAGE_SIZE``) for a new file: a commit appends whole pages to the WAL, and an
  event is a few hundred bytes, so smaller pages mean fewer bytes written to the card per event
  (a file made with other pages keeps them: SQLite cannot change that in WAL mode);
* no implicit transactions (``isolation_level=None``): each writer says ``BEGIN`` itself;
* ``PRAGMA user_version`` is the schema version: a file written by a newer gasguard is refused,
  never half-understood.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.log import warn

PAGE_SIZE = 1024


def open_durable(
    path: Path,
    what: str,
    max_version: int,
    error: type[Exception],
    *,
    busy_timeout_s: float = 5.0,
    check_same_thread: bool = True,
) -> tuple[sqlite3.Connection, int]:
    """Open (creating it and its directory) ``path`` for writing with the settings above.

    Returns the connection and the file's schema version (0 for a new file). Raises ``error``
    with a message naming ``what`` and the file when it cannot be opened, is not a SQLite
    database, or has a schema newer than ``max_version``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(path),
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=check_same_thread,
        )
    except (OSError, sqlite3.Error) as e:
        raise error(f"{what} {path}: cannot open: {e}") from e
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > max_version:
            raise error(
                f"{what} {path} has schema version {version}: this gasguard reads versions up "
                f"to {max_version} (written by a newer gasguard)"
            )
        if version == 0:
            # Takes effect only while the file is still empty (before its first table).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # Still durable (synchronous=FULL); only readers may now block the writer.
            warn("store.no_wal", what=what, path=path, journal_mode=mode)
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.OperationalError as e:
        # Locked, disk full, read-only, I/O error: the file may be perfectly healthy.
        conn.close()
        raise error(f"{what} {path}: cannot open: {e}") from e
    except sqlite3.DatabaseError as e:
        conn.close()
        raise error(
            f"{what} {path} is corrupt or not a SQLite database: {e}; move it aside and restart"
        ) from e
    except BaseException:
        conn.close()
        raise
    return conn, version
