"""A latch belongs to the physical sensor (bus, address): a stateful model test of the whole
safety decision across readings, reloads, restarts, resets and inhibits.

Hypothesis drives a kitchen of physical sensors on two RS-485 lines (gas and whether each
answers are the world's, not the controller's) and a configuration that names some of them.
It reloads the configuration with arbitrary mutations (rename, re-address, swap addresses, move
between zones, remove, re-add, profile change), restarts the safety core from the real latch
file (``LatchFile``, as ``Controller.start`` does) with or without a hand edit of the
configuration, presses the reset and inhibits detectors. The configurations are real
``Config`` objects (``dataclasses.replace`` of the example), so ``Config.plan()`` decides what
sensor each detector stands for, as in the running controller.

The invariant, after every step: a valve is open only if every physical sensor that alarmed in
one of its zones since the last accepted reset is configured (polled), answering and below the
low set point of the detector that now stands for it. Which sensor alarmed is taken from the
core's ``alarm.raised`` events and the configuration in force at that moment, so a latch that
moves to another sensor, or is dropped, is caught.

On the code before latches belonged to sensors this finds both ways to put the gas back on with
the leak present: a reload that re-addresses a latched detector, and a restart with a hand-edited
configuration that no longer has it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.config import Config, DetectorConfig, ValveConfig, load_config
from gateway.core.model import (
    CommFailure,
    Event,
    Gas,
    InhibitRequest,
    Outputs,
    Reading,
    ResetRequest,
    Tick,
)
from gateway.core.safety import SafetyCore
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.store.latchfile import LatchFile

ROOT = Path(__file__).resolve().parents[2]
BASE = load_config(ROOT / "config" / "gasguard.example.toml")
PROFILES: list[Profile] = sorted(
    load_profiles(default_profiles_dir()).values(), key=lambda p: p.name
)
BUSES = ("bus-a", "bus-b")
ADDRESSES = (1, 2, 3, 4)
SENSORS = tuple((b, a) for b in BUSES for a in ADDRESSES)
ZONES = ("hot-kitchen", "bakery")
NAMES = ("wok-1", "wok-2", "oven-1", "steamer", "fryer")
LEVELS = (0.0, 5.0, 30.0, 60.0)  # %LEL: clean, below low (20), low alarm, high alarm (50)
POLL_S = 0.5
SILENT_S = 11.0  # longer than the example's 10 s comm-fault timeout


def _config(detectors: list[DetectorConfig]) -> Config:
    # Valves without a position contact: they confirm "closed" at once, so the reset can
    # open them and the invariant is exercised (the contact has tests of its own).
    plain = dataclasses.replace(BASE.valves[0], feedback_pin=None)
    valves = (
        dataclasses.replace(plain, name="main-inlet", zones=(ZONES[0],)),
        dataclasses.replace(plain, name="bakery-valve", zones=(ZONES[1],), output_pin=21),
    )
    return dataclasses.replace(
        BASE, detectors=tuple(detectors), valves=valves, fans=(), two_detector_zones=frozenset()
    )


def _valves_of(cfg: Config, zone: str) -> list[ValveConfig]:
    return [v for v in cfg.valves if zone in v.zones]


class LatchBelongsToTheSensor(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.latch_file = LatchFile(Path(self._dir.name) / "latched.state")
        self.gas: dict[tuple[str, int], float] = dict.fromkeys(SENSORS, 0.0)
        self.answering: dict[tuple[str, int], bool] = dict.fromkeys(SENSORS, True)
        # When each sensor last answered a poll: silence becomes a fault within the
        # comm-fault timeout, so "answering" is "answered within that bound".
        self.answered_at: dict[tuple[str, int], float] = {}
        self.cfg = _config(
            [
                DetectorConfig(name, zone, bus, addr, PROFILES[0], Gas.NATURAL_GAS, 20.0, 50.0)
                for name, zone, (bus, addr) in (
                    ("wok-1", ZONES[0], SENSORS[0]),
                    ("wok-2", ZONES[0], SENSORS[1]),
                    ("oven-1", ZONES[1], SENSORS[2]),
                )
            ]
        )
        self.now = 1000.0
        # Sensors that alarmed since the last accepted reset, per valve (the oracle's own memory).
        self.alarmed: dict[str, set[tuple[str, int]]] = {v.name: set() for v in self.cfg.valves}
        self.core = SafetyCore(self.cfg.plan(), self.now)
        self.out = self.core.handle(Tick(self.now))
        self._took(self.out)
        self.reset()  # commissioned: the gas is on when the story begins
        assert all(self.out.valves_open.values())

    def teardown(self) -> None:
        self._dir.cleanup()

    # -- bookkeeping ----------------------------------------------------------------------------

    def _took(self, out: Outputs) -> None:
        """Remember what the core's events say happened, then persist the latches as the
        recorder does (the latch file after every change)."""
        self.out = out
        by_name = {d.name: d for d in self.cfg.detectors}
        for e in out.events:
            self._note(e, by_name)
        self.latch_file.save(self.core.latched())

    def _note(self, e: Event, by_name: dict[str, DetectorConfig]) -> None:
        if e.kind == "operator.reset":
            # The reset was accepted: judge the valves it opens against every sensor that
            # alarmed since the last one, then start afresh.
            self.check_open_valves()
            for sensors in self.alarmed.values():
                sensors.clear()
        elif e.kind == "alarm.raised":
            det = by_name[e.source]
            for valve in _valves_of(self.cfg, det.zone):
                self.alarmed[valve.name].add((det.bus, det.address))

    def _feed_all(self) -> None:
        for det in self.cfg.detectors:
            sensor = (det.bus, det.address)
            if self.answering[sensor]:
                self.answered_at[sensor] = self.now
                self._took(self.core.handle(Reading(det.name, self.now, self.gas[sensor])))
            else:
                self._took(self.core.handle(CommFailure(det.name, self.now, "timeout")))

    def _reload(self, detectors: list[DetectorConfig]) -> None:
        new = _config(detectors)
        out = self.core.replan(new.plan(), self.now)
        refused = any(e.kind == "config.refused" for e in out.events)
        if not refused:
            self.cfg = new  # the controller takes the new config only when the core applied it
        self._took(out)

    def _restart(self, detectors: list[DetectorConfig] | None = None) -> None:
        """A restart (power cut, crash, upgrade), optionally with a config edited by hand."""
        if detectors is not None:
            self.cfg = _config(detectors)
        self.latch_file = LatchFile(self.latch_file.path)
        self.core = SafetyCore(self.cfg.plan(), self.now, self.latch_file.load())
        out = self.core.handle(Tick(self.now))
        assert not any(out.valves_open.values()), "a restart never opens gas"
        self._took(out)

    # -- the world ------------------------------------------------------------------------------

    @rule(data=st.data(), lel=st.sampled_from(LEVELS))
    def gas_at(self, data: st.DataObject, lel: float) -> None:
        """Gas at a sensor: mostly one a detector stands for now, sometimes any."""
        watched = [(d.bus, d.address) for d in self.cfg.detectors]
        sensor = data.draw(st.sampled_from(watched or SENSORS) | st.sampled_from(SENSORS))
        self.gas[sensor] = lel

    @precondition(lambda self: any(self.gas.values()))
    @rule(data=st.data())
    def the_air_clears(self, data: st.DataObject) -> None:
        sensor = data.draw(st.sampled_from([s for s, lel in self.gas.items() if lel]))
        self.gas[sensor] = 0.0

    @rule(sensor=st.sampled_from(SENSORS), answers=st.booleans())
    def sensor_answers(self, sensor: tuple[str, int], answers: bool) -> None:
        self.answering[sensor] = answers

    @rule(rounds=st.integers(1, 3))
    def poll(self, rounds: int) -> None:
        for _ in range(rounds):
            self.now += POLL_S
            self._feed_all()

    @rule()
    def silence(self) -> None:
        self.now += SILENT_S
        self._took(self.core.handle(Tick(self.now)))

    # -- people ---------------------------------------------------------------------------------

    @rule()
    def reset(self) -> None:
        """The cook holds the reset button after the detectors have been read twice."""
        self.poll(2)
        self._took(self.core.handle(ResetRequest(self.now, "test")))

    @precondition(lambda self: bool(self.cfg.detectors))
    @rule(data=st.data(), minutes=st.sampled_from((0, 5)))
    def inhibit(self, data: st.DataObject, minutes: int) -> None:
        det = data.draw(st.sampled_from(self.cfg.detectors))
        self._took(self.core.handle(InhibitRequest(self.now, det.name, minutes * 60.0, "test")))

    # -- configuration: reloads and hand edits with a restart -----------------------------------

    def _mutated(self, data: st.DataObject) -> list[DetectorConfig]:
        dets = list(self.cfg.detectors)
        used = {(d.bus, d.address) for d in dets}
        free = [s for s in SENSORS if s not in used]
        names = {d.name for d in dets}
        kind = data.draw(
            st.sampled_from(
                ("rename", "readdress", "swap", "zone", "remove", "add", "profile", "set_point")
            )
        )
        if kind == "add" or not dets:
            if not free or names >= set(NAMES):
                return dets
            name = data.draw(st.sampled_from([n for n in NAMES if n not in names]))
            bus, addr = data.draw(st.sampled_from(free))
            zone = data.draw(st.sampled_from(ZONES))
            profile = data.draw(st.sampled_from(PROFILES))
            return [*dets, DetectorConfig(name, zone, bus, addr, profile, Gas.LPG, 20.0, 50.0)]
        i = data.draw(st.integers(0, len(dets) - 1))
        d = dets[i]
        if kind == "rename":
            free_names = [n for n in NAMES if n not in names]
            if free_names:
                dets[i] = dataclasses.replace(d, name=data.draw(st.sampled_from(free_names)))
        elif kind == "readdress" and free:
            bus, addr = data.draw(st.sampled_from(free))
            dets[i] = dataclasses.replace(d, bus=bus, address=addr)
        elif kind == "swap" and len(dets) > 1:
            j = (i + data.draw(st.integers(1, len(dets) - 1))) % len(dets)
            o = dets[j]
            dets[i] = dataclasses.replace(d, bus=o.bus, address=o.address)
            dets[j] = dataclasses.replace(o, bus=d.bus, address=d.address)
        elif kind == "zone":
            dets[i] = dataclasses.replace(d, zone=data.draw(st.sampled_from(ZONES)))
        elif kind == "remove":
            del dets[i]
        elif kind == "profile":
            dets[i] = dataclasses.replace(d, profile=data.draw(st.sampled_from(PROFILES)))
        elif kind == "set_point":
            dets[i] = dataclasses.replace(d, low_lel=data.draw(st.sampled_from((10.0, 20.0))))
        return dets

    @rule(data=st.data())
    def reload(self, data: st.DataObject) -> None:
        self._reload(self._mutated(data))

    @rule()
    def restart(self) -> None:
        self._restart()

    @rule(data=st.data())
    def restart_with_a_hand_edited_config(self, data: st.DataObject) -> None:
        self._restart(self._mutated(data))

    # -- the rule ---------------------------------------------------------------------------------

    @invariant()
    def a_valve_is_open_only_if_every_sensor_that_alarmed_in_its_zone_is_clear(self) -> None:
        self.check_open_valves()

    def check_open_valves(self) -> None:
        """After every step, and at every accepted reset before its memory is cleared."""
        configured = {(d.bus, d.address): d for d in self.cfg.detectors}
        for valve, is_open in self.out.valves_open.items():
            if not is_open:
                continue
            event("a valve open after an alarm" if self.alarmed.get(valve) else "a valve open")
            for sensor in self.alarmed.get(valve, ()):
                det = configured.get(sensor)
                assert det is not None, (
                    f"{valve} open while {sensor} alarmed since the last reset and is no longer "
                    "configured (its latch was dropped or moved)"
                )
                silent_s = self.now - self.answered_at.get(sensor, -1e9)
                assert silent_s <= BASE.timings.comm_fault_timeout_s, (
                    f"{valve} open while {sensor} has not answered for {silent_s:g} s"
                )
                assert self.gas[sensor] < det.low_lel, (
                    f"{valve} open with {self.gas[sensor]} %LEL at {sensor} ({det.name}), "
                    "which alarmed since the last reset"
                )


LatchBelongsToTheSensor.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_a_latch_belongs_to_the_physical_sensor = LatchBelongsToTheSensor.TestCase
