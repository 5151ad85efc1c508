"""(b) Reaction: from the reply that confirms an alarm to the valve output pin changing.

The whole ``Controller`` (safety thread, bus threads, recorder, control server, annunciator)
runs in this process on gpiozero mock pins with a simulated valve body, as in the simulated
kitchen; the emulated detectors run in another process. Both stamp ``time.monotonic()``, which
is system-wide on Linux, so the emulator's "last reply byte written" and the mock pin's
recorded edge share one clock.

One trial: gas goes to 60 %LEL at one detector; the controller needs 2 consecutive alarm
readings (GB 16808-2025), so the second alarm reply is the confirming one. Its
``reply_end_at`` (``BusEmulator.exchanges()``) to the coil pin's falling edge (the mock pin's
state history) is the reaction. Then the gas goes back to 1 %LEL and the valve is reopened with
``controller.submit(ResetRequest(...))`` (the reset button's 2 s hold ends in the same core
input). Trials alternate between a 9600 8N1 and a 19200 8E1 bus.

The poll period is set to ``poll_period_s`` (0.03 s) on the loaded config, below the 0.1 s the
config validation allows a site: this only makes trials faster, the path measured is the same.

Baseline: a bare minimalmodbus loop on the same emulator, from the reply's last byte to
``read_registers`` returning, i.e. the pty and pyserial alone, without the controller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import minimalmodbus
from gpiozero.pins.mock import MockFactory

from bench import Figure, emit, median, note, percentile
from bench.emulator_proc import BusSpec, DetectorSpec, EmulatorProcess, SeenExchange
from bench.poll import PollSetting, open_port
from bench.siteconfig import VALVE_PIN, SiteBus, write_site_config
from bench.uplink_mqtt import Broker
from gateway.appliance import cpus
from gateway.config import Config, load_config
from gateway.core.model import Event, ResetRequest
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.safety.controller import Controller
from gateway.sim.valve_mechanism import ValveMechanism

# Starts a flood against a running controller for the trials (another benchmark's own).
FloodStarter = Callable[[Controller], contextlib.AbstractContextManager[None]]
ALARM_LEL = 60.0  # above every high set point: each reply carries a high alarm
NORMAL_LEL = 1.0
HIGH_LEL = 50.0  # the site's high set point (siteconfig writes it)
STEP_TIMEOUT_S = 5.0
OFF_BOX_NICE = 19  # helpers that stand for machines elsewhere (broker, centres, flood source)


@dataclass(frozen=True, slots=True)
class ReactionDetector:
    name: str
    setting: PollSetting


DETECTORS = (
    ReactionDetector("wok-1", PollSetting(9600, "N", 1, "generic-cn-kitchen")),
    ReactionDetector("fryer", PollSetting(19200, "E", 1, "honeywell-sensepoint-xcd")),
)
ADDRESS = 1


class CoilHistory:
    """The valve coil's edges, as (monotonic time, energised), from the mock pin's recorded
    states (each a delta since the previous one) from the moment this object is made."""

    def __init__(self, pin: Any) -> None:
        self._pin = pin
        pin.clear_states()
        # clear_states() stamps the base of the deltas; read it rather than guess it.
        base = getattr(pin, "_last_change", None)
        self._t: float = float(base) if isinstance(base, float) else time.monotonic()
        self._seen = 1
        self._edges: list[tuple[float, bool]] = []

    @property
    def energised(self) -> bool:
        return bool(self._pin.state)

    def edges(self) -> list[tuple[float, bool]]:
        states = self._pin.states
        count = len(states)
        for state in states[self._seen : count]:
            self._t += state.timestamp
            self._edges.append((self._t, bool(state.state)))
        self._seen = count
        return self._edges

    def first_fall_after(self, after: float) -> float | None:
        for at, energised in self.edges():
            if at >= after and not energised:
                return at
        return None


@contextlib.contextmanager
def _quiet_gasguard_logs() -> Iterator[None]:
    """Every trial logs its alarm as a warning; keep only errors while the trials run."""
    logger = logging.getLogger("gasguard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"reaction benchmark: {what} did not happen within {timeout:g} s")
        time.sleep(0.002)


def _alarm_reply_ends(exchanges: list[SeenExchange], profile: Profile, after: float) -> list[float]:
    """``reply_end_at`` of every reply written after ``after`` that carries a high alarm."""
    ends = []
    for x in exchanges:
        if x.reply_end_at is None or x.reply_end_at < after or len(x.reply) < 5:
            continue
        data = x.reply[3:-2]
        registers = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
        lel = profile.decode(registers).lel
        if lel is not None and lel >= HIGH_LEL:
            ends.append(x.reply_end_at)
    return sorted(ends)


def _reopen(controller: Controller, coil: CoilHistory) -> None:
    """The local reset, once the core would accept it, until the coil is energised again."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not coil.energised:
        if time.monotonic() > deadline:
            snap = controller.snapshot
            blockers = snap.reset_blockers if snap is not None else ("no snapshot yet",)
            raise TimeoutError(f"reaction benchmark: valve not reopened; blockers {blockers}")
        snap = controller.snapshot
        if snap is not None and not snap.reset_blockers:
            controller.submit(ResetRequest(time.monotonic(), "bench"))
            end = time.monotonic() + 0.3
            while not coil.energised and time.monotonic() < end:
                time.sleep(0.002)
        else:
            time.sleep(0.002)


