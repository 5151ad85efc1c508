"""The safety state machine: readings and time in, valve commands, lights and events out.

Pure: no I/O, no clock, no threads, no locks. The controller owns one ``SafetyCore`` in its
safety thread, feeds it every input and applies the returned ``Outputs`` to the valves *before*
anything is recorded or forwarded.

Rules (each one is a test in ``tests/core/test_safety_core.py`` or a property in
``tests/core/test_safety_properties.py``):

* A detector's level rises to L when its last ``confirm_count`` readings are all at L or above
  (GB 16808-2025: alarm confirmed by >= 2 signals); it falls when its last ``confirm_count``
  readings are all below. A value above the detector's range counts as a high alarm. A reading
  with no usable value (NaN, garbage, implausibly negative) or a detector-reported fault is
  unusable: ``confirm_count`` unusable replies among the last ``2 x confirm_count`` are a sensor
  fault (cleared by ``2 x confirm_count`` usable ones in a row), and a reset waits until the
  last ``2 x confirm_count`` replies were all usable. An alarm the detector reports itself
  still counts as an alarm reading.
* An alarm latches: the latched level is kept until a manual reset.
* A detector with no valid reply for ``comm_fault_timeout_s`` is in comm fault; its last value is
  then never reported (``DetectorView.lel`` is None).
* Any latched alarm or active fault closes every valve mapped to the detector's zone (fail safe).
  In a zone with two-detector confirmation (``SafetyPlan.two_detector_zones``, GB 16808-2025
  lets an alarm be confirmed by two detectors) one detector's low alarm sounds, latches and goes
  upstream but closes nothing; a high alarm at any detector, low alarms at two, or any
  detector's fault (comm or sensor: fail safe) close the zone's valves.
* A valve, once closed, stays closed (lockout) until a local manual reset, which is refused unless
  every detector is normal. Startup begins with every valve closed: a restart never opens gas.
* A valve with a position contact must confirm "closed" within its ``close_confirm_s`` or it is
  in fault; a confirmed-open valve whose contact reports closed is locked out. A valve in fault
  blocks the reset until its contact confirms "closed" again.
* A detector inhibited for calibration (at most one hour, ends by itself) reports its alarms as
  ``test.alarm`` and they neither latch nor close valves; its faults still do. When the inhibit
  ends, gas still present latches at once. Valve and sounder tests are operator inputs too.
* Time never runs backwards: inputs are judged at the latest time seen, and a reading that
  waited longer than ``comm_fault_timeout_s`` is stale and ignored.
* A store fault (the event log cannot be written) is a fault for the lights, the sounder and
  the record, and changes no valve.
* Exhaust fans follow their zones' alarms (``core.fans``); a fan that does not run is a fault
  and changes no valve.
* A detector due for service (``ServiceWarnings``: calibration overdue, end of life) flashes
  the yellow light; it neither sounds nor changes a valve.
* A mains failure (debounced, ``core.power``) is a fault; a low backup battery is a fault that
  closes every valve while there is still power to drive it, and blocks the reset until the
  battery is no longer low.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.fans import FanInterlock, FanView
from gateway.core.identity import OrphanView, identity_changes, orphan_text
from gateway.core.model import (
    MAX_INHIBIT_S,
    MAX_SOUNDER_TEST_S,
    CommFailure,
    DetectorPlan,
    Event,
    FanFeedback,
    InhibitRequest,
    Input,
    Level,
    Light,
    OrphanLatchClear,
    Outputs,
    PowerInput,
    Reading,
    ResetRequest,
    SafetyPlan,
    ServiceWarnings,
    SilenceRequest,
    SounderTestRequest,
    StoreHealth,
    Tick,
    ValveFeedback,
    ValvePlan,
    ValveTestRequest,
    latch_key,
    split_latch_key,
)
from gateway.core.power import PowerMonitor

# A reading below zero by more than this is implausible: a drifted or broken sensor.
NEGATIVE_FAULT_LEL = -5.0


@dataclass(frozen=True, slots=True)
class DetectorView:
    """What the status API shows of one detector. ``lel`` is None unless the last valid reply
    is current (no comm fault): a stale value is never shown as a reading."""

    name: str
    zone: str
    lel: float | None
    level: Level
    latched: Level
    fault: str | None
    last_good_at: float | None
    has_reading: bool
    inhibited_until: float | None = None
    # The reply was at or beyond the detector's full scale: ``lel`` is that full scale, the
    # concentration is not known (a saturated cell, 0x7FFF, 1e30), only that it is at least that.
    over_range: bool = False


@dataclass(frozen=True, slots=True)
class ValveView:
    name: str
    commanded_open: bool
    reason: str
    feedback_closed: bool | None
    confirmed: bool
    failed: bool


@dataclass(frozen=True, slots=True)
class CoreView:
    detectors: tuple[DetectorView, ...]
    valves: tuple[ValveView, ...]
    silenced: bool
    store_fault: str | None = None
    fans: tuple[FanView, ...] = ()
    mains_failed: bool = False
    battery_low: bool = False
    service: tuple[tuple[str, str], ...] = ()  # detectors due for service, with why
    orphans: tuple[OrphanView, ...] = ()


class _Detector:
    __slots__ = (
        "alarm_window",
        "comm_fault",
        "fault_window",
        "has_reading",
        "inhibited_until",
        "last_good_at",
        "latched",
        "lel",
        "level",
        "over_range",
        "plan",
        "sensor_fault",
    )

    def __init__(self, plan: DetectorPlan, now: float, window: int) -> None:
        self.plan = plan
        self.last_good_at = now  # silence is measured from start-up, not from a first reply
        self.has_reading = False
        self.lel: float | None = None
        self.over_range = False
        self.level = Level.NORMAL
        self.latched = Level.NORMAL
        self.alarm_window: deque[Level] = deque(maxlen=window)
        # The last 2 x confirm_count replies' fault texts (None: usable): a detector that
        # babbles every other reply must not pass for normal.
        self.fault_window: deque[str | None] = deque(maxlen=2 * window)
        self.sensor_fault: str | None = None
        self.comm_fault = False
        self.inhibited_until: float | None = None

    @property
    def fault(self) -> str | None:
        if self.comm_fault:
            return "comm: no valid reply"
        if self.sensor_fault is not None:
            return f"sensor: {self.sensor_fault}"
        return None

    def is_normal(self) -> bool:
        return (
            self.has_reading
            and not self.comm_fault
            and self.sensor_fault is None
            and self.level == Level.NORMAL
            and (not self.alarm_window or self.alarm_window[-1] == Level.NORMAL)
            # every recent reply must be usable: one NaN is not yet a fault, but not normal
            and all(f is None for f in self.fault_window)
        )


class _Valve:
    __slots__ = (
        "close_at",
        "confirmed",
        "failed",
        "feedback_closed",
        "never_closed",
        "open",
        "plan",
        "reason",
        "seen_open",
    )

    def __init__(self, plan: ValvePlan, now: float) -> None:
        self.plan = plan
        self.open = False  # fail safe: every start begins closed
        self.reason = "startup: gas stays off until a local manual reset"
        self.close_at: float | None = now
        self.confirmed = not plan.has_feedback
        self.failed = False
        self.never_closed = False  # failed because it never confirmed "closed" (stuck)
        self.feedback_closed: bool | None = None
        self.seen_open = False


class SafetyCore:
    """The safety state machine for one site. See the module docstring for its rules.

    ``latched`` restores alarms latched before a restart (latch keys, ``model.latch_key``):
    each goes back to the detector that now stands for the same physical sensor (bus, address),
    whatever its name. Their valves are closed anyway at start, and the reset still requires
    those detectors to be normal. A latch whose sensor the plan no longer has is kept as an
    **orphan latch**: a latched alarm and a fault that blocks the reset of every valve (its
    zone is unknown now) until a technician clears it at the console (``OrphanLatchClear``).
    """

    def __init__(
        self, plan: SafetyPlan, now: float, latched: Mapping[str, Level] | None = None
    ) -> None:
        self._plan = plan
        self._window = max(1, plan.confirm_count)
        self._detectors: dict[str, _Detector] = {}
        self._valves: dict[str, _Valve] = {}
        self._zone_valves: dict[str, list[_Valve]] = {}
        self._silenced = False
        self._store_fault: str | None = None
        self._events: list[Event] = []
        self._now = now
        self._sounder_test_until = now
        self._service: tuple[tuple[str, str], ...] = ()
        self._fans = FanInterlock(plan.fans)
        self._power = PowerMonitor(plan.power)
        # Orphan latches by stored key (``name@sensor``, or a bare name from an older release).
        self._orphans: dict[str, OrphanView] = {}
        self.restored: dict[str, Level] = {}  # detector name -> level, for controller.started
        self._apply_plan(plan, now)
        by_sensor = {d.plan.sensor_key: d for d in self._detectors.values()}
        for key, raw_level in (latched or {}).items():
            level = Level(raw_level)
            if level <= Level.NORMAL:
                continue
            name, sensor = split_latch_key(key)
            # A latch stored by name only (before latches belonged to sensors) goes back to the
            # detector of that name: the one upgrade step that trusts a name.
            det = by_sensor.get(sensor) if sensor is not None else self._detectors.get(name)
            if det is None:
                self._add_orphan(key, OrphanView(name, sensor, level), now)
                continue
            if level > det.latched:
                det.latched = level
                self.restored[det.plan.name] = level
                for valve in self._zone_valves.get(det.plan.zone, ()):
                    valve.reason = f"restart with latched {level.name.lower()} alarm"

    # -- orphan latches ----------------------------------------------------------------------

    def _add_orphan(self, key: str, orphan: OrphanView, now: float) -> None:
        old = self._orphans.get(key)
        if old is not None and old.level >= orphan.level:
            return
        self._orphans[key] = orphan
        self._silenced = False
        self._events.append(
            Event(
                "fault.raised",
                orphan.name,
                now,
                {
                    "fault": "orphan_latch",
                    "sensor": orphan.sensor,
                    "level": orphan.level.name.lower(),
                    "text": orphan_text(orphan),
                },
            )
        )

    def orphans(self) -> dict[str, OrphanView]:
        """The orphan latches by stored key (for controller.started and the status)."""
        return dict(self._orphans)

    def _on_orphan_clear(self, req: OrphanLatchClear, now: float) -> None:
        wanted = req.latch.strip()
        found = [
            (k, o) for k, o in self._orphans.items() if wanted and wanted in (o.name, o.sensor)
        ]
        reason = req.reason.strip()
        if not found:
            known = ", ".join(sorted(o.name for o in self._orphans.values())) or "none"
            self._refuse(
                "clear-orphan", req.operator, now, f"no orphan latch {wanted!r} (orphans: {known})"
            )
            return
        if len(found) > 1:
            self._refuse(
                "clear-orphan",
                req.operator,
                now,
                f"{wanted!r} names {len(found)} orphan latches: name one by its sensor "
                f"({', '.join(str(o.sensor) for _, o in found)})",
            )
            return
        if not reason:
            self._refuse("clear-orphan", req.operator, now, "a reason is required")
            return
        key, orphan = found[0]
        del self._orphans[key]
        self._events.append(
            Event(
                "operator.orphan_cleared",
                orphan.name,
                now,
                {
                    "operator": req.operator,
                    "reason": reason[:200],
                    "sensor": orphan.sensor,
                    "level": orphan.level.name.lower(),
                },
            )
        )
        self._events.append(Event("fault.cleared", orphan.name, now, {"fault": "orphan_latch"}))

    # -- configuration ---------------------------------------------------------------------

    def _apply_plan(self, plan: SafetyPlan, now: float) -> None:
        old_detectors, old_valves = self._detectors, self._valves
        # A detector's state belongs to its physical sensor: matched by sensor, not by name.
        old_by_sensor = {d.plan.sensor_key: d for d in old_detectors.values()}
        self._plan = plan
        self._window = max(1, plan.confirm_count)
        self._detectors = {}
        for dp in plan.detectors:
            old = old_by_sensor.get(dp.sensor_key)
            if (
                old is not None
                and old.alarm_window.maxlen == self._window
                and (old.plan.profile, old.plan.range_lel) == (dp.profile, dp.range_lel)
            ):
                old.plan = dp
                self._detectors[dp.name] = old
            else:
                det = _Detector(dp, now, self._window)
                if old is not None:  # keep what matters for safety across a re-plan
                    det.latched, det.last_good_at = old.latched, old.last_good_at
                    # Only the confirmation windows start afresh: a confirmed alarm level or
                    # fault stays until readings in the new window clear it.
                    det.level, det.lel = old.level, old.lel
                    det.sensor_fault, det.comm_fault = old.sensor_fault, old.comm_fault
                    det.inhibited_until = old.inhibited_until
                self._detectors[dp.name] = det
        self._valves = {}
        for vp in plan.valves:
            old_valve = old_valves.get(vp.name)
            if old_valve is not None:
                old_valve.plan = vp
                self._valves[vp.name] = old_valve
            else:
                self._valves[vp.name] = _Valve(vp, now)
        self._zone_valves = {}
        for valve in self._valves.values():
            for zone in valve.plan.zones:
                self._zone_valves.setdefault(zone, []).append(valve)
        self._fans.replan(plan.fans)
        self._power.replan(plan.power)

    def replan(self, plan: SafetyPlan, now: float) -> Outputs:
        """Apply a new, already validated plan (config reload). Latches and valve lockouts are
        kept; new valves start closed; nothing is opened. While a detector is latched, in
        alarm, in fault, inhibited or otherwise not normal, the plan may not change what it
        stands for: its name, sensor (bus, address), profile, zone, the zone's valves or the
        zone's two-detector rule; such a plan is refused (``config.refused`` naming the
        detector, the field and the state; nothing changes): only the local manual reset may
        clear a latch. An orphan latch whose sensor the new plan names again goes back to it."""
        held = [(d.plan, self._identity_locked(d)) for d in self._detectors.values()]
        refusals = identity_changes(held, self._plan, plan)
        if refusals:
            self._events.append(
                Event(
                    "config.refused",
                    "site",
                    now,
                    {
                        "reasons": [r[2] for r in refusals],
                        "detectors": sorted({r[0] for r in refusals}),
                        "fields": sorted({r[1] for r in refusals}),
                    },
                )
            )
            return self._finish(now)
        self._apply_plan(plan, now)
        by_sensor = {d.plan.sensor_key: d for d in self._detectors.values()}
        for key, orphan in list(self._orphans.items()):
            det = by_sensor.get(orphan.sensor) if orphan.sensor is not None else None
            if det is None:
                continue
            del self._orphans[key]
            det.latched = max(det.latched, orphan.level)
            self._events.append(
                Event(
                    "fault.cleared",
                    orphan.name,
                    now,
                    {"fault": "orphan_latch", "latch_now_on": det.plan.name},
                )
            )
        self._events.append(
            Event("config.applied", "site", now, {"detectors": len(plan.detectors)})
        )
        return self._finish(now)

    def _identity_locked(self, det: _Detector) -> str | None:
        """Why ``det`` may not change what it stands for now (None: it is normal)."""
        if det.latched > Level.NORMAL:
            return f"has a latched {det.latched.name.lower()} alarm"
        if det.level > Level.NORMAL:
            return f"is in {det.level.name.lower()} alarm"
        if det.fault is not None:
            return f"is in fault ({det.fault})"
        if det.inhibited_until is not None:
            return "is inhibited for calibration"
        if det.has_reading and not det.is_normal():
            return "is not normal (its last readings are not all normal and usable)"
        return None

    # -- the one entry point ---------------------------------------------------------------

    def handle(self, inp: Input) -> Outputs:
        """Feed one input; return what the drivers must show now and the events it caused.

        Time never runs backwards inside the core: an input stamped earlier than one already
        seen (it waited in a queue) is judged at the latest time seen."""
        now = max(inp.at, self._now)
        self._now = now
        # Time has passed up to ``now`` before this input happened: a detector silent for too
        # long is in comm fault (and its valves close) before a late reply clears it or a reset
        # is judged. Otherwise a stalled loop could hide the silence or reopen the gas.
        self._decide(now)
        if isinstance(inp, Reading):
            self._on_reading(inp)
        elif isinstance(inp, CommFailure):
            pass  # only the age of the last valid reply decides a comm fault (below)
        elif isinstance(inp, ValveFeedback):
            self._on_feedback(inp)
        elif isinstance(inp, ResetRequest):
            self._on_reset(inp)
        elif isinstance(inp, SilenceRequest):
            if not self._silenced:
                self._silenced = True
                self._events.append(
                    Event("operator.silence", "site", now, {"operator": inp.operator})
                )
        elif isinstance(inp, InhibitRequest):
            self._on_inhibit(inp, now)
        elif isinstance(inp, ValveTestRequest):
            self._on_valve_test(inp, now)
        elif isinstance(inp, SounderTestRequest):
            self._on_sounder_test(inp, now)
        elif isinstance(inp, StoreHealth):
            self._on_store_health(inp, now)
        elif isinstance(inp, FanFeedback):
            self._events += self._fans.feedback(inp)
        elif isinstance(inp, PowerInput):
            self._power.feed(inp)
        elif isinstance(inp, ServiceWarnings):
            self._service = tuple((str(n), str(t)[:200]) for n, t in inp.warnings)
        elif isinstance(inp, OrphanLatchClear):
            self._on_orphan_clear(inp, now)
        elif not isinstance(inp, Tick):  # pragma: no cover - the Input union is closed
            raise TypeError(f"unknown safety input {inp!r}")
        return self._finish(now)

    # -- readings ----------------------------------------------------------------------------

    def _classify(self, det: _Detector, r: Reading) -> tuple[Level | None, str | None]:
        """Alarm class and fault text of one reading: (None, text) for a sensor fault."""
        if r.fault is not None:
            return None, r.fault
        lel = r.lel
        if lel is None or lel != lel:  # NaN compares unequal to itself
            return None, "no valid concentration value"
        if lel < NEGATIVE_FAULT_LEL:
            return None, f"implausible negative value {lel:.1f} %LEL"
        plan = det.plan
        if lel >= plan.high_lel or lel > plan.range_lel:
            level = Level.HIGH
        elif lel >= plan.low_lel:
            level = Level.LOW
        else:
            level = Level.NORMAL
        return max(level, r.own_alarm), None

    def _on_reading(self, r: Reading) -> None:
        det = self._detectors.get(r.detector)
        if det is None:
            return  # a detector removed by a re-plan; its late reading means nothing now
        if self._now - r.at > self._plan.comm_fault_timeout_s:
            return  # waited longer than the silence limit: it is not current, it proves nothing
        if r.at >= det.last_good_at:
            det.last_good_at = r.at
        det.has_reading = True
        if det.comm_fault:
            det.comm_fault = False
            self._events.append(Event("fault.cleared", det.plan.name, r.at, {"fault": "comm"}))
        level, fault = self._classify(det, r)
        det.fault_window.append(fault)
        self._update_sensor_fault(det, r.at)
        if level is None:
            det.lel = None
            det.over_range = False
            # A faulty detector that still reports its own alarm is alarming (fail safe): the
            # alarm counts towards confirmation, the fault towards a sensor fault.
            if r.own_alarm == Level.NORMAL:
                return
            level = r.own_alarm
        else:
            value = max(0.0, r.lel if r.lel is not None else 0.0)
            # Beyond full scale the number means nothing (0x7FFF is 3276.7): report the full
            # scale and say it is over range, never the raw value.
            det.over_range = value >= det.plan.range_lel
            det.lel = min(value, det.plan.range_lel)
        det.alarm_window.append(level)
        if len(det.alarm_window) < self._window:
            return
        up = min(det.alarm_window)  # every one of the last N readings is at least this
        down = max(det.alarm_window)  # every one of the last N readings is at most this
        if up > det.level and det.inhibited_until is not None:
            # Calibration gas on an inhibited detector: a test alarm, reported, not latched.
            det.level = up
            self._events.append(
                Event("test.alarm", det.plan.name, r.at, {"level": up.name.lower(), **_lel(det)})
            )
        elif up > det.level:
            # A rise is a new alarm even below the latched level (gas back after it cleared):
            # it is recorded and sounds again after a silence.
            det.level = up
            det.latched = max(det.latched, up)
            self._silenced = False
            self._events.append(
                Event(
                    "alarm.raised",
                    det.plan.name,
                    r.at,
                    {"level": up.name.lower(), **_lel(det), "zone": det.plan.zone},
                )
            )
        elif down < det.level:
            det.level = down
            if down == Level.NORMAL:
                self._events.append(
                    Event(
                        "alarm.cleared",
                        det.plan.name,
                        r.at,
                        {**_lel(det), "latched": det.latched.name.lower()},
                    )
                )

    def _update_sensor_fault(self, det: _Detector, now: float) -> None:
        """A sensor fault when ``confirm_count`` of the last ``2 x confirm_count`` replies were
        unusable (in a row or not: a detector babbling every other reply is faulty); cleared
        only by ``2 x confirm_count`` usable replies in a row."""
        window = det.fault_window
        bad = [f for f in window if f is not None]
        if det.sensor_fault is None and len(bad) >= self._window:
            det.sensor_fault = bad[-1]
            self._silenced = False
            self._events.append(
                Event("fault.raised", det.plan.name, now, {"fault": "sensor", "text": bad[-1]})
            )
        elif det.sensor_fault is not None and len(window) == window.maxlen and not bad:
            det.sensor_fault = None
            self._events.append(Event("fault.cleared", det.plan.name, now, {"fault": "sensor"}))

    # -- valves ------------------------------------------------------------------------------

    def _on_feedback(self, fb: ValveFeedback) -> None:
        valve = self._valves.get(fb.valve)
        if valve is None or fb.closed is None or fb.closed == valve.feedback_closed:
            return
        valve.feedback_closed = fb.closed
        name = valve.plan.name
        if not valve.open:
            if fb.closed:
                if not valve.confirmed or valve.failed:
                    after = None if valve.close_at is None else round(fb.at - valve.close_at, 3)
                    valve.confirmed = True
                    self._events.append(
                        Event("valve.closed", name, fb.at, {"confirmed": True, "after_s": after})
                    )
                if valve.failed:
                    valve.failed = valve.never_closed = False
                    self._events.append(Event("fault.cleared", name, fb.at, {"fault": "valve"}))
            elif valve.confirmed:
                # Closed, confirmed, and now the contact says open: nobody may open it but us.
                self._valve_fault(valve, fb.at, "valve reports open while commanded closed")
        elif not fb.closed:
            if not valve.seen_open:
                valve.seen_open = True
                self._events.append(Event("valve.opened", name, fb.at, {"confirmed": True}))
        elif valve.seen_open:
            # Closed by hand or by its own power loss: lock out, reopening needs a reset.
            self._close(valve, fb.at, "valve closed outside gasguard (manual or power loss)")
            valve.confirmed = True
            self._events.append(Event("valve.closed", name, fb.at, {"confirmed": True}))

    def _valve_fault(
        self, valve: _Valve, now: float, text: str, never_closed: bool = False
    ) -> None:
        if valve.failed:
            return
        valve.failed = True
        valve.never_closed = never_closed
        self._silenced = False
        self._events.append(Event("valve.failed", valve.plan.name, now, {"text": text}))

    def _close(self, valve: _Valve, now: float, reason: str) -> None:
        valve.open = False
        valve.reason = reason
        valve.close_at = now
        valve.seen_open = False
        valve.confirmed = not valve.plan.has_feedback or valve.feedback_closed is True
        self._events.append(
            Event(
                "valve.closing",
                valve.plan.name,
                now,
                {"reason": reason, "confirmed": valve.confirmed},
            )
        )

    # -- operator ------------------------------------------------------------------------------

    def reset_blockers(self) -> list[str]:
        """Why a manual reset would be refused now; empty when it would be accepted."""
        blockers = []
        for det in self._detectors.values():
            if det.is_normal():
                continue
            if not det.has_reading:
                why = "no reading yet"
            elif det.fault is not None:
                why = det.fault
            elif any(f is not None for f in det.fault_window):
                last_bad = next(f for f in reversed(det.fault_window) if f is not None)
                why = f"a recent reply was unusable: {last_bad}"
            else:
                why = f"gas at {det.lel:.1f} %LEL" if det.lel is not None else "not normal"
                if det.level > Level.NORMAL:
                    why += f", {det.level.name.lower()} alarm not yet cleared"
            blockers.append(f"{det.plan.name}: {why}")
        for valve in self._valves.values():
            if valve.never_closed:
                # A valve that never confirmed "closed" is broken: gas may flow whatever we
                # command. Keep the fault (yellow, sounder) until a technician has fixed it and
                # its contact confirms "closed". (A valve reopened by hand after it had closed
                # is an action at the valve, which the reset may accept.)
                blockers.append(
                    f"{valve.plan.name}: valve never confirmed closed, check the valve and its "
                    "contact"
                )
        if self._power.battery_low:
            blockers.append("power: backup battery low, restore the mains or the battery first")
        for orphan in self._orphans.values():
            blockers.append(f"{orphan.name}: {orphan_text(orphan)}")
        return blockers

    def _on_reset(self, req: ResetRequest) -> None:
        blockers = self.reset_blockers()
        if blockers:
            self._events.append(
                Event(
                    "operator.reset_refused",
                    "site",
                    req.at,
                    {"operator": req.operator, "reasons": blockers},
                )
            )
            return
        self._events.append(Event("operator.reset", "site", req.at, {"operator": req.operator}))
        self._silenced = False
        for det in self._detectors.values():
            det.latched = Level.NORMAL
        self._events += self._fans.reset(req.at)
        # A valve that never confirmed "closed" blocks the reset (see reset_blockers); one that
        # was reopened by hand after closing is accepted with the reset.
        for valve in self._valves.values():
            if valve.failed:
                valve.failed = False
                self._events.append(
                    Event("fault.cleared", valve.plan.name, req.at, {"fault": "valve"})
                )
            if not valve.open:
                valve.open = True
                valve.reason = f"reset by {req.operator}"
                valve.close_at = None
                valve.seen_open = False
                if not valve.plan.has_feedback:
                    self._events.append(
                        Event("valve.opened", valve.plan.name, req.at, {"confirmed": False})
                    )

    def _refuse(self, action: str, operator: str, now: float, reason: str) -> None:
        self._events.append(
            Event(
                "operator.refused",
                "site",
                now,
                {"action": action, "operator": operator, "reason": reason},
            )
        )

    def _on_inhibit(self, req: InhibitRequest, now: float) -> None:
        det = self._detectors.get(req.detector)
        if det is None:
            self._refuse("inhibit", req.operator, now, f"no detector {req.detector!r}")
            return
        if not 0.0 <= req.seconds <= MAX_INHIBIT_S or req.seconds != req.seconds:
            self._refuse(
                "inhibit",
                req.operator,
                now,
                f"{req.seconds!r} s is outside 0 to {MAX_INHIBIT_S:g} s",
            )
            return
        if req.seconds == 0.0:
            if det.inhibited_until is not None:
                det.inhibited_until = now  # ends (and latches any gas) in _decide below
            return
        det.inhibited_until = now + req.seconds
        self._events.append(
            Event(
                "detector.inhibited",
                det.plan.name,
                now,
                {"operator": req.operator, "seconds": req.seconds},
            )
        )

    def _on_valve_test(self, req: ValveTestRequest, now: float) -> None:
        valve = self._valves.get(req.valve)
        if valve is None:
            self._refuse("valve-test", req.operator, now, f"no valve {req.valve!r}")
            return
        was_open = valve.open
        self._events.append(
            Event(
                "operator.valve_test",
                valve.plan.name,
                now,
                {"operator": req.operator, "was_open": was_open},
            )
        )
        if was_open:
            self._close(valve, now, f"valve test by {req.operator}")

    def _on_sounder_test(self, req: SounderTestRequest, now: float) -> None:
        if not 1.0 <= req.seconds <= MAX_SOUNDER_TEST_S:
            self._refuse(
                "sounder-test",
                req.operator,
                now,
                f"{req.seconds!r} s is outside 1 to {MAX_SOUNDER_TEST_S:g} s",
            )
            return
        self._sounder_test_until = now + req.seconds
        self._events.append(
            Event(
                "operator.sounder_test",
                "site",
                now,
                {"operator": req.operator, "seconds": req.seconds},
            )
        )

    # -- time and decisions ------------------------------------------------------------------

    def _on_store_health(self, health: StoreHealth, now: float) -> None:
        """A store fault: shown and sounded (a new fault), raised and cleared once each; the
        valves are not touched."""
        text = None if health.error is None else str(health.error)[:300]
        if text is not None and self._store_fault is None:
            self._silenced = False
            self._events.append(
                Event("fault.raised", "store", now, {"fault": "store", "text": text})
            )
        elif text is None and self._store_fault is not None:
            self._events.append(Event("fault.cleared", "store", now, {"fault": "store"}))
        self._store_fault = text

    def _finish(self, now: float) -> Outputs:
        self._decide(now)
        return self._outputs()

    def _decide(self, now: float) -> None:
        """Apply the passage of time and the fail-safe rules at ``now``. Idempotent."""
        timeout = self._plan.comm_fault_timeout_s
        for det in self._detectors.values():
            if det.inhibited_until is not None and now >= det.inhibited_until:
                det.inhibited_until = None
                self._events.append(Event("detector.inhibit_ended", det.plan.name, now, {}))
                if det.level > det.latched:  # gas still there: an alarm from now on
                    det.latched = det.level
                    self._silenced = False
                    self._events.append(
                        Event(
                            "alarm.raised",
                            det.plan.name,
                            now,
                            {
                                "level": det.level.name.lower(),
                                **_lel(det),
                                "zone": det.plan.zone,
                            },
                        )
                    )
            if not det.comm_fault and now - det.last_good_at > timeout:
                det.comm_fault = True
                det.lel = None
                self._silenced = False
                self._events.append(
                    Event(
                        "fault.raised",
                        det.plan.name,
                        now,
                        {"fault": "comm", "silent_s": round(now - det.last_good_at, 3)},
                    )
                )
        # Fail safe: an alarm or any fault we cannot rule out closes the zone's valves. In a
        # two-detector zone a low alarm alone only warns; a second one (or a high alarm, or a
        # fault) closes.
        votes: dict[str, int] = {}
        # A zone's voting detectors: those not inhibited. With fewer than two voting, a
        # two-detector zone closes on a single low alarm (nobody else could confirm it).
        voters: dict[str, int] = {}
        for det in self._detectors.values():
            if det.latched > Level.NORMAL or det.fault is not None:
                votes[det.plan.zone] = votes.get(det.plan.zone, 0) + 1
            if det.inhibited_until is None:
                voters[det.plan.zone] = voters.get(det.plan.zone, 0) + 1
        for det in self._detectors.values():
            if det.latched == Level.NORMAL and det.fault is None:
                continue
            if (
                det.plan.zone in self._plan.two_detector_zones
                and det.fault is None
                and det.latched == Level.LOW
                and votes[det.plan.zone] < 2
                and voters.get(det.plan.zone, 0) >= 2
            ):
                continue
            for valve in self._zone_valves.get(det.plan.zone, ()):
                if valve.open:
                    if det.latched == Level.LOW and det.plan.zone in self._plan.two_detector_zones:
                        why = (
                            f"{det.latched.name.lower()} alarm at {det.plan.name} "
                            f"({votes[det.plan.zone]} detectors of {det.plan.zone})"
                        )
                        if voters.get(det.plan.zone, 0) < 2:
                            why = (
                                f"{det.latched.name.lower()} alarm at {det.plan.name} (fewer "
                                f"than two detectors of {det.plan.zone} voting: one inhibited)"
                            )
                    elif det.latched > Level.NORMAL:
                        why = f"{det.latched.name.lower()} alarm at {det.plan.name}"
                    else:
                        why = f"{det.fault} at {det.plan.name}"
                    self._close(valve, now, why)
        if self._orphans:
            # An orphan latch's zone is unknown: every valve stays closed until it is cleared.
            for valve in self._valves.values():
                if valve.open:
                    self._close(valve, now, "orphan latch: a latched alarm of a removed detector")
        power_events = self._power.decide(now)
        if any(e.kind in ("power.mains_failed", "power.battery_low") for e in power_events):
            self._silenced = False
        self._events += power_events
        if self._power.battery_low:
            for valve in self._valves.values():
                if valve.open:
                    self._close(valve, now, "backup battery low: closed before the power fails")
        self._decide_fans(now)
        for valve in self._valves.values():
            if (
                not valve.open
                and not valve.confirmed
                and valve.close_at is not None
                and now - valve.close_at > valve.plan.close_confirm_s
            ):
                self._valve_fault(
                    valve,
                    now,
                    f"no closed feedback within {valve.plan.close_confirm_s} s",
                    never_closed=True,
                )

    def _decide_fans(self, now: float) -> None:
        alarms: dict[str, str] = {}
        comm: dict[str, str] = {}
        for det in self._detectors.values():
            level = det.latched if det.inhibited_until is not None else max(det.level, det.latched)
            if level > Level.NORMAL:
                alarms.setdefault(det.plan.zone, f"{level.name.lower()} alarm at {det.plan.name}")
            if det.comm_fault:
                comm.setdefault(det.plan.zone, f"comm fault at {det.plan.name}")
        fan_events = self._fans.decide(now, alarms, comm)
        if any(e.kind == "fan.failed" for e in fan_events):
            self._silenced = False
        self._events += fan_events

    def _outputs(self) -> Outputs:
        any_alarm = any(d.latched > Level.NORMAL for d in self._detectors.values()) or bool(
            self._orphans
        )
        any_fault = (
            any(d.fault is not None for d in self._detectors.values())
            or bool(self._orphans)
            or any(v.failed for v in self._valves.values())
            or self._store_fault is not None
            or self._fans.any_failed()
            or self._power.mains_failed
            or self._power.battery_low
        )
        # Steady yellow: attention, no fault: gas locked off awaiting a reset, or a detector
        # inhibited for calibration.
        attention = any(not v.open for v in self._valves.values()) or any(
            d.inhibited_until is not None for d in self._detectors.values()
        )
        testing = self._now < self._sounder_test_until
        events, self._events = tuple(self._events), []
        return Outputs(
            valves_open={name: v.open for name, v in self._valves.items()},
            sounder=((any_alarm or any_fault) and not self._silenced) or testing,
            red=Light.FLASH_ALARM if any_alarm else Light.OFF,
            yellow=Light.FLASH_FAULT
            if any_fault or self._service
            else (Light.ON if attention else Light.OFF),
            green=Light.ON,
            events=events,
            fans_on=self._fans.commands(),
        )

    # -- views ---------------------------------------------------------------------------------

    def view(self) -> CoreView:
        """A snapshot for the status API (called from the safety thread only)."""
        return CoreView(
            detectors=tuple(
                DetectorView(
                    name=d.plan.name,
                    zone=d.plan.zone,
                    lel=None if d.comm_fault or not d.has_reading else d.lel,
                    level=d.level,
                    latched=d.latched,
                    fault=d.fault,
                    last_good_at=d.last_good_at if d.has_reading else None,
                    has_reading=d.has_reading,
                    inhibited_until=d.inhibited_until,
                    over_range=d.over_range and not d.comm_fault and d.has_reading,
                )
                for d in self._detectors.values()
            ),
            valves=tuple(
                ValveView(
                    name=v.plan.name,
                    commanded_open=v.open,
                    reason=v.reason,
                    feedback_closed=v.feedback_closed,
                    confirmed=v.confirmed,
                    failed=v.failed,
                )
                for v in self._valves.values()
            ),
            silenced=self._silenced,
            store_fault=self._store_fault,
            fans=self._fans.view(),
            mains_failed=self._power.mains_failed,
            battery_low=self._power.battery_low,
            service=self._service,
            orphans=tuple(self._orphans.values()),
        )

    def latched(self) -> dict[str, Level]:
        """Latched alarms by latch key (``name@bus:address``) with the orphan latches, for the
        store to keep across restarts."""
        out = {
            latch_key(d.plan.name, d.plan.sensor): d.latched
            for d in self._detectors.values()
            if d.latched > Level.NORMAL
        }
        for key, orphan in self._orphans.items():
            out[key] = max(out.get(key, Level.NORMAL), orphan.level)
        return out


def _lel(det: _Detector) -> dict[str, object]:
    """The concentration for an event: ``lel``, and ``over_range`` when it is at least the
    detector's full scale (then ``lel`` is that full scale, not the raw value)."""
    if det.over_range:
        return {"lel": det.lel, "over_range": True}
    return {"lel": det.lel}
