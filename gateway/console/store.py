"""The console's own durable state: one SQLite file in the data directory (``console.db``) and
the site key used to sign commissioning records (``site.key``).

What it holds: technicians (id, scrypt hash of the PIN), the login-failure counter and lockout,
commissioning records, the hazard ledger, the site's LPG cylinders, and console events waiting
to be handed to the controller's event log (``pending_records``).

Why these settings:

* file mode 0600 (created so before SQLite opens it; the WAL and shm files inherit it): PIN
  hashes, signed records and the site key are for the service account only;
* ``journal_mode=WAL`` + ``synchronous=FULL``: a signed record or an audit event survives a
  power cut the moment its commit returns; the controller process (hazard watch) and the console
  process may use the file at once;
* ``PRAGMA user_version``: a file from a newer gasguard is refused, never half-understood.

sqlite3 connections are not shared between threads: each user opens its own ``ConsoleStore``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from gateway.paths import console_db
from gateway.store.sqlite import open_durable

SCHEMA_VERSION = 1
SITE_KEY = "site.key"
SITE_KEY_BYTES = 32
FILE_MODE = 0o600

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS technicians (
        id TEXT PRIMARY KEY,
        salt BLOB NOT NULL,
        pin_hash BLOB NOT NULL,
        kdf TEXT NOT NULL,
        created_utc REAL NOT NULL,
        created_by TEXT NOT NULL,
        last_login_utc REAL
    )""",
    """CREATE TABLE IF NOT EXISTS login_state (
        key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked_until REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS pending_records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        utc REAL NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        details TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS commissioning (
        id TEXT PRIMARY KEY,
        signed_utc REAL NOT NULL,
        technician TEXT NOT NULL,
        body TEXT NOT NULL,
        signature TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS hazards (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        opened_utc REAL NOT NULL,
        opened_by TEXT NOT NULL,
        record_id TEXT,
        item TEXT NOT NULL,
        text TEXT NOT NULL,
        remark TEXT NOT NULL,
        responsible TEXT NOT NULL,
        deadline TEXT NOT NULL,
        status TEXT NOT NULL,
        closed_utc REAL,
        verified_by TEXT,
        close_remark TEXT,
        overdue_reported_utc REAL
    )""",
    """CREATE TABLE IF NOT EXISTS cylinders (
        code TEXT PRIMARY KEY,
        kg INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        place TEXT NOT NULL,
        recorded_utc REAL NOT NULL,
        recorded_by TEXT NOT NULL
    )""",
)


class ConsoleStoreError(Exception):
    """The console's file cannot be used (unwritable, corrupt, from a newer gasguard)."""


def _create_private(path: Path) -> None:
    """Create ``path`` (empty, mode 0600) if it does not exist; tighten it if it does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


class ConsoleStore:
    """One connection to ``console.db`` in ``data_dir`` (created, mode 0600, on first use).
    ``busy_timeout_s`` bounds the wait for the other process's write lock."""

    def __init__(self, data_dir: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.data_dir = Path(data_dir)
        self.path = console_db(self.data_dir)
        try:
            _create_private(self.path)
        except OSError as e:
            raise ConsoleStoreError(f"console store {self.path}: cannot open: {e}") from e
        self.conn, _version = open_durable(
            self.path,
            "console store",
            SCHEMA_VERSION,
            ConsoleStoreError,
            busy_timeout_s=busy_timeout_s,
        )
        try:
            self._prepare()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise ConsoleStoreError(
                f"console store {self.path} is corrupt or not a SQLite file: {e}"
            ) from e
        except BaseException:
            self.conn.close()
            raise
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(f"{self.path}{suffix}", FILE_MODE)

    def _prepare(self) -> None:
        conn = self.conn
        with self.transaction():
            for sql in _SCHEMA:
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception): the write lock is
        taken first, so a read-modify-write is never interleaved with the other process."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ConsoleStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def site_key(data_dir: Path) -> bytes:
    """The site's HMAC key: 32 random bytes in ``data_dir/site.key`` (mode 0600), created on
    first use. It appears complete or not at all (written aside, then hard-linked into place),
    and two processes creating it at once agree on one key."""
    path = Path(data_dir) / SITE_KEY
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SITE_KEY}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, secrets.token_bytes(SITE_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process won: its key is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)
    key = path.read_bytes()
    if len(key) != SITE_KEY_BYTES:
        raise ConsoleStoreError(
            f"site key {path}: {len(key)} bytes, expected {SITE_KEY_BYTES}; it was damaged. "
            "Records signed with the old key can no longer be verified: move the file aside "
            "to start a new key"
        )
    return key


def _fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
