"""Who may use the console: technicians with an id and a PIN.

Safety- and security-relevant defaults:

* PINs are 6 to 12 digits, never all one digit or a straight run (123456, 987654); stored only
  as ``hashlib.scrypt`` (n=2^14, r=8, p=1: 16 MiB and tens of ms per try, memory-hard, so a
  stolen ``console.db`` is slow to brute-force) with a random 16-byte salt per technician;
* 5 failed logins in a row (any id, known or not) lock the console for 5 minutes; the counter
  and the lock live in ``console.db``, so unplugging the cable or restarting the console does
  not reset them. While locked, no PIN is even checked;
* an unknown id costs the same scrypt as a known one, so the answer time does not tell which
  ids exist;
* a session idle for 10 minutes is logged out (``IDLE_LOGOUT_S``, enforced by the session);
* first-time set-up: the console refuses every login while no technician exists and says how
  to create one on the Pi itself (``gasguard console --add-technician ID``), which needs a
  shell with write access to the data directory: someone with only the serial cable cannot
  make themselves a technician.

The lockout is console-wide on purpose: the console is one serial line on site; locking it
costs nothing in protection (the reset and silence buttons and the controller are unaffected).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.console.store import ConsoleStore

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
ID_RULE = "1-32 letters, digits, '_', '.' or '-', starting with a letter or digit"
PIN_RE = re.compile(r"^[0-9]{6,12}$")
PIN_RULE = "6 to 12 digits"
MAX_FAILURES = 5
LOCKOUT_S = 300.0
IDLE_LOGOUT_S = 600.0
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_LOCK_KEY = "console"


class AuthError(Exception):
    """A technician change that is refused (bad id or PIN, duplicate, last technician). The
    message names the value and the rule."""


def pin_problem(pin: str) -> str | None:
    """Why ``pin`` is not acceptable as a new PIN, or None."""
    if not PIN_RE.match(pin):
        return f"a PIN must be {PIN_RULE} (got {len(pin)} characters)"
    if len(set(pin)) == 1:
        return "a PIN must not be one digit repeated"
    digits = [int(c) for c in pin]
    steps = {b - a for a, b in itertools.pairwise(digits)}
    if steps in ({1}, {-1}):
        return "a PIN must not be a straight run like 123456 or 987654"
    return None


def id_problem(tech_id: str) -> str | None:
    """Why ``tech_id`` is not acceptable as a technician id, or None."""
    if not ID_RE.match(tech_id):
        return f"technician id {tech_id[:40]!r}: must be {ID_RULE}"
    return None


def _kdf_text(n: int, r: int, p: int) -> str:
    return f"scrypt:n={n},r={r},p={p}"


def _parse_kdf(text: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"scrypt:n=(\d+),r=(\d+),p=(\d+)", text)
    if match is None:
        raise AuthError(f"unknown PIN hash {text!r} in the technician store")
    n, r, p = (int(g) for g in match.groups())
    return n, r, p


def _hash(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        pin.encode("ascii", "replace"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=HASH_BYTES,
    )


@dataclass(frozen=True, slots=True)
class LoginResult:
    """The answer to one login attempt. ``lockout_started`` is True on the attempt that locked
    the console (the caller records a ``console.lockout`` event)."""

    ok: bool
    technician: str | None
    message: str
    locked_for_s: float = 0.0
    lockout_started: bool = False
    failures: int = 0


class Technicians:
    """The technicians of this site and the console's login lockout, in ``console.db``.
    ``clock`` is wall-clock seconds (the lock must survive restarts, so not monotonic)."""

    def __init__(
        self,
        store: ConsoleStore,
        *,
        clock: Callable[[], float] = time.time,
        scrypt_n: int = SCRYPT_N,
    ) -> None:
        self.store = store
        self.clock = clock
        self.scrypt_n = scrypt_n
        # For unknown ids: hash against this so the time taken does not reveal the id exists.
        self._dummy_salt = secrets.token_bytes(SALT_BYTES)

    # -- the list ------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        rows = self.store.conn.execute("SELECT id FROM technicians ORDER BY id").fetchall()
        return [str(r[0]) for r in rows]

    def count(self) -> int:
        return int(self.store.conn.execute("SELECT COUNT(*) FROM technicians").fetchone()[0])

    def exists(self, tech_id: str) -> bool:
        row = self.store.conn.execute(
            "SELECT 1 FROM technicians WHERE id = ?", (tech_id,)
        ).fetchone()
        return row is not None

    def add(self, tech_id: str, pin: str, created_by: str) -> None:
        """Add a technician. AuthError for a bad id or PIN, or an id already taken."""
        problem = id_problem(tech_id) or pin_problem(pin)
        if problem:
            raise AuthError(problem)
        salt = secrets.token_bytes(SALT_BYTES)
        digest = _hash(pin, salt, self.scrypt_n, SCRYPT_R, SCRYPT_P)
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM technicians WHERE id = ?", (tech_id,)).fetchone():
                raise AuthError(f"technician id {tech_id!r} already exists")
            conn.execute(
                "INSERT INTO technicians (id, salt, pin_hash, kdf, created_utc, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    tech_id,
                    salt,
                    digest,
                    _kdf_text(self.scrypt_n, SCRYPT_R, SCRYPT_P),
                    self.clock(),
                    created_by,
                ),
            )

    def remove(self, tech_id: str) -> None:
        """Remove a technician; the last one cannot be removed (nobody could log in)."""
        with self.store.transaction() as conn:
            if not conn.execute("SELECT 1 FROM technicians WHERE id = ?", (tech_id,)).fetchone():
                raise AuthError(f"no technician {tech_id[:40]!r}")
            if int(conn.execute("SELECT COUNT(*) FROM technicians").fetchone()[0]) <= 1:
                raise AuthError(f"{tech_id!r} is the last technician: add another one first")
            conn.execute("DELETE FROM technicians WHERE id = ?", (tech_id,))

    def set_pin(self, tech_id: str, pin: str) -> None:
        problem = pin_problem(pin)
        if problem:
            raise AuthError(problem)
        salt = secrets.token_bytes(SALT_BYTES)
        digest = _hash(pin, salt, self.scrypt_n, SCRYPT_R, SCRYPT_P)
        with self.store.transaction() as conn:
            updated = conn.execute(
                "UPDATE technicians SET salt = ?, pin_hash = ?, kdf = ? WHERE id = ?",
                (salt, digest, _kdf_text(self.scrypt_n, SCRYPT_R, SCRYPT_P), tech_id),
            ).rowcount
            if not updated:
                raise AuthError(f"no technician {tech_id[:40]!r}")

    def check_pin(self, tech_id: str, pin: str) -> bool:
        """True if ``pin`` is ``tech_id``'s PIN. No lockout accounting (used to sign a record by
        the technician already logged in)."""
        row = self.store.conn.execute(
            "SELECT salt, pin_hash, kdf FROM technicians WHERE id = ?", (tech_id,)
        ).fetchone()
        if row is None:
            _hash(pin, self._dummy_salt, self.scrypt_n, SCRYPT_R, SCRYPT_P)
            return False
        salt, stored, kdf = bytes(row[0]), bytes(row[1]), str(row[2])
        n, r, p = _parse_kdf(kdf)
        return hmac.compare_digest(_hash(pin, salt, n, r, p), stored)

    # -- logging in ------------------------------------------------------------------------------

    def locked_for(self) -> float:
        """Seconds the console stays locked (0 when it is not)."""
        row = self.store.conn.execute(
            "SELECT locked_until FROM login_state WHERE key = ?", (_LOCK_KEY,)
        ).fetchone()
        if row is None:
            return 0.0
        return max(0.0, float(row[0]) - self.clock())

    def recheck(self, tech_id: str, pin: str) -> LoginResult:
        """A PIN asked again of the technician already logged in (a PIN change, a signature):
        counted and locked exactly like a login, so it cannot be used to guess a PIN."""
        return self.login(tech_id, pin, recheck=True)

    def login(self, tech_id: str, pin: str, *, recheck: bool = False) -> LoginResult:
        """Check one login attempt and count it. While locked nothing is checked."""
        remaining = self.locked_for()
        if remaining > 0:
            return LoginResult(
                False,
                None,
                f"console locked after {MAX_FAILURES} failed logins: try again in "
                f"{_minutes(remaining)}",
                locked_for_s=remaining,
            )
        ok = id_problem(tech_id) is None and self.check_pin(tech_id, pin)
        if not ok and id_problem(tech_id) is not None:
            _hash(pin[:64], self._dummy_salt, self.scrypt_n, SCRYPT_R, SCRYPT_P)
        now = self.clock()
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT failures FROM login_state WHERE key = ?", (_LOCK_KEY,)
            ).fetchone()
            failures = 0 if row is None else int(row[0])
            if ok:
                failures, locked_until = 0, 0.0
                if not recheck:
                    conn.execute(
                        "UPDATE technicians SET last_login_utc = ? WHERE id = ?", (now, tech_id)
                    )
            else:
                failures += 1
                locked_until = now + LOCKOUT_S if failures >= MAX_FAILURES else 0.0
            conn.execute(
                "INSERT INTO login_state (key, failures, locked_until) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET failures = excluded.failures, "
                "locked_until = excluded.locked_until",
                (_LOCK_KEY, 0 if locked_until else failures, locked_until),
            )
        if ok:
            return LoginResult(True, tech_id, f"welcome, {tech_id}")
        if locked_until:
            return LoginResult(
                False,
                None,
                f"wrong id or PIN; {MAX_FAILURES} failures in a row: console locked for "
                f"{_minutes(LOCKOUT_S)}",
                locked_for_s=LOCKOUT_S,
                lockout_started=True,
                failures=failures,
            )
        left = MAX_FAILURES - failures
        return LoginResult(
            False,
            None,
            f"wrong id or PIN ({left} more before a {_minutes(LOCKOUT_S)} lockout)",
            failures=failures,
        )

    def last_login(self, tech_id: str) -> float | None:
        row = self.store.conn.execute(
            "SELECT last_login_utc FROM technicians WHERE id = ?", (tech_id,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])


def _minutes(seconds: float) -> str:
    whole = int(seconds + 0.999)
    minutes, sec = divmod(whole, 60)
    if minutes and sec:
        return f"{minutes} min {sec} s"
    if minutes:
        return f"{minutes} min"
    return f"{sec} s"
