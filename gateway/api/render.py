"""Plain text for ``gasguard status`` and ``gasguard events``: aligned columns, plain English,
no colour codes (it ends up in a terminal, a log or a photo sent to the installer).

Safety rule for the display: a detector in comm fault shows "no reply" and how long ago its last
good reading was, never a concentration, even if a number reached us by mistake: a stale value
must never look like a current one. Every text from the controller is made printable, so a name
cannot carry terminal escape codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.store.events import StoredEvent, details_json


def _text(value: Any) -> str:
    """``value`` as one printable line ("-" for None)."""
    if value is None:
        return "-"
    text = str(value)
    return "".join(ch if ch.isprintable() else " " if ch in "\t\r\n" else "?" for ch in text)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def iso_utc(utc: Any, timespec: str = "milliseconds") -> str:
    """Seconds since the epoch as ISO-8601 UTC with a Z, e.g. 2025-11-28T03:20:00.000Z."""
    seconds = _number(utc)
    if seconds is None:
        return "?" if utc is None else _text(utc)
    try:
        stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec=timespec)
    except (OverflowError, OSError, ValueError):
        return _text(utc)
    return stamp.replace("+00:00", "Z")


def duration(seconds: Any) -> str:
    """A short human duration: 0.4 s, 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    s = _number(seconds)
    if s is None or s < 0:
        return "?"
    if s < 10:
        return f"{s:.1f} s"
    whole = int(s)
    if whole < 120:
        return f"{whole} s"
    minutes, sec = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _flag(value: Any, yes: str, no: str, unknown: str) -> str:
    if value is True:
        return yes
    if value is False:
        return no
    return unknown


def _yes_no(value: Any) -> str:
    return _flag(value, "yes", "no", "?")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Rows as lines of left-aligned columns separated by two spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _is_comm_fault(det: dict[str, Any]) -> bool:
    fault = det.get("fault")
    return det.get("state") == "comm-fault" or (isinstance(fault, str) and fault.startswith("comm"))


def detector_reading(det: dict[str, Any]) -> str:
    """The READING cell: a concentration only when the detector answers now."""
    if _is_comm_fault(det):
        return "no reply"
    lel = _number(det.get("lel"))
    if lel is None:
        if det.get("state") == "starting":
            return "waiting for first reading"
        return "no value"
    return f"{lel:.1f} %LEL"


def detector_age(det: dict[str, Any]) -> str:
    """The LAST GOOD cell: how long ago the last valid reply came."""
    age = det.get("age_s")
    if age is None:
        return "never" if _is_comm_fault(det) or det.get("state") == "starting" else "-"
    return f"{duration(age)} ago"


def _field_list(title: str, items: Any, empty: str) -> list[str]:
    label = f"{title}:".ljust(11)
    if not isinstance(items, list) or not items:
        return [label + (empty if isinstance(items, list) else _text(items))]
    lines = [label + _text(items[0])]
    lines += [" " * 11 + _text(item) for item in items[1:]]
    return lines


