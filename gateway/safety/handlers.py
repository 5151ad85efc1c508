"""What the safety process answers on its two local sockets.

The **control socket** (mode 0660, the service's user and group; the uplinks' user is refused by
its peer credentials) serves the technicians: ``gasguard status``, ``events``, and the console
after a technician logged in on site: ``silence``, ``reset``, ``inhibit``, ``test_valve``,
``test_sounder``, ``reload``, ``duty_answer``, ``record`` (console, commissioning and hazard
events), ``scan`` and ``clear_orphan``. Every action is recorded with the operator's id.

The **uplink socket** serves the uplinks process, and nothing there can change an output:
``status`` (the same document), ``record`` (``uplink.*`` and ``sms.*`` events only) and
``report`` (the uplinks' own state, shown in the status).

Handlers run on the control server's connection threads: they read the published snapshot or
queue inputs to the safety thread; none touches a valve, and none holds a lock the safety thread
could need.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.api.control import CommandError, Handler, int_arg, only_args, str_arg
from gateway.api.records import CONSOLE_KINDS, UPLINK_KINDS, Kinds, RecordError, check_record
from gateway.core.model import (
    MAX_INHIBIT_S,
    MAX_SOUNDER_TEST_S,
    Event,
    InhibitRequest,
    Input,
    OrphanLatchClear,
    ResetRequest,
    SilenceRequest,
    SounderTestRequest,
    ValveTestRequest,
)
from gateway.drivers.scan import line_settings, profiles_for, scan_port
from gateway.log import log
from gateway.safety.loop import LoopTimeout
from gateway.store.events import EventStore
from gateway.validate import ConfigError

if TYPE_CHECKING:
    from gateway.safety.controller import Controller

SCAN_LINES = ("configured", "defaults", "all")
# Control-socket commands that change something: only root and the service's own user.
STATE_CHANGING = frozenset(
    {
        "silence",
        "reset",
        "inhibit",
        "test_valve",
        "test_sounder",
        "reload",
        "duty_answer",
        "record",
        "scan",
        "clear_orphan",
    }
)
MAX_REPORT_BYTES = 32 * 1024  # the uplinks' state document
# Per peer uid and command on the uplink socket: (rate per second, burst). The uplinks process
# records a handful of its own events a minute and reports its state every few seconds.
UPLINK_RATE_LIMITS = {"record": (5.0, 50.0), "report": (2.0, 10.0), "status": (20.0, 40.0)}
DUTY_CHECK_MIN_INTERVAL_S = 60.0  # at most one duty check (查岗) chirp a minute, one pending


def control_handlers(controller: Controller) -> dict[str, Handler]:
    """The control socket's commands."""
    return {
        "status": lambda args: _status(controller, args),
        "events": lambda args: _events(controller, args),
        "silence": lambda args: _operator(controller, SilenceRequest, args),
        "reset": lambda args: _operator(controller, ResetRequest, args),
        "inhibit": lambda args: _inhibit(controller, args),
        "test_valve": lambda args: _test_valve(controller, args),
        "test_sounder": lambda args: _test_sounder(controller, args),
        "reload": lambda args: _reload(controller, args),
        "duty_answer": lambda args: _duty_answer(controller, args),
        "record": _record_handler(controller, CONSOLE_KINDS),
        "scan": _scan_handler(controller),
        "clear_orphan": lambda args: _clear_orphan(controller, args),
    }


def uplink_handlers(controller: Controller) -> dict[str, Handler]:
    """The uplink socket's commands: nothing that changes an output."""
    return {
        "status": lambda args: _status(controller, args),
        "record": _record_handler(controller, UPLINK_KINDS, duty_check_gate(controller)),
        "report": lambda args: _report(controller, args),
    }


# -- reading -------------------------------------------------------------------------------------


