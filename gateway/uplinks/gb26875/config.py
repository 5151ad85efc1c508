"""The ``[uplink.gb26875]`` table: where the fire remote-monitoring centre is and how to talk to it.

Safety-relevant defaults: confirm timeout 10 s and 3 retries (the standard's send/confirm rule;
the timeout cannot be set above 10 s), heartbeat 30 s and 5 s while the link is bad, and
``allow_clock_set = false``: a clock-sync frame from the centre is recorded but never sets the
system clock unless the site explicitly allows it (see docs/uplinks.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.uplinks.gb26875.codec import (
    MAX_ADDRESS,
    MAX_PART_ADDRESS,
    PART_TYPE_GAS_DETECTOR,
    PART_TYPE_POINT_GAS_DETECTOR,
)
from gateway.validate import Checker

KEYS = (
    "enabled",
    "host",
    "port",
    "device_address",
    "centre_address",
    "confirm_timeout_s",
    "retries",
    "heartbeat_s",
    "heartbeat_bad_s",
    "connect_timeout_s",
    "backoff_min_s",
    "backoff_max_s",
    "utc_offset_h",
    "system_type",
    "system_address",
    "detector_part_type",
    "part_addresses",
    "descriptions",
    "allow_clock_set",
    "idle_poll_s",
)
_HOST = re.compile(r"^[A-Za-z0-9.:\-\[\]]+$")


@dataclass(frozen=True)
class Gb26875Config:
    """One GB/T 26875.3 centre. ``device_address`` is this gateway's 6-byte address (the
    transmission device), ``centre_address`` the centre's; both as the centre registered them.

    ``part_addresses`` maps detector and valve names to their 4-byte part addresses; a part not
    listed gets its 1-based position in the status (detectors 1.., valves 1001..).
    ``descriptions`` overrides the 31-byte GB18030 description of a part."""

    host: str
    port: int
    device_address: int
    centre_address: int = 0
    enabled: bool = True
    confirm_timeout_s: float = 10.0
    retries: int = 3
    heartbeat_s: float = 30.0
    heartbeat_bad_s: float = 5.0
    connect_timeout_s: float = 5.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    utc_offset_h: float = 8.0  # frame times are the centre's local time: China Standard Time
    system_type: int = 1
    system_address: int = 1
    detector_part_type: int = PART_TYPE_POINT_GAS_DETECTOR
    part_addresses: dict[str, int] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    allow_clock_set: bool = False
    idle_poll_s: float = 0.5  # outbox re-check when no wake-up came (the outbox wakes us on add)


def parse_gb26875_config(table: dict[str, Any], c: Checker, key: str) -> Gb26875Config:
    """Read ``[uplink.gb26875]``; every problem goes to ``c`` with key, value and allowed range."""
    c.known_keys(table, key, KEYS)
    host = c.string(table, f"{key}.host")
    if host and not _HOST.match(host):
        c.bad(f"{key}.host", host, "a host name or IP address (letters, digits, '.', ':', '-')")
    port = c.integer(table, f"{key}.port", 1, 65535)
    device = c.integer(table, f"{key}.device_address", 0, MAX_ADDRESS)
    centre = c.integer(table, f"{key}.centre_address", 0, MAX_ADDRESS, default=0)
    confirm = c.number(table, f"{key}.confirm_timeout_s", 0.05, 10.0, default=10.0)
    heartbeat = c.number(table, f"{key}.heartbeat_s", 0.05, 600.0, default=30.0)
    heartbeat_bad = c.number(table, f"{key}.heartbeat_bad_s", 0.05, 600.0, default=5.0)
    if heartbeat_bad > heartbeat:
        c.bad(f"{key}.heartbeat_bad_s", heartbeat_bad, f"at most heartbeat_s ({heartbeat:g})")
    backoff_min = c.number(table, f"{key}.backoff_min_s", 0.01, 60.0, default=1.0)
    backoff_max = c.number(table, f"{key}.backoff_max_s", 0.01, 3600.0, default=60.0)
    if backoff_max < backoff_min:
        c.bad(f"{key}.backoff_max_s", backoff_max, f"at least backoff_min_s ({backoff_min:g})")
    part_type = c.integer(table, f"{key}.detector_part_type", 0, 255, default=11)
    if part_type not in (PART_TYPE_GAS_DETECTOR, PART_TYPE_POINT_GAS_DETECTOR):
        c.bad(
            f"{key}.detector_part_type",
            part_type,
            f"{PART_TYPE_GAS_DETECTOR} (combustible-gas detector) or "
            f"{PART_TYPE_POINT_GAS_DETECTOR} (point-type combustible-gas detector)",
        )
    return Gb26875Config(
        host=host,
        port=port,
        device_address=device,
        centre_address=centre,
        enabled=c.boolean(table, f"{key}.enabled", True),
        confirm_timeout_s=confirm,
        retries=c.integer(table, f"{key}.retries", 0, 10, default=3),
        heartbeat_s=heartbeat,
        heartbeat_bad_s=heartbeat_bad,
        connect_timeout_s=c.number(table, f"{key}.connect_timeout_s", 0.05, 60.0, default=5.0),
        backoff_min_s=backoff_min,
        backoff_max_s=backoff_max,
        utc_offset_h=c.number(table, f"{key}.utc_offset_h", -12.0, 14.0, default=8.0),
        system_type=c.integer(table, f"{key}.system_type", 0, 255, default=1),
        system_address=c.integer(table, f"{key}.system_address", 0, 255, default=1),
        detector_part_type=part_type,
        part_addresses=_part_addresses(table, c, f"{key}.part_addresses"),
        descriptions=_descriptions(table, c, f"{key}.descriptions"),
        allow_clock_set=c.boolean(table, f"{key}.allow_clock_set", False),
        idle_poll_s=c.number(table, f"{key}.idle_poll_s", 0.005, 5.0, default=0.5),
    )


def _part_addresses(table: dict[str, Any], c: Checker, key: str) -> dict[str, int]:
    value = table.get("part_addresses", {})
    if not isinstance(value, dict):
        c.bad(key, value, "a table of part name = address")
        return {}
    out: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, address in value.items():
        if (
            isinstance(address, bool)
            or not isinstance(address, int)
            or not 0 <= address <= MAX_PART_ADDRESS
        ):
            c.bad(f"{key}.{name}", address, f"a whole number from 0 to {MAX_PART_ADDRESS}")
            continue
        if address in seen:
            c.bad(f"{key}.{name}", address, f"an address not already used by {seen[address]!r}")
            continue
        seen[address] = name
        out[str(name)] = address
    return out


def _descriptions(table: dict[str, Any], c: Checker, key: str) -> dict[str, str]:
    value = table.get("descriptions", {})
    if not isinstance(value, dict):
        c.bad(key, value, "a table of part name = description")
        return {}
    out: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(text, str) or not text.strip():
            c.bad(f"{key}.{name}", text, "a non-empty string")
            continue
        try:
            size = len(text.encode("gb18030"))
        except UnicodeEncodeError:
            c.bad(f"{key}.{name}", text, "text GB18030 can encode")
            continue
        if size > 31:
            c.bad(f"{key}.{name}", text, f"at most 31 bytes in GB18030 (this is {size})")
            continue
        out[str(name)] = text
    return out
