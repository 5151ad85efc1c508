"""The ``[uplink.sms]`` table: the SMS fallback through a serial 4G modem.

Safety-relevant defaults: an alarm that no watched centre has acknowledged within 60 s
(``unacked_after_s``) is texted to every number, at once if every IP channel is down; kinds
``alarm.raised`` and ``valve.failed``; 3 attempts 10 s apart, then the failure is recorded
(``sms.failed``); 60 s for the network to take a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.validate import Checker

KEYS = (
    "enabled",
    "port",
    "baud",
    "numbers",
    "unacked_after_s",
    "watch",
    "kinds",
    "attempts",
    "retry_delay_s",
    "command_timeout_s",
    "prompt_timeout_s",
    "send_timeout_s",
    "poll_s",
    "check_every_s",
    "utc_offset_h",
)
BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
_NUMBER = re.compile(r"^\+?[0-9]{5,20}$")
_KIND = re.compile(r"^[a-z_]+\.[a-z_.]+$")


@dataclass(frozen=True)
class SmsConfig:
    """The modem's port and the numbers to text (restaurant manager, fire-brigade duty phone).

    ``watch`` names the outbox channels whose acknowledgement counts as "a centre has it"
    (empty: every other channel). An alarm still unacknowledged by any of them after
    ``unacked_after_s`` is texted."""

    port: str
    numbers: tuple[str, ...]
    enabled: bool = True
    baud: int = 115200
    unacked_after_s: float = 60.0
    watch: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("alarm.raised", "valve.failed")
    attempts: int = 3
    retry_delay_s: float = 10.0
    command_timeout_s: float = 5.0
    prompt_timeout_s: float = 10.0
    send_timeout_s: float = 60.0
    poll_s: float = 1.0
    check_every_s: float = 600.0  # modem health check for status/doctor while idle
    utc_offset_h: float = 8.0  # times in the text: China Standard Time


def parse_sms_config(table: dict[str, Any], c: Checker, key: str) -> SmsConfig:
    """Read ``[uplink.sms]``; every problem goes to ``c`` with key, value and allowed range."""
    c.known_keys(table, key, KEYS)
    port = c.string(table, f"{key}.port")
    numbers = c.strings(table, f"{key}.numbers")
    for number in numbers:
        if not _NUMBER.match(number):
            c.bad(f"{key}.numbers", number, "a phone number: 5 to 20 digits, optionally '+' first")
    if len(set(numbers)) != len(numbers):
        c.bad(f"{key}.numbers", list(numbers), "each number once")
    baud = c.integer(table, f"{key}.baud", 1200, 921600, default=115200)
    if baud not in BAUDS:
        c.bad(f"{key}.baud", baud, "one of " + ", ".join(str(b) for b in BAUDS))
    watch: tuple[str, ...] = ()
    if "watch" in table:
        value = table["watch"]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            c.bad(f"{key}.watch", value, "a list of channel names (e.g. ['gb26875', 'mqtt'])")
        else:
            watch = tuple(value)
    kinds: tuple[str, ...] = SmsConfig.kinds
    if "kinds" in table:
        kinds = c.strings(table, f"{key}.kinds")
        for kind in kinds:
            if not _KIND.match(kind):
                c.bad(f"{key}.kinds", kind, "an event kind such as 'alarm.raised'")
    return SmsConfig(
        port=port,
        numbers=numbers,
        enabled=c.boolean(table, f"{key}.enabled", True),
        baud=baud,
        unacked_after_s=c.number(table, f"{key}.unacked_after_s", 0.0, 3600.0, default=60.0),
        watch=watch,
        kinds=kinds,
        attempts=c.integer(table, f"{key}.attempts", 1, 10, default=3),
        retry_delay_s=c.number(table, f"{key}.retry_delay_s", 0.0, 600.0, default=10.0),
        command_timeout_s=c.number(table, f"{key}.command_timeout_s", 0.1, 60.0, default=5.0),
        prompt_timeout_s=c.number(table, f"{key}.prompt_timeout_s", 0.1, 60.0, default=10.0),
        send_timeout_s=c.number(table, f"{key}.send_timeout_s", 1.0, 300.0, default=60.0),
        poll_s=c.number(table, f"{key}.poll_s", 0.01, 60.0, default=1.0),
        check_every_s=c.number(table, f"{key}.check_every_s", 1.0, 86400.0, default=600.0),
        utc_offset_h=c.number(table, f"{key}.utc_offset_h", -12.0, 14.0, default=8.0),
    )
