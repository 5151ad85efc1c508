"""Control-socket commands the technician console needs inside the controller process.

``register(controller)`` (call before ``controller.start()``; ``gasguard run`` does) adds:

* ``record {kind, source, details, utc?}``: put one console event (login, logout, lockout,
  command audit, commissioning record, hazard) into the recorder's queue, so it is stored in
  the event log and forwarded upstream like any other event. Only ``console.*``,
  ``commissioning.*`` and ``hazard.*`` kinds, details at most 16 KiB (``records``). The queue's
  ``put`` never blocks and never touches the safety thread.
* ``scan {bus, first, last, lines, timeout_ms, budget_s, operator}``: stop that bus's poller,
  probe addresses and line settings (``scan``), restart the poller from the controller's
  current config. While the poller is stopped its detectors are silent: after the comm-fault
  timeout the safety core closes their valves, which is fail safe and needs a manual reset. The
  console warns the technician and asks for a confirmation first. One scan at a time.

It also starts a hazard watch thread: once every ``HAZARD_WATCH_S`` it reports hazards from the
console's ledger that became overdue (``hazard.overdue``), so they are forwarded even when no
technician logs in.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from gateway.api.control import CommandError, Handler, int_arg, only_args, str_arg
from gateway.console.hazards import HazardLedger, overdue_details
from gateway.console.records import RecordError, check_record
from gateway.console.scan import line_settings, profiles_for, scan_port
from gateway.console.store import ConsoleStore, console_db
from gateway.controller import Controller
from gateway.core.model import Event
from gateway.drivers.modbus_bus import DetectorBus
from gateway.log import error, log
from gateway.validate import ConfigError

HAZARD_WATCH_S = 600.0
HAZARD_WATCH_FIRST_S = 30.0
SCAN_LINES = ("configured", "defaults", "all")


def register(controller: Controller, *, hazard_watch: bool = True) -> None:
    """Add the console's commands to ``controller`` (before ``start()``)."""
    controller.add_handler("record", record_handler(controller))
    controller.add_handler("scan", scan_handler(controller))
    if hazard_watch:
        HazardWatch(controller).start()


def _put(
    controller: Controller, utc: float, kind: str, source: str, details: dict[str, Any]
) -> None:
    controller.recorder_inbox.put((utc, Event(kind, source, controller._clock(), details)))


def record_handler(controller: Controller) -> Handler:
    def record(args: dict[str, Any]) -> dict[str, Any]:
        only_args("record", args, ("kind", "source", "details", "utc"))
        try:
            kind, source, details, utc = check_record(
                args.get("kind"),
                args.get("source"),
                args.get("details", {}),
                args.get("utc"),
                controller._wall(),
            )
        except RecordError as e:
            raise CommandError(str(e)) from None
        _put(controller, utc, kind, source, details)
        return {"recorded": True}

    return record


def scan_handler(controller: Controller) -> Handler:
    busy = threading.Lock()

    def scan(args: dict[str, Any]) -> dict[str, Any]:
        only_args(
            "scan", args, ("bus", "first", "last", "lines", "timeout_ms", "budget_s", "operator")
        )
        config = controller.config
        names = [b.name for b in config.buses]
        bus_name = str_arg("scan", args, "bus", names[0] if names else "")
        bus = next((b for b in config.buses if b.name == bus_name), None)
        if bus is None:
            raise CommandError(f"scan: bus {bus_name[:40]!r}: one of {', '.join(names)}")
        first = int_arg("scan", args, "first", 1, 247, 1)
        last = int_arg("scan", args, "last", first, 247, max(first, min(247, 16)))
        lines_arg = str_arg("scan", args, "lines", "defaults")
        if lines_arg not in SCAN_LINES:
            raise CommandError(f"scan: lines {lines_arg[:40]!r}: one of {', '.join(SCAN_LINES)}")
        timeout_ms = int_arg("scan", args, "timeout_ms", 20, 1000, 100)
        budget_s = int_arg("scan", args, "budget_s", 1, 300, 60)
        operator = str_arg("scan", args, "operator", "console")
        try:
            profiles = profiles_for(config.path)
        except ConfigError as e:
            raise CommandError(f"scan: the detector profiles cannot be read: {e}") from None
        if not busy.acquire(blocking=False):
            raise CommandError("scan: another scan is running; wait for it to finish")
        try:
            return _scan(
                controller,
                bus.name,
                list(range(first, last + 1)),
                lines_arg,
                list(profiles.values()),
                timeout_ms / 1000.0,
                float(budget_s),
                operator,
            )
        finally:
            busy.release()

    return scan


