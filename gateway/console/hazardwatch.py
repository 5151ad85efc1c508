"""The hazard watch of the console process: overdue hazards go upstream even when no technician
logs in.

Once every ``HAZARD_WATCH_S`` it claims the hazards of the console's ledger (``console.db``) that
became overdue and records a ``hazard.overdue`` event for each through the control socket's
``record`` command, so it is stored in the event log and forwarded like any other event. It runs
in the console process, never in the safety process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.console.hazards import HazardLedger, overdue_details
from gateway.console.link import ControllerLink
from gateway.console.store import ConsoleStore
from gateway.log import error
from gateway.paths import console_db

HAZARD_WATCH_S = 600.0
HAZARD_WATCH_FIRST_S = 30.0

# record(kind, source, details): how an event reaches the event log (``ControllerLink.record``:
# durable in console.db first, then sent).
Record = Callable[[str, str, dict[str, Any]], object]


class HazardWatch(threading.Thread):
    """Reports overdue hazards from ``console.db`` in ``data_dir``, once each."""

    def __init__(
        self,
        data_dir: Callable[[], Path],
        record: Record,
        interval_s: float = HAZARD_WATCH_S,
        first_s: float = HAZARD_WATCH_FIRST_S,
    ) -> None:
        super().__init__(name="hazard-watch", daemon=True)
        self.data_dir = data_dir
        self.record = record
        self.interval_s = interval_s
        self.first_s = first_s
        self.stopping = threading.Event()

    def run(self) -> None:
        if self.stopping.wait(self.first_s):
            return
        while True:
            with contextlib.suppress(Exception):
                self.check()
            if self.stopping.wait(self.interval_s):
                return

    def check(self) -> int:
        """Report what became overdue; how many were reported."""
        data_dir = self.data_dir()
        if not console_db(data_dir).exists():
            return 0
        try:
            with ConsoleStore(data_dir) as store:
                ledger = HazardLedger(store)
                claimed = ledger.claim_overdue_reports()
                today = ledger.today()
        except Exception as e:
            error("console.hazard_watch_failed", error=repr(e))
            return 0
        for hazard in claimed:
            self.record("hazard.overdue", hazard.label, overdue_details(hazard, today))
        return len(claimed)


def watch_site(config_path: Path) -> HazardWatch:
    """A watch for the site of ``config_path``, read again at every check (the console runs on
    a broken config too; a check that cannot read it does nothing until it is repaired)."""

    def data_dir() -> Path:
        return load_config(config_path).data_dir

    def record(kind: str, source: str, details: dict[str, Any]) -> bool:
        cfg = load_config(config_path)
        with ConsoleStore(cfg.data_dir) as store:
            return ControllerLink(cfg.control_socket, store).record(kind, source, details)

    return HazardWatch(data_dir, record)