def serial_baseline(emu: EmulatorProcess, bus: int, profile: Profile, reads: int) -> list[float]:
    """Seconds from each reply's last byte (emulator) to ``read_registers`` returning, for
    ``reads`` reads of a bare minimalmodbus loop on ``bus``."""
    setting = DETECTORS[bus].setting
    start, count = profile.block
    emu.clear(bus)
    returned = []
    port = open_port(emu.paths[bus], setting)
    try:
        inst = minimalmodbus.Instrument(port, ADDRESS)
        for _ in range(reads):
            inst.read_registers(start, count, functioncode=profile.function_code)
            returned.append(time.monotonic())
    finally:
        port.close()
    ends: list[float] = []
    for _ in range(100):  # the emulator records an exchange only after its last write returns
        ends = [x.reply_end_at for x in emu.exchanges(bus) if x.reply_end_at is not None]
        if len(ends) >= len(returned):
            break
        time.sleep(0.01)
    if len(ends) != len(returned):
        raise RuntimeError(f"baseline: {len(returned)} reads but {len(ends)} replies seen")
    return [r - e for r, e in zip(returned, ends, strict=True)]


def run_flooded(
    out: TextIO,
    *,
    trials: int = 300,
    poll_period_s: float = 0.03,
    travel_s: float = 0.01,
    flood_per_s: int = 1000,
) -> list[Figure]:
    """Idle and flooded trials in one run: idle with no uplinks process; flooded with the
    uplinks process (``gasguard-uplinks``, its own process, as on a site) forwarding to an MQTT
    broker and a GB/T 26875.3 centre on loopback while ``flood_per_s`` events a second go
    through the event log, the outbox and both channels. Both pairs run twice: with the safety
    process's threads at the unit's real-time priority (as systemd starts it) and without.
    Prints each p99 and the flooded / idle ratio [target <= 1.10]."""
    priority = realtime_priority()
    uplinks_nice = int(unit_setting("gasguard-uplinks.service", "Nice"))
    # As the units place them (gateway.appliance.cpus): the safety process on a core of its own.
    safety = cpus.cpus_for("safety") or set(cpus.online_cpus())
    others = cpus.cpus_for("others") or set(cpus.online_cpus())
    modes = [True, False] if can_use_realtime(priority) else [False]
    note(
        out,
        f"(uplinks flooded) reaction: {trials} trials idle, then {trials} while {flood_per_s} "
        "events/s go through the event log to the uplinks process (MQTT and GB/T 26875.3); "
        + (
            f"with SCHED_FIFO {priority} (the unit's) and without"
            if len(modes) == 2
            else "SCHED_FIFO not permitted here: without real-time priority only"
        ),
    )
    profiles = load_profiles(default_profiles_dir())
    figures: list[Figure] = []
    with (
        _quiet_gasguard_logs(),
        tempfile.TemporaryDirectory(prefix="gasguard-bench-") as tmp,
        EmulatorProcess(_bus_specs()) as emu,
    ):
        # The centres run in their own processes, as they would in a real city.
        broker = Broker(Path(tmp))
        gb_port = free_port()
        centres = [
            _spawn("gb-centre", "--port", str(gb_port)),
            _spawn("receive", "--broker", f"127.0.0.1:{broker.port}", "--site", "BENCH-01"),
        ]
        try:
            _wait(lambda: _listening(gb_port), STEP_TIMEOUT_S, "the GB/T 26875.3 test centre")
            uplinks = (
                f'[uplink.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntls = false\n'
                f'[uplink.gb26875]\nhost = "127.0.0.1"\nport = {gb_port}\n'
                "device_address = 1\n"
            )
            # (tag, real-time, where the flood comes from, site layout). "writer": another
            # process appends to the event log, so the safety process does only its own work
            # while the uplinks forward; "recorder": the safety process's own recorder stores
            # the flood. Site layout: the uplinks process at its unit's Nice, and the broker,
            # the centres and the flood writer, which stand for machines elsewhere, at nice 19;
            # otherwise every helper at normal priority (all of it on this one box).
            runs = [(f"{'rt' if rt else 'nort'}", rt, "writer", True) for rt in modes]
            if modes[0]:
                runs.append(("rt_one_box", True, "writer", False))
                runs.append(("recorder_rt", True, "recorder", True))
            everywhere = set(cpus.online_cpus())
            for tag, rt, source, site_layout in runs:
                helpers = [broker.pid, *(c.pid for c in centres)]
                _renice(helpers, OFF_BOX_NICE if site_layout else 0)
                # The detectors' emulator and the helpers off the safety process's core.
                _pin([*helpers, emu.pid], others if site_layout else everywhere)
                idle_cfg = _site(Path(tmp) / f"idle-{tag}", emu, poll_period_s)
                own = safety if site_layout else everywhere
                idle, _, _ = _trials(
                    emu, idle_cfg, profiles, trials, travel_s, realtime=rt, cpus=own
                )
                cfg = _site(Path(tmp) / f"flooded-{tag}", emu, poll_period_s, uplinks)
                forwarder = _spawn(
                    "uplinks", "--config", str(cfg.path), nice=uplinks_nice if site_layout else 0
                )
                _pin([forwarder.pid], others if site_layout else everywhere)
                seen: dict[str, Any] = {}
                try:
                    flooded, _, _ = _trials(
                        emu,
                        cfg,
                        profiles,
                        trials,
                        travel_s,
                        flood_per_s,
                        realtime=rt,
                        seen=seen,
                        flood_from=source,
                        flood_nice=OFF_BOX_NICE if site_layout else 0,
                        cpus=own,
                        flood_cpus=others if site_layout else everywhere,
                    )
                finally:
                    forwarder.terminate()
                    forwarder.wait(15)
                figures += _flood_figures(
                    tag, rt, priority, idle, flooded, flood_per_s, seen, source, site_layout
                )
        finally:
            for proc in centres:
                proc.terminate()
                proc.wait(10)
            broker.stop()
    for fig in figures:
        emit(out, fig)
    return figures