def render_status(status: dict[str, Any]) -> str:
    """The ``gasguard status`` page for the controller's status dict. Missing fields show "?"."""
    site = status.get("site")
    site = site if isinstance(site, dict) else {}
    lines = [
        f"Site:      {_text(site.get('id', '?'))}  {_text(site.get('name', ''))}".rstrip(),
        f"Address:   {_text(site.get('address', '?'))}",
        f"Time:      {iso_utc(status.get('now_utc'), 'seconds')}  "
        f"(up {duration(status.get('uptime_s'))})",
    ]
    simulated = status.get("simulated")
    if simulated is True:
        lines.append("Mode:      SIMULATED kitchen: no real detectors or valves are connected")
    elif simulated is False:
        lines.append("Mode:      live")
    else:
        lines.append("Mode:      ?")

    valves = [v for v in status.get("valves") or [] if isinstance(v, dict)]
    closed = [_text(v.get("name")) for v in valves if v.get("commanded") != "open"]
    if not valves:
        gas = "? (no valve reported)"
    elif closed:
        gas = "SHUT OFF at " + ", ".join(closed)
        if len(closed) < len(valves):
            opened = [_text(v.get("name")) for v in valves if v.get("commanded") == "open"]
            gas += "; open at " + ", ".join(opened)
    else:
        gas = "on (every valve open)"
    lines.append(f"Gas:       {gas}")
    lines += _field_list("Alarms", status.get("alarms", "?"), "none")
    lines += _field_list("Faults", status.get("faults", "?"), "none")
    lines += _render_processes(status)
    sounder = _flag(status.get("sounder"), "on", "off", "?")
    silenced = _flag(status.get("silenced"), "silenced", "not silenced", "silenced ?")
    lines.append(f"Sounder:   {sounder} ({silenced})")
    lights = status.get("lights")
    if isinstance(lights, dict):
        light_text = ", ".join(
            f"{colour} {_text(lights.get(colour, '?'))}" for colour in ("red", "yellow", "green")
        )
    else:
        light_text = "?"
    lines.append(f"Lights:    {light_text}")
    blockers = status.get("reset_blockers")
    if isinstance(blockers, list) and blockers:
        lines.append("Reset:     refused until:")
        lines += [" " * 11 + _text(b) for b in blockers]
    elif isinstance(blockers, list):
        lines.append("Reset:     possible now (every detector normal)")
    else:
        lines.append("Reset:     ?")

    detectors = [d for d in status.get("detectors") or [] if isinstance(d, dict)]
    lines += ["", f"Detectors ({len(detectors)})"]
    rows = [
        [
            _text(d.get("name", "?")),
            _text(d.get("zone", "?")),
            _text(d.get("bus", "?")),
            _text(d.get("address", "?")),
            _text(d.get("profile", "?")),
            _text(d.get("gas", "?")),
            detector_reading(d),
            detector_age(d),
            _text(d.get("state", "?")),
            _text(d.get("level", "?")),
            _text(d.get("latched", "?")),
            _text(d.get("fault")),
        ]
        for d in detectors
    ]
    headers = (
        "NAME",
        "ZONE",
        "BUS",
        "ADDR",
        "PROFILE",
        "GAS",
        "READING",
        "LAST GOOD",
        "STATE",
        "LEVEL",
        "LATCHED",
        "FAULT",
    )
    lines += table(headers, rows)

    lines += ["", f"Valves ({len(valves)})"]
    valve_rows = [
        [
            _text(v.get("name", "?")),
            _text(v.get("kind", "?")),
            _text(v.get("commanded", "?")),
            "no contact" if v.get("feedback") is None else _text(v.get("feedback")),
            _yes_no(v.get("confirmed")),
            "FAILED" if v.get("failed") is True else _yes_no(v.get("failed")),
            _text(v.get("reason")),
        ]
        for v in valves
    ]
    lines += table(
        ("NAME", "KIND", "COMMANDED", "FEEDBACK", "CONFIRMED", "FAILED", "REASON"), valve_rows
    )
    lines += _render_site_io(status)
    lines += _render_uplinks(status)
    return "\n".join(lines) + "\n"


def _render_site_io(status: dict[str, Any]) -> list[str]:
    """Detector service dates, exhaust fans and power contacts, when the site has them."""
    lines: list[str] = []
    service = [
        (_text(d.get("name", "?")), d["service"])
        for d in status.get("detectors") or []
        if isinstance(d, dict) and isinstance(d.get("service"), dict)
    ]
    if any(s.get("installed") or s.get("calibrated") for _, s in service):
        rows = [
            [
                name,
                _text(s.get("installed") or "-"),
                _text(s.get("calibrated") or "-"),
                ("OVERDUE: " if s.get("overdue") else "") + _text(s.get("text")),
            ]
            for name, s in service
        ]
        lines += ["", "Detector service"]
        lines += table(("NAME", "INSTALLED", "CALIBRATED", "DUE"), rows)
    fans = [f for f in status.get("fans") or [] if isinstance(f, dict)]
    if fans:
        rows = [
            [
                _text(f.get("name", "?")),
                ",".join(_text(z) for z in f.get("zones") or []),
                _text(f.get("commanded", "?")),
                _flag(f.get("running"), "running", "stopped", "no contact"),
                "FAILED" if f.get("failed") is True else "no",
                _text(f.get("reason")),
            ]
            for f in fans
        ]
        lines += ["", f"Exhaust fans ({len(fans)})"]
        lines += table(("NAME", "ZONES", "COMMANDED", "FEEDBACK", "FAILED", "REASON"), rows)
    power = status.get("power")
    if isinstance(power, dict) and (power.get("mains") or power.get("battery")):
        mains = {"ok": "ok", "failed": "FAILED (on battery)"}.get(
            _text(power.get("mains")), "not wired"
        )
        battery = {"ok": "ok", "low": "LOW (valves closed)"}.get(
            _text(power.get("battery")), "not wired"
        )
        lines += ["", f"Power:     mains {mains}, backup battery {battery}"]
    return lines