def _scan(
    controller: Controller,
    bus_name: str,
    addresses: list[int],
    which: str,
    profiles: list[Any],
    timeout_s: float,
    budget_s: float,
    operator: str,
) -> dict[str, Any]:
    config = controller.config
    bus = next(b for b in config.buses if b.name == bus_name)
    lines = line_settings(bus, profiles, which)
    _put(
        controller,
        controller._wall(),
        "console.scan_started",
        bus_name,
        {
            "operator": operator,
            "port": bus.port,
            "addresses": f"{addresses[0]}-{addresses[-1]}",
            "lines": [str(line) for line in lines],
        },
    )
    log("console.scan_started", bus=bus_name, port=bus.port, operator=operator)
    stopped = _stop_poller(controller, bus_name)
    try:
        result = scan_port(
            bus.port, lines, addresses, profiles, timeout_s=timeout_s, budget_s=budget_s
        )
    finally:
        restarted = _restart_poller(controller, bus_name)
    configured = {d.address: d.name for d in controller.config.detectors if d.bus == bus_name}
    found = []
    for f in result.found:
        entry = f.as_dict()
        entry["configured_as"] = configured.get(f.address)
        found.append(entry)
    answer = {
        "bus": bus_name,
        "port": bus.port,
        "found": found,
        "lines_tried": result.lines_tried,
        "errors": result.errors,
        "probes": result.probes,
        "elapsed_s": result.elapsed_s,
        "stopped": result.stopped,
        "poller_stopped": stopped,
        "poller_restarted": restarted,
    }
    _put(
        controller,
        controller._wall(),
        "console.scan_finished",
        bus_name,
        {
            "operator": operator,
            "found": [
                {"address": f["address"], "line": f["line"], "profile": f["profile"]} for f in found
            ],
            "elapsed_s": result.elapsed_s,
            "errors": result.errors[:5],
        },
    )
    log("console.scan_finished", bus=bus_name, found=len(found), elapsed_s=result.elapsed_s)
    return answer


def _stop_poller(controller: Controller, bus_name: str) -> bool:
    """Stop the bus's poller so the scan owns the port; True if one was running."""
    poller = next((p for p in controller.buses if p.bus.name == bus_name), None)
    if poller is None:
        return False
    poller.stop(timeout=5.0)
    return True


def _restart_poller(controller: Controller, bus_name: str) -> bool:
    """A fresh poller for the bus from the controller's current config (as Controller.reload
    builds them). Always runs after a scan, even a failed one."""
    config = controller.config
    bus = next((b for b in config.buses if b.name == bus_name), None)
    detectors = [d for d in config.detectors if d.bus == bus_name]
    others = [p for p in controller.buses if p.bus.name != bus_name]
    if bus is None or not detectors:
        controller.buses = others
        return False
    try:
        poller = DetectorBus(
            bus,
            detectors,
            config.timings.poll_period_s,
            controller._deliver,
            clock=controller._clock,
        )
        poller.start()
    except Exception as e:
        # Its detectors stay silent: the core raises comm faults and keeps their valves shut.
        error("console.scan_restart_failed", bus=bus_name, error=repr(e))
        controller.buses = others
        return False
    controller.buses = [*others, poller]
    return True


class HazardWatch(threading.Thread):
    """Reports overdue hazards from ``console.db`` into the controller's event log, once each.
    Reads the data directory from the controller's config at every check."""

    def __init__(self, controller: Controller, interval_s: float = HAZARD_WATCH_S) -> None:
        super().__init__(name="hazard-watch", daemon=True)
        self.controller = controller
        self.interval_s = interval_s
        self.stopping = threading.Event()

    def run(self) -> None:
        if self.stopping.wait(HAZARD_WATCH_FIRST_S):
            return
        while True:
            with contextlib.suppress(Exception):
                self.check()
            if self.stopping.wait(self.interval_s):
                return

    def check(self) -> int:
        """Report what became overdue; how many were reported."""
        path = console_db(self.controller.config.data_dir)
        if not path.exists():
            return 0
        try:
            with ConsoleStore(self.controller.config.data_dir) as store:
                ledger = HazardLedger(store)
                claimed = ledger.claim_overdue_reports()
                today = ledger.today()
        except Exception as e:
            error("console.hazard_watch_failed", error=repr(e))
            return 0
        for hazard in claimed:
            _put(
                self.controller,
                time.time(),
                "hazard.overdue",
                hazard.label,
                overdue_details(hazard, today),
            )
        return len(claimed)