def _flood_figures(
    tag: str,
    rt: bool,
    priority: int,
    idle: list[float],
    flooded: list[float],
    flood_per_s: int,
    seen: dict[str, Any],
    source: str,
    site_layout: bool,
) -> list[Figure]:
    how = f"safety and bus threads at SCHED_FIFO {priority}" if rt else "no real-time priority"
    how += (
        ", the safety process on a core of its own, the uplinks at their unit's Nice on the "
        "others, broker and centres at nice 19 (off the box on a site)"
        if site_layout
        else ", every process on every core, broker, centres and uplinks at normal priority"
    )
    origin = (
        "appended to the event log by another process"
        if source == "writer"
        else "stored by the safety process's own recorder"
    )
    p99_idle, p99_flooded = percentile(idle, 99), percentile(flooded, 99)
    channels = seen.get("uplinks") or {}
    forwarded = ", ".join(
        f"{name} connected={state.get('connected')} pending={state.get('pending')}"
        for name, state in sorted(channels.items())
    )
    # The delivery statistics (gateway.uplinks.delivery) ran in the uplinks process all along:
    # the alarms of the trials are the ones they time.
    delivery = ((seen.get("delivery") or {}).get("channels")) or {}
    timed = ", ".join(
        f"{name} {d['7d']['count']} alarm-class acks p95 {d['7d']['p95_s']} s"
        for name, d in sorted(delivery.items())
    )
    return [
        Figure(
            f"reaction_idle_p99_{tag}",
            p99_idle * 1000,
            "ms",
            f"no uplinks, {how}, p99",
            3,
            samples=tuple(x * 1000 for x in idle),
        ),
        Figure(
            f"reaction_flooded_p99_{tag}",
            p99_flooded * 1000,
            "ms",
            f"uplinks process flooded with {flood_per_s} events/s ({origin}), {how}, p99 "
            f"(uplinks at the end: {forwarded or 'no report'}; delivery statistics: "
            f"{timed or 'none reported'})",
            3,
            samples=tuple(x * 1000 for x in flooded),
        ),
        Figure(f"reaction_flooded_median_{tag}", median(flooded) * 1000, "ms", "same, median", 3),
        Figure(
            f"reaction_flooded_ratio_{tag}",
            p99_flooded / p99_idle,
            "x",
            f"flooded p99 / idle p99, {how}" + (" [target <= 1.10]" if tag == "rt" else ""),
            2,
        ),
    ]


