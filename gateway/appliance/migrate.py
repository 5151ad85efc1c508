"""``python -m gateway.appliance.migrate DB``: bring an event log to this version's schema.

Run by ``gasguard upgrade`` with the NEW version's Python while the service is stopped, after
the backup. Opening the store as its writer runs ``EventStore._migrate`` (one transaction:
all or nothing). A missing file is left missing (the controller creates it on first start, as
the service user); a file from a newer gasguard is refused, never half understood.
Prints ``DB: schema A -> B`` and exits 0, or prints the error and exits 1.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.store.events import SCHEMA_VERSION, EventStore, EventStoreError


def schema_version(db: Path) -> int:
    """``PRAGMA user_version`` of ``db``, read without writing."""
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def migrate(db: Path) -> tuple[int | None, int | None]:
    """Migrate ``db``; (version before, version after), (None, None) when there is no file.
    Raises EventStoreError (corrupt, newer, disk error) with the file named."""
    if not db.exists():
        return None, None
    try:
        before = schema_version(db)
    except sqlite3.Error as e:
        raise EventStoreError(f"event store {db}: cannot read its schema version: {e}") from e
    with EventStore(db):
        pass
    return before, schema_version(db)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m gateway.appliance.migrate EVENTS_DB", file=sys.stderr)
        return 2
    db = Path(args[0])
    try:
        before, after = migrate(db)
    except EventStoreError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return 1
    if before is None:
        print(f"{db}: no event log yet (schema {SCHEMA_VERSION} on first start)")
    elif before == after:
        print(f"{db}: schema {after}, nothing to migrate")
    else:
        print(f"{db}: schema {before} -> {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
