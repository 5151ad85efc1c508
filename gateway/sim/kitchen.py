"""A simulated kitchen: everything around the controller, nothing of the controller itself.

Two RS-485 buses on pseudo-terminals with emulated detectors of two profiles on them
(``BusEmulator``), gpiozero mock pins for the valves, lights, sounder and buttons, a simulated
valve body per valve (``ValveMechanism``) that drives the position contact, and a hood fan with
run feedback and a power supply with its two contacts (``SiteIoSim``). The controller runs
unchanged against it: real pyserial, real minimalmodbus, real gpiozero code.

Used by ``gasguard demo``, the integration tests and the benchmarks. It is a simulation and says
so: the status it produces carries ``"simulated": true``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from gateway import configfile
from gateway.config import Config, load_config
from gateway.profiles import default_profiles_dir, load_profiles
from gateway.sim.emulator import BusEmulator, EmulatedDetector
from gateway.sim.site_io import SiteIoSim
from gateway.sim.valve_mechanism import ValveMechanism

RESET_PIN = configfile.EXAMPLE_PINS["reset"]
SILENCE_PIN = configfile.EXAMPLE_PINS["silence"]


@dataclass(frozen=True, slots=True)
class SimDetector:
    name: str
    zone: str
    bus: str
    address: int
    profile: str
    gas: str


@dataclass(frozen=True, slots=True)
class SimValve:
    name: str
    zones: tuple[str, ...]
    output_pin: int
    feedback_pin: int


@dataclass(frozen=True, slots=True)
class SimBus:
    name: str
    baud: int
    parity: str


DEFAULT_BUSES = (SimBus("bus0", 9600, "N"), SimBus("bus1", 19200, "E"))
DEFAULT_DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
    SimDetector("steamer", "hot-kitchen", "bus0", 3, "generic-cn-kitchen", "natural-gas"),
    SimDetector("fryer", "hot-kitchen", "bus1", 1, "honeywell-sensepoint-xcd", "natural-gas"),
    SimDetector("lpg-store", "lpg-room", "bus1", 2, "honeywell-sensepoint-xcd", "lpg"),
)
# A valve is configured only when one of its zones has a detector (the config demands it).
DEFAULT_VALVES = (
    SimValve(
        "main-inlet",
        ("hot-kitchen",),
        configfile.EXAMPLE_PINS["valve"],
        configfile.EXAMPLE_PINS["feedback"],
    ),
    SimValve("lpg-manifold", ("lpg-room",), 16, 26),
)
MAIN_VALVE = "main-inlet"
# The hood over the hot kitchen, with a run-feedback contact; power contacts wired.
DEFAULT_FANS = (configfile.FanSpec("hood", ("hot-kitchen",), run_on_s=60.0),)


class SimulatedKitchen:
    """Build with ``SimulatedKitchen(workdir)``, then ``start()``, ``config()``, and drive it
    with ``set_gas()``, ``press_reset()`` and friends; ``stop()`` at the end.

    ``travel_s`` is how long the simulated valve takes to move (the contact follows then).
    ``poll_period_s``, ``comm_fault_timeout_s`` go into the generated config.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        buses: tuple[SimBus, ...] = DEFAULT_BUSES,
        detectors: tuple[SimDetector, ...] = DEFAULT_DETECTORS,
        valves: tuple[SimValve, ...] = DEFAULT_VALVES,
        travel_s: float = 0.3,
        poll_period_s: float = 0.5,
        comm_fault_timeout_s: float = 5.0,
        bus_timeout_s: float = 0.1,
        turnaround_s: float = 0.001,
        extra_config: str = "",
        fans: tuple[configfile.FanSpec, ...] = DEFAULT_FANS,
        power: configfile.PowerSpec | None = configfile.PowerSpec(),  # noqa: B008 - frozen
    ) -> None:
        self.workdir = Path(workdir)
        self.bus_specs = buses
        self.detector_specs = detectors
        zones = {d.zone for d in detectors}
        self.valve_specs = tuple(v for v in valves if zones & set(v.zones))
        self.travel_s = travel_s
        self.poll_period_s = poll_period_s
        self.comm_fault_timeout_s = comm_fault_timeout_s
        self.bus_timeout_s = bus_timeout_s
        self.turnaround_s = turnaround_s
        self.extra_config = extra_config  # appended to the generated TOML (e.g. [uplink.*])
        self.fan_specs = tuple(f for f in fans if zones & set(f.zones))
        self.power_spec = power
        self.site_io: SiteIoSim | None = None
        self.factory = MockFactory()
        self.emulators: dict[str, BusEmulator] = {}
        self.detectors: dict[str, EmulatedDetector] = {}
        self.valves: dict[str, ValveMechanism] = {}
        self.config_path = self.workdir / "gasguard.toml"
        self._config: Config | None = None
        self._coil_t0: dict[str, float] = {}

    # -- set-up ------------------------------------------------------------------------------

    def start(self) -> Config:
        """Start the emulated buses, write the config, start the valve body; return the config."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        profiles = load_profiles(default_profiles_dir())
        ports: dict[str, str] = {}
        for bus in self.bus_specs:
            dets = []
            for d in self.detector_specs:
                if d.bus == bus.name:
                    det = EmulatedDetector(address=d.address, profile=profiles[d.profile])
                    self.detectors[d.name] = det
                    dets.append(det)
            emulator, path = BusEmulator.on_pty(
                bus.baud,
                bus.parity,
                1,
                dets,
                turnaround_s=self.turnaround_s,
                link=self.workdir / f"{bus.name}.tty",
            )
            emulator.start()
            self.emulators[bus.name] = emulator
            ports[bus.name] = path
        self.config_path.write_text(self._config_text(ports), encoding="utf-8")
        self._config = load_config(self.config_path)
        for valve_cfg in self._config.valves:
            body = ValveMechanism(
                self.factory, valve_cfg, self.travel_s, hand_reopen=False, start_closed=True
            )
            body.start()
            self.valves[valve_cfg.name] = body
            coil: Any = self.factory.pin(valve_cfg.output_pin)
            coil.clear_states()
            self._coil_t0[valve_cfg.name] = time.monotonic()
        self.site_io = SiteIoSim(self.factory, self._config.fans, self._config.power).start()
        return self._config

    @property
    def valve(self) -> ValveMechanism:
        """The main valve's simulated body."""
        return self.valves[MAIN_VALVE]

    def _coil(self, valve: str) -> Any:
        spec = next(v for v in self.valve_specs if v.name == valve)
        return self.factory.pin(spec.output_pin)

    def config(self) -> Config:
        if self._config is None:
            raise RuntimeError("start() the kitchen first")
        return self._config

    def _config_text(self, ports: dict[str, str]) -> str:
        return configfile.render(
            configfile.SiteFile(
                site_id="SIM-KITCHEN-01",
                site_name="Simulated kitchen (demo)",
                site_address="nowhere: this is a simulation",
                buses=[
                    configfile.BusSpec(
                        b.name, ports[b.name], b.baud, b.parity, timeout_s=self.bus_timeout_s
                    )
                    for b in self.bus_specs
                ],
                detectors=[
                    configfile.DetectorSpec(d.name, d.zone, d.bus, d.address, d.profile, d.gas)
                    for d in self.detector_specs
                ],
                valves=[
                    configfile.ValveSpec(v.name, v.zones, v.output_pin, v.feedback_pin)
                    for v in self.valve_specs
                ],
                fans=self.fan_specs,
                power=self.power_spec,
                poll_period_s=self.poll_period_s,
                comm_fault_timeout_s=self.comm_fault_timeout_s,
                comment="Generated by gasguard's simulated kitchen. SIMULATION: no real gas, "
                "no real valve.",
                extra=self.extra_config,
            )
        )

    # -- the kitchen's world -----------------------------------------------------------------

    def set_gas(self, detector: str, lel: float) -> float:
        """Gas at one detector; returns the monotonic time it was set."""
        self.detectors[detector].lel = lel
        return time.monotonic()

    def set_all_gas(self, lel: float) -> None:
        for det in self.detectors.values():
            det.lel = lel

    def press_reset(self, hold_s: float = 2.3) -> None:
        """Hold the reset button (to ground) for ``hold_s`` seconds, then release."""
        pin: Any = self.factory.pin(RESET_PIN)
        pin.drive_low()
        time.sleep(hold_s)
        pin.drive_high()

    def press_silence(self) -> None:
        pin: Any = self.factory.pin(SILENCE_PIN)
        pin.drive_low()
        time.sleep(0.1)
        pin.drive_high()

    def _io(self) -> SiteIoSim:
        if self.site_io is None:
            raise RuntimeError("start() the kitchen first")
        return self.site_io

    def set_mains(self, failed: bool) -> None:
        """The mains supply fails (the UPS runs on its battery) or comes back."""
        self._io().mains_failed = failed

    def set_battery(self, low: bool) -> None:
        """The backup battery runs low, or is charged again."""
        self._io().battery_low = low

    def jam_fan(self, fan: str, jammed: bool = True) -> None:
        """The fan's motor does not turn: its run-feedback contact never says running."""
        if jammed:
            self._io().jammed.add(fan)
        else:
            self._io().jammed.discard(fan)

    def fan_relay_on(self, fan: str = "hood") -> bool:
        return self._io().relay_on(fan)

    def valve_coil_energised(self, valve: str = MAIN_VALVE) -> bool:
        return bool(self._coil(valve).state)

    def valve_coil_edges(self, valve: str = MAIN_VALVE) -> list[tuple[float, bool]]:
        """Every edge of the valve's coil output as (monotonic time, energised), oldest first,
        from the mock pin's recorded history (deltas since ``clear_states`` at start-up)."""
        pin = self._coil(valve)
        t = self._coil_t0[valve]
        edges = []
        for state in pin.states[1:]:
            t += state.timestamp
            edges.append((t, bool(state.state)))
        return edges

    def valve_coil_closed_at(self, after: float, valve: str = MAIN_VALVE) -> float | None:
        """When the coil was first de-energised after ``after`` (monotonic), if it was."""
        for t, energised in self.valve_coil_edges(valve):
            if t >= after and not energised:
                return t
        return None

    def stop(self) -> None:
        if self.site_io is not None:
            self.site_io.stop()
        for body in self.valves.values():
            body.stop()
        for emulator in self.emulators.values():
            emulator.stop()
        self.factory.close()