def _status(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    only_args("status", args, ())
    return controller.status()


def _events(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    only_args("events", args, ("limit",))
    limit = int_arg("events", args, "limit", 1, 10_000, 50)
    with EventStore.open_readonly(controller.events_path) as reader:
        rows = reader.recent(limit)
    return {
        "events": [
            {"seq": r.seq, "utc": r.utc, "kind": r.kind, "source": r.source, "details": r.details}
            for r in rows
        ]
    }


# -- operator requests (answered by the safety core) -------------------------------------------


def _ask(controller: Controller, inp: Input) -> dict[str, Any]:
    """Put an operator input to the safety thread and wait for the core's answer."""
    loop = controller.loop
    if loop is None:
        raise CommandError("the controller has not started yet")
    try:
        events = loop.ask(inp)
    except LoopTimeout as timeout:
        raise CommandError(str(timeout)) from None
    refused = [e for e in events if e.kind in ("operator.reset_refused", "operator.refused")]
    reasons: list[str] = []
    for r in refused:
        reasons += r.details.get("reasons", []) or [str(r.details.get("reason", ""))]
    return {
        "accepted": not refused,
        "reasons": reasons,
        "events": [{"kind": e.kind, "source": e.source, "details": e.details} for e in events],
    }


def _operator(
    controller: Controller,
    kind: type[ResetRequest] | type[SilenceRequest],
    args: dict[str, Any],
) -> dict[str, Any]:
    only_args(kind.__name__, args, ("operator",))
    operator = str_arg(kind.__name__, args, "operator", "console")
    return _ask(controller, kind(controller.clock(), operator))


def _inhibit(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    only_args("inhibit", args, ("detector", "minutes", "operator"))
    detector = str_arg("inhibit", args, "detector", "")
    minutes = int_arg("inhibit", args, "minutes", 0, int(MAX_INHIBIT_S // 60), 0)
    operator = str_arg("inhibit", args, "operator", "console")
    return _ask(controller, InhibitRequest(controller.clock(), detector, minutes * 60.0, operator))


def _test_valve(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    only_args("test_valve", args, ("valve", "operator"))
    valve = str_arg("test_valve", args, "valve", "")
    operator = str_arg("test_valve", args, "operator", "console")
    return _ask(controller, ValveTestRequest(controller.clock(), valve, operator))


def _test_sounder(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    only_args("test_sounder", args, ("seconds", "operator"))
    seconds = int_arg("test_sounder", args, "seconds", 1, int(MAX_SOUNDER_TEST_S), 3)
    operator = str_arg("test_sounder", args, "operator", "console")
    return _ask(controller, SounderTestRequest(controller.clock(), float(seconds), operator))


def _clear_orphan(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    """A technician clears an orphan latch (signed, with a reason): see ``SafetyCore``."""
    only_args("clear_orphan", args, ("latch", "reason", "operator"))
    latch = str_arg("clear_orphan", args, "latch", "")
    reason = str_arg("clear_orphan", args, "reason", "", max_len=200)
    operator = str_arg("clear_orphan", args, "operator", "console")
    return _ask(controller, OrphanLatchClear(controller.clock(), latch, operator, reason))


def _duty_answer(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    only_args("duty_answer", args, ("operator",))
    operator = str_arg("duty_answer", args, "operator", "console")
    return {"answered": controller.answer_duty_check(operator)}


def _reload(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    """Re-read the config file (after the console has written it atomically)."""
    only_args("reload", args, ())
    problems = controller.reload_problems()
    return {"applied": not problems, "problems": problems}


# -- records from the console and the uplinks ----------------------------------------------------


def duty_check_gate(controller: Controller) -> Callable[[str], None]:
    """Raises CommandError for a duty check (查岗) while one is pending or within
    DUTY_CHECK_MIN_INTERVAL_S of the last accepted one: each chirps the sounder and waits for
    the staff, so a peer must not be able to make the kitchen's sounder chirp at will."""
    lock = threading.Lock()
    last: list[float] = []

    def gate(kind: str) -> None:
        if kind != "uplink.duty_check":
            return
        with lock:
            now = controller.clock()
            if controller.duty_check_pending is not None:
                raise CommandError("record: a duty check is already waiting for the staff")
            if last and now - last[0] < DUTY_CHECK_MIN_INTERVAL_S:
                raise CommandError(
                    f"record: at most one duty check every {DUTY_CHECK_MIN_INTERVAL_S:g} s"
                )
            last[:] = [now]

    return gate


def _record_handler(
    controller: Controller, kinds: Kinds, gate: Callable[[str], None] | None = None
) -> Handler:
    """``record {kind, source, details, utc?}``: one event into the recorder's queue (``put``
    never blocks and never touches the safety thread), only of ``kinds``; ``gate`` may refuse
    one (CommandError) before it is queued."""

    def record(args: dict[str, Any]) -> dict[str, Any]:
        only_args("record", args, ("kind", "source", "details", "utc"))
        try:
            kind, source, details, utc = check_record(
                args.get("kind"),
                args.get("source"),
                args.get("details", {}),
                args.get("utc"),
                controller.wall(),
                kinds,
            )
        except RecordError as e:
            raise CommandError(str(e)) from None
        if gate is not None:
            gate(kind)
        controller.record(Event(kind, source, controller.clock(), details), utc)
        return {"recorded": True}

    return record


def _report(controller: Controller, args: dict[str, Any]) -> dict[str, Any]:
    """The uplinks process's state for the status: ``{"channels": {name: state}, "outbox":
    {rows, max_rows, ..., warning} or null}``."""
    only_args("report", args, ("channels", "outbox", "delivery", "forwarded_seq"))
    forwarded = args.get("forwarded_seq")
    if forwarded is not None and (
        isinstance(forwarded, bool) or not isinstance(forwarded, int) or forwarded < 0
    ):
        raise CommandError(
            f"report: forwarded_seq {str(forwarded)[:40]!r}: must be a whole number >= 0"
        )
    channels = args.get("channels")
    if not isinstance(channels, dict) or not all(isinstance(k, str) for k in channels):
        raise CommandError("report: channels must be an object of channel name -> state")
    outbox = args.get("outbox")
    if outbox is not None and (
        not isinstance(outbox, dict)
        or not isinstance(outbox.get("warning"), str | type(None))
    ):
        raise CommandError("report: outbox must be null or an object with a warning text or null")
    delivery = args.get("delivery")
    if delivery is not None and (
        not isinstance(delivery, dict)
        or not isinstance(delivery.get("channels"), dict)
        or not isinstance(delivery.get("warnings"), list)
        or not all(isinstance(w, str) for w in delivery["warnings"])
    ):
        raise CommandError(
            "report: delivery must be null or an object with channels and a list of warnings"
        )
    try:
        size = len(
            json.dumps([channels, outbox, delivery], ensure_ascii=False, allow_nan=False).encode()
        )
    except (TypeError, ValueError) as e:
        raise CommandError(f"report: channels are not plain JSON: {e}") from None
    if size > MAX_REPORT_BYTES:
        raise CommandError(f"report: {size} bytes; at most {MAX_REPORT_BYTES}")
    controller.uplink_report = (controller.clock(), channels, outbox, delivery)
    if forwarded is not None:
        controller.uplinks_forwarded = forwarded
    return {"reported": True}


# -- scan ---------------------------------------------------------------------------------------


def _scan_handler(controller: Controller) -> Handler:
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
            profiles = list(profiles_for(config.path).values())
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
                profiles,
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
    """Stop the bus's poller, probe, restart it from the current config. While it is stopped
    its detectors are silent: after the comm-fault timeout the core closes their valves (fail
    safe); the console warns the technician and asks for a confirmation first."""
    bus = next(b for b in controller.config.buses if b.name == bus_name)
    lines = line_settings(bus, profiles, which)
    controller.record(
        Event(
            "console.scan_started",
            bus_name,
            controller.clock(),
            {
                "operator": operator,
                "port": bus.port,
                "addresses": f"{addresses[0]}-{addresses[-1]}",
                "lines": [str(line) for line in lines],
            },
        )
    )
    log("console.scan_started", bus=bus_name, port=bus.port, operator=operator)
    with controller.pollers.paused(bus_name) as stopped:
        result = scan_port(
            bus.port, lines, addresses, profiles, timeout_s=timeout_s, budget_s=budget_s
        )
    restarted = controller.pollers.running(bus_name)
    configured = {d.address: d.name for d in controller.config.detectors if d.bus == bus_name}
    found = []
    for f in result.found:
        entry = f.as_dict()
        entry["configured_as"] = configured.get(f.address)
        found.append(entry)
    controller.record(
        Event(
            "console.scan_finished",
            bus_name,
            controller.clock(),
            {
                "operator": operator,
                "found": [
                    {"address": f["address"], "line": f["line"], "profile": f["profile"]}
                    for f in found
                ],
                "elapsed_s": result.elapsed_s,
                "errors": result.errors[:5],
            },
        )
    )
    log("console.scan_finished", bus=bus_name, found=len(found), elapsed_s=result.elapsed_s)
    return {
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


def report_age_s(controller: Controller) -> float | None:
    """Seconds since the uplinks process last reported (None: never)."""
    report = controller.uplink_report
    if report is None:
        return None
    age = controller.clock() - report[0]
    return age if math.isfinite(age) else None
