"""The safety core's vocabulary: what goes in (readings, time, operator actions) and what comes
out (valve commands, lights, sounder, events).

Everything here is plain immutable data. No I/O, no threads, no clocks: the caller supplies the
time (``time.monotonic()`` seconds) with every input, so the core can be driven by tests and
property checks exactly as by the running controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any


class Level(IntEnum):
    """Alarm level of one reading or one detector, ordered so ``max()`` gives the worst."""

    NORMAL = 0
    LOW = 1
    HIGH = 2


class Light(Enum):
    """What one indicator light should show. Flash rates follow GB 16808 §4.2.2."""

    OFF = "off"
    ON = "on"
    FLASH_ALARM = "flash-alarm"  # red: 1 Hz, 0.5 s on (>= 1 Hz, on-time >= 0.25 s)
    FLASH_FAULT = "flash-fault"  # yellow: 0.5 Hz, 1 s on (>= 0.2 Hz)


class Gas(Enum):
    NATURAL_GAS = "natural-gas"
    LPG = "lpg"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """One valid reply from one detector, decoded by its profile.

    ``lel`` is the concentration in %LEL, or ``None`` when the reply carried no usable value
    (NaN, garbage): that is a sensor fault, never a zero. ``own_alarm`` is the alarm level the
    detector itself reports in its status register; ``fault`` is its own fault text, if any.
    """

    detector: str
    at: float
    lel: float | None
    own_alarm: Level = Level.NORMAL
    fault: str | None = None


@dataclass(frozen=True, slots=True)
class CommFailure:
    """A poll of one detector that produced no valid reply (timeout, CRC, wrong id, short)."""

    detector: str
    at: float
    error: str


@dataclass(frozen=True, slots=True)
class ValveFeedback:
    """The position contact of one valve as read now: ``closed`` is None without a contact."""

    valve: str
    at: float
    closed: bool | None


@dataclass(frozen=True, slots=True)
class FanFeedback:
    """The run-feedback contact of one exhaust fan as read now: ``running`` True or False."""

    fan: str
    at: float
    running: bool


class PowerSignal(Enum):
    """A power-supply contact: the mains has failed, or the backup battery is low."""

    MAINS_FAILED = "mains-failed"
    BATTERY_LOW = "battery-low"


@dataclass(frozen=True, slots=True)
class PowerInput:
    """One power contact as read now (not yet debounced: the core debounces it)."""

    signal: PowerSignal
    at: float
    active: bool


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """The local manual reset (reset button held >= 2 s, or the local console)."""

    at: float
    operator: str = "reset-button"


@dataclass(frozen=True, slots=True)
class SilenceRequest:
    """Silence the sounder until the next new alarm or fault. Resets nothing."""

    at: float
    operator: str = "silence-button"


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes: lets the core raise comm faults and valve-feedback faults on time."""

    at: float


@dataclass(frozen=True, slots=True)
class OrphanLatchClear:
    """A technician at the local console clears an orphan latch: an alarm latched on a physical
    sensor that the configuration no longer names (see ``SafetyCore``). ``latch`` is the old
    detector's name or its sensor (``bus:address``); ``reason`` is required and recorded."""

    at: float
    latch: str
    operator: str
    reason: str


MAX_INHIBIT_S = 3600.0  # a calibration inhibit ends by itself after at most one hour
MAX_SOUNDER_TEST_S = 30.0


@dataclass(frozen=True, slots=True)
class InhibitRequest:
    """Inhibit one detector's alarms for calibration, for ``seconds`` (at most one hour; 0 ends
    it now). While inhibited its alarms are reported as test alarms and do not latch or close
    valves; its faults still do (fail safe). When it ends, gas still present latches at once."""

    at: float
    detector: str
    seconds: float
    operator: str


@dataclass(frozen=True, slots=True)
class ValveTestRequest:
    """Close one valve now to prove it closes (the feedback confirms it, with the time taken).
    Like any closure it locks out: the gas comes back only by the manual reset."""

    at: float
    valve: str
    operator: str


@dataclass(frozen=True, slots=True)
class SounderTestRequest:
    """Sound the sounder for ``seconds`` (1 to 30). Changes nothing else."""

    at: float
    seconds: float
    operator: str


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """The event log's state, from the recorder: ``error`` says what is wrong (None: healthy).
    A store fault is a fault like any other for the staff and the centres (yellow light,
    sounder, upstream), but never a reason to close or keep closed a valve: gas detection and
    the valves do not depend on the SD card."""

    at: float
    error: str | None


@dataclass(frozen=True, slots=True)
class ServiceWarnings:
    """The detectors that need service today (calibration overdue, end of life), by name, with
    why; from the controller's daily check. A warning fault: the yellow light flashes, nothing
    sounds and no valve changes."""

    at: float
    warnings: tuple[tuple[str, str], ...]


