"""Operators, their passwords and their sessions.

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's second recommended
parameters); a session is a random token in an HttpOnly, SameSite=Strict cookie, of which only
its SHA-256 is stored, and it ends ``session_s`` after log-in (one shift). Failed log-ins are
audited like everything else; a disabled operator cannot log in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")
# After this many wrong passwords for one name within LOCKOUT_S, that name cannot log in until
# the window has passed (a guessing attack gets 5 tries a quarter of an hour).
MAX_FAILED_LOGINS = 5
LOCKOUT_S = 900
MIN_PASSWORD = 10
ROLES = ("officer", "admin")

_hasher = PasswordHasher()
# Verified when the name is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class OperatorError(ValueError):
    """A bad operator name, role, district or password; the text says which and why."""


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is logged in. ``district`` is None for a city administrator (sees every district)."""

    name: str
    display_name: str
    role: str
    district: str | None

    @property
    def scope(self) -> str | None:
        """The district this operator may see and act on; None = all."""
        return None if self.role == "admin" else self.district


def add_operator(
    conn: psycopg.Connection[Any],
    name: str,
    display_name: str,
    role: str,
    district: str | None,
    password: str,
) -> None:
    if not NAME_RE.fullmatch(name):
        raise OperatorError(
            f"name {name!r}: 2 to 32 of a-z, 0-9, '_', '.', '-', starting with a letter"
        )
    if role not in ROLES:
        raise OperatorError(f"role {role!r}: must be one of {list(ROLES)}")
    if role == "officer" and not district:
        raise OperatorError("an officer needs --district (the district they answer for)")
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"password: at least {MIN_PASSWORD} characters")
    if district is not None:
        known = conn.execute("SELECT 1 FROM districts WHERE id = %s", (district,)).fetchone()
        if known is None:
            raise OperatorError(f"district {district!r} is not in the config's [[district]] list")
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO operators (name, display_name, role, district_id, password_hash)"
                " VALUES (%s, %s, %s, %s, %s)",
                (
                    name,
                    display_name or name,
                    role,
                    district if role == "officer" else None,
                    _hasher.hash(password),
                ),
            )
            audit(conn, "cli", "operator.added", name, {"role": role, "district": district})
    except psycopg.errors.UniqueViolation:
        raise OperatorError(f"operator {name!r} exists already") from None


def audit(
    conn: psycopg.Connection[Any],
    operator: str,
    action: str,
    target: str = "",
    details: dict[str, Any] | None = None,
    peer: str = "",
) -> None:
    """One line in the audit table (in the caller's transaction)."""
    from psycopg.types.json import Jsonb

    conn.execute(
        "INSERT INTO audit (operator, action, target, details, peer) VALUES (%s, %s, %s, %s, %s)",
        (operator, action, target, Jsonb(details or {}), peer),
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def log_in(
    conn: psycopg.Connection[Any], name: str, password: str, session_s: float, peer: str
) -> tuple[Operator, str] | None:
    """(operator, session token) for a right name and password, else None. Audited; a name
    with ``MAX_FAILED_LOGINS`` wrong passwords in the last ``LOCKOUT_S`` is refused."""
    name = name[:64]
    failed = conn.execute(
        "SELECT count(*) FROM audit WHERE operator = %s AND action = 'login.failed'"
        " AND at > now() - make_interval(secs => %s)",
        (name, LOCKOUT_S),
    ).fetchone()
    if failed is not None and failed[0] >= MAX_FAILED_LOGINS:
        with conn.transaction():
            audit(conn, name, "login.locked", "", {}, peer)
        return None
    row = conn.execute(
        "SELECT name, display_name, role, district_id, password_hash, disabled FROM operators"
        " WHERE name = %s",
        (name,),
    ).fetchone()
    ok = False
    try:
        ok = _hasher.verify(row[4] if row else _DUMMY_HASH, password[:1024])
    except (VerificationError, InvalidHashError):
        ok = False
    with conn.transaction():
        if not ok or row is None or row[5]:
            audit(conn, name, "login.failed", "", {}, peer)
            return None
        token = secrets.token_urlsafe(32)
        conn.execute(
            "INSERT INTO sessions (token_sha256, operator, expires_at)"
            " VALUES (%s, %s, now() + make_interval(secs => %s))",
            (_token_hash(token), row[0], session_s),
        )
        audit(conn, row[0], "login", "", {}, peer)
    return Operator(row[0], row[1], row[2], row[3]), token


def session_operator(conn: psycopg.Connection[Any], token: str) -> Operator | None:
    """The operator of a live session, or None (unknown, expired, or the operator disabled)."""
    if not token or len(token) > 128:
        return None
    row = conn.execute(
        "SELECT o.name, o.display_name, o.role, o.district_id FROM sessions s"
        " JOIN operators o ON o.name = s.operator"
        " WHERE s.token_sha256 = %s AND s.expires_at > now() AND NOT o.disabled",
        (_token_hash(token),),
    ).fetchone()
    return Operator(*row) if row else None


def log_out(conn: psycopg.Connection[Any], token: str, operator: str, peer: str) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM sessions WHERE token_sha256 = %s", (_token_hash(token),))
        audit(conn, operator, "logout", "", {}, peer)
