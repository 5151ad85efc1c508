"""How busy each RS-485 bus is, from the config alone: the figures ``check-config`` prints and
the warnings the safety process logs at start.

A bus is read once per ``timings.poll_period_s``. Its healthy cycle is the sum of every
detector's poll (``gateway.rtu.poll_time``: frames at the configured baud, t3.5 silences, the
gap and an assumed slave turnaround). The poller spends a silent detector's reply timeout only
where it fits before the next deadline; when one silent detector's attempt
(``gateway.rtu.silent_attempt_time``) no longer fits beside the healthy cycle, that detector is
tried only now and then, and each try costs the healthy ones part of a cycle: the installer is
warned, with the bus named. A healthy cycle longer than the period is warned about too: then no
detector is read as often as configured. An alarming detector's confirming polls at once
(``timings.confirm_at_once``) lengthen the cycle while it alarms: that is counted and warned
about as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Config
from gateway.rtu import poll_time, silent_attempt_time

BUSY_LOAD = 0.8  # above this share of the period a bus has little room for retries


@dataclass(frozen=True, slots=True)
class BusLoad:
    """One bus's load: its healthy cycle against the poll period, and one silent attempt."""

    bus: str
    detectors: int
    baud: int
    period_s: float
    cycle_s: float  # every detector answering, no retries
    silent_attempt_s: float  # one request to a detector that does not answer
    timeout_s: float
    retries: int
    confirm_s: float = 0.0  # the confirming polls at once of one alarming detector

    @property
    def alarm_cycle_s(self) -> float:
        """The cycle while one detector alarms: its confirming polls come at once."""
        return self.cycle_s + self.confirm_s

    @property
    def load(self) -> float:
        """The healthy cycle as a share of the period (1.0: the bus never rests)."""
        return self.cycle_s / self.period_s

    @property
    def silent_fits(self) -> bool:
        """True when one silent detector's attempt fits beside the healthy cycle."""
        return self.cycle_s + self.silent_attempt_s <= self.period_s

    def summary(self) -> str:
        return (
            f"bus {self.bus}: {self.detectors} detectors take {self.cycle_s * 1000:.0f} ms of "
            f"the {self.period_s * 1000:.0f} ms period ({self.load:.0%} busy); one silent "
            f"detector costs {self.silent_attempt_s * 1000:.0f} ms per attempt, "
            f"{1 + self.retries} attempts before it is backed off"
            + (
                f"; an alarming detector adds {self.confirm_s * 1000:.0f} ms of confirming "
                "polls at once"
                if self.confirm_s
                else ""
            )
        )

    def warnings(self) -> list[str]:
        """Plain-English warnings for the installer, each naming the bus and what to change."""
        out: list[str] = []
        if self.cycle_s > self.period_s:
            out.append(
                f"bus {self.bus}: reading its {self.detectors} detectors takes "
                f"{self.cycle_s * 1000:.0f} ms, longer than timings.poll_period_s "
                f"{self.period_s:g} s: no detector is read as often as configured. Raise "
                f"poll_period_s to at least {self.cycle_s * 1.25:.2f} s, raise the baud rate "
                f"({self.baud} now) or split the detectors over two buses."
            )
        elif not self.silent_fits:
            room = self.period_s - self.cycle_s
            out.append(
                f"bus {self.bus}: {self.load:.0%} busy; one silent detector's attempt "
                f"({self.silent_attempt_s * 1000:.0f} ms with timeout_s {self.timeout_s:g}) "
                f"does not fit in the {room * 1000:.0f} ms left of each "
                f"{self.period_s:g} s period, so a silent detector is tried only every few "
                f"seconds and each try delays the healthy ones. Lower timeout_s, raise "
                f"poll_period_s to at least {self.cycle_s + self.silent_attempt_s:.2f} s, "
                f"raise the baud rate or split the bus."
            )
        if self.cycle_s <= self.period_s < self.alarm_cycle_s:
            out.append(
                f"bus {self.bus}: with one detector alarming, its confirming polls make the "
                f"cycle {self.alarm_cycle_s * 1000:.0f} ms, longer than timings.poll_period_s "
                f"{self.period_s:g} s: the other detectors are read late while it alarms. "
                f"Raise poll_period_s to at least {self.alarm_cycle_s * 1.1:.2f} s or the baud "
                f"rate ({self.baud} now)."
            )
        return out


def bus_loads(cfg: Config) -> list[BusLoad]:
    """The load of every configured bus (in config order), from its detectors' profiles."""
    period = cfg.timings.poll_period_s
    loads = []
    for b in cfg.buses:
        on_bus = [d for d in cfg.detectors if d.bus == b.name]
        gap_s = b.gap_ms / 1000.0
        polls = [
            poll_time(d.profile.block[1], b.baud, b.parity, b.stop_bits, gap_s) for d in on_bus
        ]
        cycle = sum(polls)
        confirm = (cfg.timings.bus_confirm_count - 1) * max(polls, default=0.0)
        loads.append(
            BusLoad(
                bus=b.name,
                detectors=len(on_bus),
                baud=b.baud,
                period_s=period,
                cycle_s=cycle,
                silent_attempt_s=silent_attempt_time(
                    b.baud, b.parity, b.stop_bits, gap_s, b.timeout_s
                ),
                timeout_s=b.timeout_s,
                retries=b.retries,
                confirm_s=confirm,
            )
        )
    return loads
