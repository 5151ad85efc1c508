"""The console's only way to the controller: the local control socket.

``ControllerLink.call`` sends one command (``status``, ``reset``, ``test_valve`` ...).
``ControllerLink.record`` hands a console event (login, command audit, commissioning record,
hazard) to the controller's event log through the ``record`` command (see
``gateway.safety.handlers``), so it is stored with the alarms and forwarded upstream.

Nothing lost (principle 5): a record is first committed to ``console.db``
(``pending_records``), then sent; it is deleted only once the controller has taken it. While
the controller is down or restarting, records wait and go out in order, with their original
time, at the next ``flush`` (every command and every prompt flushes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.api.control import ControlClient, ControlError
from gateway.api.records import check_record
from gateway.console.store import ConsoleStore
from gateway.log import error

FLUSH_BATCH = 100


class ControllerLink:
    """Calls the controller at ``socket_path``. ``timeout_s`` bounds one ordinary call."""

    def __init__(
        self,
        socket_path: Path,
        store: ConsoleStore,
        *,
        timeout_s: float = 5.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.store = store
        self.timeout_s = timeout_s
        self.wall = wall
        self.last_error: str | None = None

    def call(self, cmd: str, *, timeout_s: float | None = None, **args: Any) -> dict[str, Any]:
        """One control command; its result. Raises ControlError (no controller, timeout, the
        controller's own error text)."""
        client = ControlClient(self.socket_path, timeout=timeout_s or self.timeout_s)
        return client.call(cmd, **args)

    def record(self, kind: str, source: str, details: dict[str, Any]) -> bool:
        """Store a console event durably, then try to hand it (and any earlier ones still
        waiting) to the controller. True when nothing is left waiting."""
        now = self.wall()
        check_record(kind, source, details, now, now)  # RecordError: a bug here, not input
        text = json.dumps(details, ensure_ascii=False, allow_nan=False)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO pending_records (utc, kind, source, details) VALUES (?, ?, ?, ?)",
                (now, kind, source, text),
            )
        return self.flush() == 0

    def waiting(self) -> int:
        """Console events not yet taken by the controller."""
        row = self.store.conn.execute("SELECT COUNT(*) FROM pending_records").fetchone()
        return int(row[0])

    def flush(self) -> int:
        """Send waiting records in order; stop at the first failure. Returns how many wait."""
        rows = self.store.conn.execute(
            "SELECT seq, utc, kind, source, details FROM pending_records ORDER BY seq LIMIT ?",
            (FLUSH_BATCH,),
        ).fetchall()
        for seq, utc, kind, source, details in rows:
            try:
                self.call(
                    "record",
                    kind=str(kind),
                    source=str(source),
                    details=json.loads(details),
                    utc=float(utc),
                )
            except ControlError as e:
                self.last_error = str(e)
                if not str(e).startswith("record:"):
                    break  # controller down or busy: keep it, in order, for the next flush
                # Refused by the controller's checks (too old after a very long outage): keep
                # it in the journal rather than block every later record behind it.
                error("console.record_refused", kind=kind, source=source, reason=e, details=details)
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM pending_records WHERE seq = ?", (seq,))
        else:
            if len(rows) == FLUSH_BATCH:
                return self.flush()
            self.last_error = None
        return self.waiting()
