"""Which events may never be lost, and which go first: the one home of these lists, read by the
recorder (its backlog while the SD card fails), the uplinks' outbox (its order and its bounds)
and the channels.

* **Alarm class**: alarms, faults, valve and fan actions, power failures, the operator's reset
  (accepted or refused) and a recorded loss of events. They go first after an outage and are
  never dropped.
* **Never dropped**, though not urgent: every other operator action (silence, inhibits and the
  test alarms during them, tests, the technician's console work, commissioning and hazards)
  and the event log's own state (``store.*``): who did what, and what happened to the record,
  is evidence.
* Everything else (uplinks' own state, service reminders, start-up notes) may be dropped when
  a bound is reached, oldest first, and the drop is counted and recorded.
"""

from __future__ import annotations

ALARM_CLASS = (
    "alarm.",
    "fault.",
    "valve.",
    "fan.",
    "power.",
    "operator.reset",
    "events.lost",
)
NEVER_DROPPED = (
    *ALARM_CLASS,
    "operator.",
    "store.",
    "detector.inhibit",
    "test.alarm",
    "console.",
    "commissioning.",
    "hazard.",
    "uplink.events_missing",
)

EVENTS_LOST = "events.lost"  # a bound was reached and events were lost: what, how many, when


def is_alarm_class(kind: str) -> bool:
    """True for the events that go first and are never dropped."""
    return kind.startswith(ALARM_CLASS)


def droppable_sql(column: str = "kind") -> tuple[str, tuple[str, ...]]:
    """An SQL condition true for a row whose ``column`` may be dropped, and its arguments."""
    return (
        " AND ".join(f"{column} NOT LIKE ?" for _ in NEVER_DROPPED),
        tuple(f"{prefix}%" for prefix in NEVER_DROPPED),
    )


def alarm_class_sql(column: str = "kind") -> tuple[str, tuple[str, ...]]:
    """An SQL condition true for a row whose ``column`` is of the alarm class, and its arguments."""
    return (
        " OR ".join(f"{column} LIKE ?" for _ in ALARM_CLASS),
        tuple(f"{prefix}%" for prefix in ALARM_CLASS),
    )


def may_drop(kind: str) -> bool:
    """True for the events a full buffer may drop (oldest first, counted and recorded)."""
    return not kind.startswith(NEVER_DROPPED)
