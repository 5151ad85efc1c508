"""What an event recorded through a socket may look like: shared by the senders (before they
queue one) and by the safety process's ``record`` commands (before it stores one), so both
refuse the same things.

Each socket has its own kinds: the control socket takes ``console.*``, ``commissioning.*``,
``hazard.*`` and ``cylinder.*`` (``CONSOLE_KINDS``), the uplink socket only ``uplink.*`` and
``sms.*`` (``UPLINK_KINDS``). Neither can forge an alarm, a fault or a valve event in the log.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple


class Kinds(NamedTuple):
    """The event kinds one socket may record, and the rule as errors state it."""

    pattern: re.Pattern[str]
    rule: str


CONSOLE_KINDS = Kinds(
    re.compile(r"^(console|commissioning|hazard|cylinder)\.[a-z][a-z0-9_]{0,39}$"),
    "console.NAME, commissioning.NAME, hazard.NAME or cylinder.NAME "
    "(NAME: lower-case, digits, '_')",
)
UPLINK_KINDS = Kinds(
    re.compile(r"^(uplink|sms)\.[a-z][a-z0-9_]{0,39}$"),
    "uplink.NAME or sms.NAME (NAME: lower-case, digits, '_')",
)
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_DETAILS_BYTES = 16 * 1024
MAX_AGE_S = 30 * 86400.0  # a record queued while the controller was down may be this old
MAX_AHEAD_S = 60.0


class RecordError(ValueError):
    """A console event that must not be stored. The message names the field, value and rule;
    it starts with ``record:``."""


def check_record(
    kind: object,
    source: object,
    details: object,
    utc: object,
    now: float,
    kinds: Kinds = CONSOLE_KINDS,
) -> tuple[str, str, dict[str, Any], float]:
    """The event's fields, checked; RecordError otherwise."""
    if not isinstance(kind, str) or not kinds.pattern.match(kind):
        raise RecordError(f"record: kind {str(kind)[:60]!r}: must be {kinds.rule}")
    if not isinstance(source, str) or not SOURCE_RE.match(source):
        raise RecordError(
            f"record: source {str(source)[:60]!r}: must be 1-64 letters, digits, '_', '.', ':' "
            "or '-'"
        )
    if not isinstance(details, dict):
        raise RecordError(f"record: details must be a JSON object, not {type(details).__name__}")
    try:
        size = len(json.dumps(details, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise RecordError(f"record: details are not plain JSON: {e}") from e
    if size > MAX_DETAILS_BYTES:
        raise RecordError(f"record: details are {size} bytes; at most {MAX_DETAILS_BYTES}")
    if utc is None:
        when = now
    elif isinstance(utc, bool) or not isinstance(utc, int | float) or not math.isfinite(utc):
        raise RecordError(f"record: utc {str(utc)[:40]!r}: must be seconds since the epoch")
    elif not now - MAX_AGE_S <= utc <= now + MAX_AHEAD_S:
        raise RecordError(
            f"record: utc {utc!r}: must be within {MAX_AGE_S / 86400:g} days before and "
            f"{MAX_AHEAD_S:g} s after the controller's clock ({now:.0f})"
        )
    else:
        when = float(utc)
    return kind, source, details, when