def _render_processes(status: dict[str, Any]) -> list[str]:
    """The event log and the uplinks process, when something is wrong with either."""
    lines: list[str] = []
    store = status.get("store")
    if isinstance(store, dict) and (store.get("ok") is False or store.get("backlog")):
        lines.append(
            f"Event log: {'FAULT' if store.get('ok') is False else 'catching up'}: "
            f"{_text(store.get('error'))}; {_text(store.get('backlog', 0))} item(s) held in "
            "memory until it can be written"
        )
    uplinks = status.get("uplinks_process")
    if isinstance(uplinks, dict) and uplinks.get("reporting") is False:
        ago = uplinks.get("last_report_s_ago")
        since = "never reported" if ago is None else f"last report {_text(ago)} s ago"
        lines.append(f"Uplinks process: NOT REPORTING ({since}); the gas protection is unaffected")
    return lines


def _render_uplinks(status: dict[str, Any]) -> list[str]:
    """The upstream channels and a fire centre's unanswered duty check, when there are any."""
    lines: list[str] = []
    asked = status.get("duty_check_pending_utc")
    if _number(asked) is not None:
        lines += [
            "",
            f"DUTY CHECK from the fire centre at {iso_utc(asked, 'seconds')}: press SILENCE to "
            "answer",
        ]
    uplinks = status.get("uplinks")
    if not isinstance(uplinks, dict) or not uplinks:
        return lines
    lines += ["", f"Uplinks ({len(uplinks)})"]
    rows = []
    for name, state in uplinks.items():
        state = state if isinstance(state, dict) else {}
        peer = state.get("broker") or state.get("centre") or state.get("port") or "?"
        # The SMS fallback has no connection: its modem's health stands for the link.
        up = state.get("connected", state.get("modem_ok"))
        link = _flag(up, "up", "DOWN", "?")
        # What "delivered" means on this channel: an MQTT site without a receiving centre
        # counts the broker's PUBACK, and must say so.
        delivery = {"broker": "broker PUBACK", "centre": "centre ack"}.get(
            str(state.get("delivery")), "-"
        )
        rows.append(
            [
                _text(name),
                _text(peer),
                link,
                _text(state.get("pending", "?")),
                delivery,
                _text(state.get("last_error")),
            ]
        )
    lines += table(("CHANNEL", "PEER", "LINK", "PENDING", "DELIVERED ON", "LAST ERROR"), rows)
    lines += _render_delivery(status)
    return lines


def _seconds(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.2f} s"


def _share(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.1%}"


def _render_delivery(status: dict[str, Any]) -> list[str]:
    """Each channel's alarm delivery times and link availability (24 h and 7 days)."""
    delivery = status.get("delivery")
    if not isinstance(delivery, dict) or not isinstance(delivery.get("channels"), dict):
        return []
    rows = []
    for name, periods in delivery["channels"].items():
        periods = periods if isinstance(periods, dict) else {}
        for period in ("24h", "7d"):
            p = periods.get(period)
            p = p if isinstance(p, dict) else {}
            rows.append(
                [
                    _text(name),
                    period,
                    _text(p.get("count", 0)),
                    _seconds(p.get("p50_s")),
                    _seconds(p.get("p95_s")),
                    _seconds(p.get("max_s")),
                    _share(p.get("availability")),
                ]
            )
    lines = ["", "Alarm delivery (raised -> receiver's acknowledgement)"]
    lines += table(("CHANNEL", "OVER", "EVENTS", "P50", "P95", "MAX", "LINK UP"), rows)
    return lines


def render_events(events: Sequence[StoredEvent]) -> str:
    """One line per event: seq, UTC time (ISO-8601, Z), kind, source, details as compact JSON."""
    if not events:
        return "no events\n"
    rows = [
        [
            str(e.seq),
            iso_utc(e.utc),
            _text(e.kind),
            _text(e.source),
            _text(details_json(e.details)) if e.details else "",
        ]
        for e in events
    ]
    return "\n".join(table(("SEQ", "TIME (UTC)", "KIND", "SOURCE", "DETAILS"), rows, "")) + "\n"
