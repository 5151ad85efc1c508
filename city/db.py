"""PostgreSQL: connecting, and the schema migrations shipped in city/migrations/.

Migrations are numbered SQL files (``0001_init.sql`` ...), each applied once in its own
transaction together with its row in ``schema_migrations``; an advisory lock keeps two
processes from migrating at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from city.config import CityConfig

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6761_7367  # pg_advisory_lock key: "gasg"


def connect(dsn: str, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """A connection with a short connect timeout (a dead server is noticed, not waited on)."""
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=5)


def migration_files() -> list[tuple[int, Path]]:
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        number = path.name.split("_", 1)[0]
        if not number.isdigit():
            raise ValueError(f"{path}: a migration's name starts with its number (0001_...)")
        found.append((int(number), path))
    return found


def migrate(dsn: str) -> list[int]:
    """Apply the migrations this database lacks; the numbers applied."""
    applied: list[int] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for number, path in migration_files():
                if number in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text(encoding="utf-8"))
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
                applied.append(number)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


def prepare(cfg: CityConfig) -> list[int]:
    """Migrate, then bring the config's districts into the database (every command that
    starts does this first). The migrations applied."""
    from city.store import sync_districts

    applied = migrate(cfg.dsn)
    with connect(cfg.dsn) as conn:
        sync_districts(conn, cfg)
    return applied


def schema_version(dsn: str) -> int:
    with connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(str(row[0])) if row else 0
