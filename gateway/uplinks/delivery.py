"""How long each alarm took to reach each receiver, and how much of the time each path was up.

The outbox records, in the transaction that stores a channel's end-to-end acknowledgement,
when each alarm-class event was raised and when that acknowledgement came (GB/T 26875.3
centre's confirm, the MQTT centre's ack or the broker's PUBACK as configured, the SMS modem's
report). ``DeliveryWatch`` adds each channel's link state (sampled with every report) into
hourly up / total seconds, and makes the summary the status, the console and the centres see:

* per channel, over 24 hours and 7 days: p50 / p95 / max of raised -> acknowledged, and the
  number of alarm-class events;
* per channel, the availability over 24 hours and 7 days: the share of the time its link was up;
* warnings: an alarm (``alarm.raised``) acknowledged more than ``SLOW_ALARM_S`` after it was
  raised (recorded once each as ``uplink.delivery_slow``), and a 7-day availability below
  ``MIN_AVAILABILITY`` (``uplink.availability_low`` / ``uplink.availability_ok``).

It runs in the uplinks process, on its report thread: the safety process only receives the
summary. A day's summary is recorded once a day (``uplink.delivery_summary``), so it goes
upstream like any other event.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.core.model import Event
from gateway.stats import percentile
from gateway.uplinks.outbox import Outbox

SLOW_ALARM_S = 10.0  # GB 26875.1: an alarm reaches the monitoring centre within 10 s
MIN_AVAILABILITY = 0.95
DAY_S = 86400.0
WEEK_S = 7 * DAY_S
SUMMARY_EVERY_S = 10.0  # the summary is worked out again at most this often


def _times(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50_s": None, "p95_s": None, "max_s": None}
    return {
        "count": len(values),
        "p50_s": round(percentile(values, 50), 3),
        "p95_s": round(percentile(values, 95), 3),
        "max_s": round(max(values), 3),
    }


class DeliveryWatch:
    """The delivery statistics of one outbox; ``tick`` from the report thread."""

    def __init__(
        self,
        outbox: Outbox,
        record: Callable[[Event], None],
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self._record = record
        self._wall = wall
        self._hour: int | None = None
        self._up: dict[str, float] = {}
        self._total: dict[str, float] = {}
        self._last_tick: float | None = None
        self._summary: dict[str, Any] | None = None
        self._summary_at = -math.inf
        self._slow_seen_until = wall() - DAY_S  # slow alarms acknowledged after this are new
        self._low: set[str] = set()
        self._summary_day: int | None = None

    def tick(self, links_up: Mapping[str, bool]) -> dict[str, Any] | None:
        """Count the time since the last tick as up or down for each channel (as its link is
        now); return the summary (worked out again at most every ``SUMMARY_EVERY_S``)."""
        now = self._wall()
        hour = int(now // 3600)
        if self._last_tick is not None:
            elapsed = max(0.0, min(now - self._last_tick, 60.0))  # a stalled thread: not uptime
            for channel, up in links_up.items():
                self._total[channel] = self._total.get(channel, 0.0) + elapsed
                self._up[channel] = self._up.get(channel, 0.0) + (elapsed if up else 0.0)
        self._last_tick = now
        if self._hour is not None and hour != self._hour:
            self._flush()
        self._hour = hour
        if now - self._summary_at >= SUMMARY_EVERY_S:
            self._summary_at = now
            self._summary = self._work_out(now)
        return self._summary

    def flush(self) -> None:
        """Store the hour in progress (at stop)."""
        self._flush()

    def _flush(self) -> None:
        if self._hour is None:
            return
        for channel, total in self._total.items():
            if total > 0 and channel in self.outbox.channels:
                self.outbox.add_uptime(channel, self._hour, self._up.get(channel, 0.0), total)
        self._up.clear()
        self._total.clear()

    def _work_out(self, now: float) -> dict[str, Any]:
        rows = self.outbox.deliveries(now - WEEK_S)
        hours = self.outbox.uptime(int((now - WEEK_S) // 3600))
        day_hours = self.outbox.uptime(int((now - DAY_S) // 3600))
        channels: dict[str, Any] = {}
        warnings: list[str] = []
        for channel in self.outbox.channels:
            mine = [(kind, raised, acked) for c, _, kind, raised, acked in rows if c == channel]
            week = [acked - raised for _, raised, acked in mine]
            day = [acked - raised for _, raised, acked in mine if acked >= now - DAY_S]
            avail_week = self._availability(channel, hours)
            avail_day = self._availability(channel, day_hours)
            channels[channel] = {
                "24h": {**_times(day), "availability": avail_day},
                "7d": {**_times(week), "availability": avail_week},
            }
            slow = [
                (kind, raised, acked)
                for kind, raised, acked in mine
                if kind == "alarm.raised" and acked - raised > SLOW_ALARM_S and acked >= now - DAY_S
            ]
            if slow:
                worst = max(acked - raised for _, raised, acked in slow)
                warnings.append(
                    f"{channel}: {len(slow)} alarm(s) acknowledged more than {SLOW_ALARM_S:g} s "
                    f"after they were raised in the last 24 h (worst {worst:.1f} s)"
                )
            for _, raised, acked in slow:
                if acked > self._slow_seen_until:
                    self._record(
                        Event(
                            "uplink.delivery_slow",
                            channel,
                            time.monotonic(),
                            {"after_s": round(acked - raised, 1), "raised_utc": raised},
                        )
                    )
            low = avail_week is not None and avail_week < MIN_AVAILABILITY
            if low:
                warnings.append(
                    f"{channel}: link up {avail_week:.1%} of the last 7 days (below "
                    f"{MIN_AVAILABILITY:.0%})"
                )
            if low != (channel in self._low):
                kind = "uplink.availability_low" if low else "uplink.availability_ok"
                self._record(
                    Event(kind, channel, time.monotonic(), {"availability_7d": avail_week})
                )
                if low:
                    self._low.add(channel)
                else:
                    self._low.discard(channel)
        self._slow_seen_until = max(
            [self._slow_seen_until, *(acked for _, _, _, _, acked in rows)]
        )
        summary = {"channels": channels, "warnings": warnings}
        day_index = int(now // DAY_S)
        if self._summary_day is not None and day_index != self._summary_day:
            self._record(Event("uplink.delivery_summary", "outbox", time.monotonic(), summary))
        self._summary_day = day_index
        return summary

    def _availability(
        self, channel: str, stored: Mapping[str, tuple[float, float]]
    ) -> float | None:
        up, total = stored.get(channel, (0.0, 0.0))
        up += self._up.get(channel, 0.0)
        total += self._total.get(channel, 0.0)
        return None if total <= 0 else round(up / total, 4)