Input = (
    Reading
    | CommFailure
    | ValveFeedback
    | ResetRequest
    | SilenceRequest
    | InhibitRequest
    | ValveTestRequest
    | SounderTestRequest
    | StoreHealth
    | FanFeedback
    | PowerInput
    | ServiceWarnings
    | OrphanLatchClear
    | Tick
)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One state change worth recording and forwarding.

    ``kind`` is a dotted name (``alarm.raised``, ``fault.cleared``, ``valve.closed`` ...),
    ``source`` the detector, valve or ``site`` it concerns, ``at`` the monotonic time.
    """

    kind: str
    source: str
    at: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outputs:
    """What the drivers must show after one input. ``valves_open`` maps valve name to the
    commanded state: True = may be open (energised / not tripped), False = closed."""

    valves_open: dict[str, bool]
    sounder: bool
    red: Light
    yellow: Light
    green: Light
    events: tuple[Event, ...] = ()
    fans_on: dict[str, bool] = field(default_factory=dict)  # fan name -> relay on


# ---------------------------------------------------------------------------------------------
# The plan the core enforces (built from the validated configuration)
# ---------------------------------------------------------------------------------------------


def sensor_id(bus: str, address: int) -> str:
    """The physical sensor a detector entry stands for: its RS-485 line and Modbus address.
    A latch belongs to this, never to the detector's name."""
    return f"{bus}:{address}"


LATCH_KEY_SEP = "@"  # names and bus names never contain it (config.NAME_RE)


def latch_key(name: str, sensor: str) -> str:
    """How a latch is stored (latch file, event log): ``name@bus:address``. The sensor decides
    where the latch belongs at the next start; the name is what people are shown. A plan built
    by hand (no sensor) stores the name alone."""
    return f"{name}{LATCH_KEY_SEP}{sensor}" if sensor else name


def split_latch_key(key: str) -> tuple[str, str | None]:
    """(name, sensor) of a stored latch; sensor None for a latch stored by name only (written
    by a gasguard before latches belonged to sensors)."""
    name, sep, sensor = key.partition(LATCH_KEY_SEP)
    return (name, sensor) if sep and sensor else (key, None)


@dataclass(frozen=True, slots=True)
class DetectorPlan:
    """One detector entry. ``sensor`` is the physical sensor (``sensor_id(bus, address)``) and
    ``profile`` what its numbers mean (the profile's name and fingerprint); a plan built by
    hand without them stands for a sensor named like the detector."""

    name: str
    zone: str
    low_lel: float
    high_lel: float
    range_lel: float = 100.0  # a value above this is over-range and counts as a high alarm
    sensor: str = ""
    profile: str = ""

    @property
    def sensor_key(self) -> str:
        return self.sensor or self.name


@dataclass(frozen=True, slots=True)
class ValvePlan:
    name: str
    zones: tuple[str, ...]
    has_feedback: bool
    close_confirm_s: float = 2.0


FAN_RUN_ON_S = 300.0  # an exhaust fan runs this long after its zone's alarm was reset
FAN_START_CONFIRM_S = 10.0  # a fan with run feedback must report running within this
POWER_DEBOUNCE_S = 2.0  # a power contact must hold its new state this long to count


@dataclass(frozen=True, slots=True)
class FanPlan:
    """One exhaust fan (GB 50028): it runs while any detector of its ``zones`` is alarming or
    has a latched alarm, and for ``run_on_s`` after; on a detector's comm fault only if
    ``on_comm_fault``. With run feedback, not running ``start_confirm_s`` after it was started
    (or stopping while it should run) is a fan fault."""

    name: str
    zones: tuple[str, ...]
    run_on_s: float = FAN_RUN_ON_S
    on_comm_fault: bool = False
    has_feedback: bool = False
    start_confirm_s: float = FAN_START_CONFIRM_S


@dataclass(frozen=True, slots=True)
class PowerPlan:
    """Which power contacts are wired. A mains failure is a fault; a low battery is a fault
    that closes every valve while there is still power to drive it closed."""

    mains: bool = False
    battery: bool = False
    debounce_s: float = POWER_DEBOUNCE_S


@dataclass(frozen=True, slots=True)
class SafetyPlan:
    """Detectors, valves, fans, power contacts and timings. Defaults are the safety-relevant
    ones: comm fault after 10 s of silence (GB 16808 allows at most 100 s) and an alarm
    confirmed by 2 consecutive readings (GB 16808-2025)."""

    detectors: tuple[DetectorPlan, ...]
    valves: tuple[ValvePlan, ...]
    comm_fault_timeout_s: float = 10.0
    confirm_count: int = 2
    fans: tuple[FanPlan, ...] = ()
    power: PowerPlan = PowerPlan()
    # Zones where one detector's low alarm sounds and goes upstream but closes no valve: a
    # high alarm at any detector, low alarms at two, or any detector's fault does.
    two_detector_zones: frozenset[str] = frozenset()