def unit_settings(unit: str, key: str) -> list[str]:
    """Every ``key=`` value of a shipped systemd unit: the bench uses what systemd would."""
    path = Path(__file__).resolve().parent.parent / "config" / "systemd" / unit
    return [
        line.split("=", 1)[1].strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"{key}=")
    ]


def unit_setting(unit: str, key: str) -> str:
    values = unit_settings(unit, key)
    if not values:
        raise RuntimeError(f"{unit}: no {key}=")
    return values[-1]


def realtime_priority() -> int:
    """The safety unit's GASGUARD_RT_PRIORITY (its safety thread and bus pollers)."""
    for line in unit_settings("gasguard-safety.service", "Environment"):
        if line.startswith("GASGUARD_RT_PRIORITY="):
            return int(line.split("=", 1)[1])
    raise RuntimeError("gasguard-safety.service sets no GASGUARD_RT_PRIORITY")


def _renice(pids: list[int], nice: int) -> None:
    for pid in pids:
        os.setpriority(os.PRIO_PROCESS, pid, nice)


def _pin(pids: list[int], where: set[int]) -> None:
    for pid in pids:
        os.sched_setaffinity(pid, where)


def can_use_realtime(priority: int) -> bool:
    """Whether this process may take SCHED_FIFO (root, or RLIMIT_RTPRIO)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def _bus_specs() -> list[BusSpec]:
    """One emulated bus per reaction detector, one detector on each, gas normal."""
    return [
        BusSpec(d.setting.baud, d.setting.parity, d.setting.stop_bits, 0.001,
                (DetectorSpec(ADDRESS, d.setting.profile, NORMAL_LEL),))
        for d in DETECTORS
    ]  # fmt: skip


def _spawn(*args: str, nice: int = 0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _renice([proc.pid], nice)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def _site(directory: Path, emu: EmulatorProcess, poll_period_s: float, extra: str = "") -> Config:
    buses = [
        SiteBus(
            f"bus{i}",
            emu.paths[i],
            d.setting.baud,
            d.setting.parity,
            ((d.name, ADDRESS, d.setting.profile),),
        )
        for i, d in enumerate(DETECTORS)
    ]
    cfg = load_config(write_site_config(directory, buses, comm_fault_timeout_s=2.0, extra=extra))
    return dataclasses.replace(
        cfg, timings=dataclasses.replace(cfg.timings, poll_period_s=poll_period_s)
    )


@contextlib.contextmanager
def _flood_writer(
    events_db: Path, per_s: int, nice: int = 0, where: set[int] | None = None
) -> Iterator[None]:
    """``per_s`` events a second appended to the event log by another process
    (``bench.flood_writer``): the uplinks forward them, the safety process does not see them."""
    if per_s <= 0:
        yield
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.flood_writer", str(events_db), str(per_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    _renice([proc.pid], nice)
    if where is not None:
        _pin([proc.pid], where)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"flooding":
            raise RuntimeError("the flood writer did not start")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # stuck in a busy wait at nice 19: it only writes
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def _flood(controller: Controller, per_s: int) -> Iterator[None]:
    """Put ``per_s`` operator events a second on the recorder's queue (in 10 ms batches), as a
    burst of site activity would: each is stored, queued in the outbox and sent up."""
    stop = threading.Event()

    def pump() -> None:
        batch = max(1, per_s // 100)
        while not stop.wait(0.01):
            now = time.time()
            for _ in range(batch):
                event = Event("operator.silence", "site", time.monotonic(), {"operator": "bench"})
                controller.recorder_inbox.put((now, event))

    thread = threading.Thread(target=pump, name="bench-flood", daemon=True)
    if per_s > 0:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if per_s > 0:
            thread.join(2)


def run(
    out: TextIO,
    *,
    trials: int = 500,
    poll_period_s: float = 0.03,
    travel_s: float = 0.01,
    baseline_reads: int = 200,
) -> list[Figure]:
    """Run ``trials`` alarm -> valve-closed trials; print and return the figures."""
    if trials < 1 or baseline_reads < 1:
        raise ValueError(f"trials {trials!r} and baseline_reads {baseline_reads!r} must be >= 1")
    if not 0.005 <= poll_period_s <= 10.0:
        raise ValueError(f"poll_period_s {poll_period_s!r} is not allowed: 0.005-10 s")
    profiles = load_profiles(default_profiles_dir())
    note(
        out,
        f"(b) reaction: {trials} trials, whole Controller, poll period {poll_period_s:g} s, "
        "emulator in another process, mock pins",
    )
    with (
        _quiet_gasguard_logs(),
        tempfile.TemporaryDirectory(prefix="gasguard-bench-") as tmp,
        EmulatorProcess(_bus_specs()) as emu,
    ):
        base = serial_baseline(emu, 0, profiles[DETECTORS[0].setting.profile], baseline_reads)
        cfg = _site(Path(tmp), emu, poll_period_s)
        reactions, from_first, out_of_order = _trials(emu, cfg, profiles, trials, travel_s)
    figures = [
        Figure(
            "reaction_median",
            median(reactions) * 1000,
            "ms",
            "confirming alarm reply's last byte -> valve coil pin de-energised, median",
            decimals=3,
        ),
        Figure(
            "reaction_p99",
            percentile(reactions, 99) * 1000,
            "ms",
            "same, 99th percentile (nearest rank) [target <= 5 ms]",
            decimals=3,
        ),
        Figure("reaction_max", max(reactions) * 1000, "ms", "same, worst trial", decimals=3),
        Figure(
            "reaction_from_first_alarm_median",
            median(from_first) * 1000,
            "ms",
            "first alarm reply -> coil de-energised, median (adds the confirming poll)",
            decimals=3,
        ),
        Figure(
            "reaction_serial_baseline_median",
            median(base) * 1000,
            "ms",
            "baseline: reply's last byte -> bare minimalmodbus read returned, median",
            decimals=3,
        ),
        Figure(
            "reaction_serial_baseline_p99",
            percentile(base, 99) * 1000,
            "ms",
            "baseline, 99th percentile",
            decimals=3,
        ),
        Figure("reaction_trials", len(reactions), "trials", "trials measured", decimals=0),
        Figure(
            "reaction_out_of_order",
            out_of_order,
            "trials",
            "trials with the pin edge before the emulator's reply stamp (taken just after its "
            "write: a few, by < 0.5 ms, is that stamp's lag)",
            decimals=0,
        ),
    ]
    for fig in figures:
        emit(out, fig)
    return figures


def _trials(
    emu: EmulatorProcess,
    cfg: Config,
    profiles: dict[str, Profile],
    trials: int,
    travel_s: float,
    flood_per_s: int = 0,
    *,
    realtime: bool = False,
    seen: dict[str, Any] | None = None,
    flood_from: str = "recorder",
    flood_nice: int = 0,
    cpus: set[int] | None = None,
    flood_cpus: set[int] | None = None,
    flood: FloodStarter | None = None,
) -> tuple[list[float], list[float], int]:
    # As the unit places the safety process: on its own core (threads inherit the affinity).
    before = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # the threads started below inherit it
    try:
        return _run_trials(
            emu,
            cfg,
            profiles,
            trials,
            travel_s,
            flood_per_s,
            seen,
            flood_from,
            flood_nice,
            flood_cpus,
            realtime_priority() if realtime else None,
            flood,
        )
    finally:
        os.sched_setaffinity(0, before)


def _run_trials(
    emu: EmulatorProcess,
    cfg: Config,
    profiles: dict[str, Profile],
    trials: int,
    travel_s: float,
    flood_per_s: int,
    seen: dict[str, Any] | None,
    flood_from: str,
    flood_nice: int,
    flood_cpus: set[int] | None,
    priority: int | None,
    flood: FloodStarter | None = None,
) -> tuple[list[float], list[float], int]:
    factory = MockFactory()
    mechanism = ValveMechanism(
        factory, cfg.valves[0], travel_s, hand_reopen=False, start_closed=True
    ).start()
    coil = CoilHistory(factory.pin(VALVE_PIN))
    # As the unit runs it: the safety thread and the bus pollers at SCHED_FIFO, the rest not.
    controller = Controller(cfg, pin_factory=factory, simulated=True, realtime_priority=priority)
    reactions: list[float] = []
    from_first: list[float] = []
    out_of_order = 0
    try:
        controller.start()
        _wait(controller.first_poll_done.is_set, STEP_TIMEOUT_S, "the first complete poll")
        _reopen(controller, coil)
        flooding = contextlib.ExitStack()
        if flood is not None:  # another benchmark's own flood (bench.socket_flood)
            flooding.enter_context(flood(controller))
        elif flood_from == "writer":
            flooding.enter_context(_flood_writer(controller.events_path, flood_per_s, flood_nice))
        else:
            flooding.enter_context(_flood(controller, flood_per_s))
        for i in range(trials):
            bus = i % len(DETECTORS)
            profile = profiles[DETECTORS[bus].setting.profile]
            time.sleep(2 * travel_s)  # the valve body has opened: a kitchen cooking normally
            t_set = time.monotonic()
            emu.set_gas(bus, ADDRESS, ALARM_LEL)
            _wait(lambda: not coil.energised, STEP_TIMEOUT_S, "valve closing on an alarm")
            emu.set_gas(bus, ADDRESS, NORMAL_LEL)
            closed_at = coil.first_fall_after(t_set)
            ends: list[float] = []
            for _ in range(50):  # the emulator records an exchange just after its last byte
                ends = _alarm_reply_ends(emu.exchanges(bus, since=t_set - 1.0), profile, t_set)
                if len(ends) >= 2:
                    break
                time.sleep(0.01)
            if closed_at is None or len(ends) < 2:
                raise RuntimeError(
                    f"trial {i}: coil fall {closed_at}, {len(ends)} alarm replies after the gas"
                )
            reaction = closed_at - ends[1]
            if reaction < 0:
                out_of_order += 1
            reactions.append(reaction)
            from_first.append(closed_at - ends[0])
            _reopen(controller, coil)
        flooding.close()
        if seen is not None:
            status = controller.status()
            seen["uplinks"] = status.get("uplinks")
            seen["delivery"] = status.get("delivery")
    finally:
        controller.stop()
        mechanism.stop()
        factory.close()
    return reactions, from_first, out_of_order
