"""(a) Poll-cycle time of a full bus against the physical floor of the wire.

16 detectors on one bus, polled back to back by ``DetectorBus`` (period far below the cycle, so
each cycle starts as soon as the previous one ends), against emulated detectors in another
process that pace every frame at the line's character time. The floor of one cycle is, summed
over the detectors, what the wire itself needs per poll:

    request wire time + reply wire time + two t3.5 silences + the emulator's turnaround

with ``frame_wire_time`` and ``t35`` from ``gateway.rtu`` (the line timing the emulator paces
by) and the reply size from each profile's ``block``. The same emulator is also
polled by a bare minimalmodbus loop as the baseline. The minimum gap the master left between a
reply and its next request is compared with t3.5: below 1.0 a strict detector would reject it.

Reading the gap figures: the emulator stamps a reply's end just *after* its last write returns
(the gap looks shorter) and a request's start just after its read returns (longer). On a busy
machine the first lags the master's read by 0.1-0.3 ms, more when the emulator's process is
descheduled, so the single shortest gap can read below t3.5 when the wire was right; the median
is printed too. minimalmodbus sleeps t3.5 of 11-bit characters after it has read a reply, so at
8E1 its true margin is zero; ``gap_ms`` in the bus config adds silence on top.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import minimalmodbus
import serial

from bench import Figure, emit, median, note
from bench.emulator_proc import BusSpec, DetectorSpec, EmulatorProcess
from gateway.config import BusConfig, DetectorConfig
from gateway.core.model import CommFailure, Gas, Reading
from gateway.drivers.modbus_bus import PARITY, STOP_BITS, DetectorBus
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.rtu import READ_REQUEST_BYTES, frame_wire_time, t35

BACK_TO_BACK_PERIOD_S = 0.001  # far below any cycle: the next cycle starts when one ends
REPLY_TIMEOUT_S = 0.2
PORT_OPEN_TRIES_S = 3.0  # a pty re-opened with parity may refuse for a moment (see emulator)


@dataclass(frozen=True, slots=True)
class PollSetting:
    """One line setting to measure, with the detector profile typical for it."""

    baud: int
    parity: str
    stop_bits: int
    profile: str

    @property
    def tag(self) -> str:
        return f"{self.baud}_8{self.parity}{self.stop_bits}"


SETTINGS = (
    PollSetting(9600, "N", 1, "generic-cn-kitchen"),
    PollSetting(19200, "E", 1, "honeywell-sensepoint-xcd"),
)


def reply_bytes(profile: Profile) -> int:
    """Bytes of a read reply for ``profile``'s block: address, function, byte count, data, CRC."""
    return 5 + 2 * profile.block[1]


def poll_floor_s(
    profile: Profile, baud: int, parity: str, stop_bits: int, turnaround_s: float
) -> float:
    """The physical floor of one poll of one detector: request and reply on the wire, the two
    t3.5 silences that end them, and the slave's turnaround."""
    return (
        frame_wire_time(READ_REQUEST_BYTES, baud, parity, stop_bits)
        + frame_wire_time(reply_bytes(profile), baud, parity, stop_bits)
        + 2 * t35(baud, parity, stop_bits)
        + turnaround_s
    )


def open_port(path: str, setting: PollSetting) -> serial.Serial:
    deadline = time.monotonic() + PORT_OPEN_TRIES_S
    while True:
        try:
            return serial.Serial(
                port=path,
                baudrate=setting.baud,
                bytesize=serial.EIGHTBITS,
                parity=PARITY[setting.parity],
                stopbits=STOP_BITS[setting.stop_bits],
                timeout=REPLY_TIMEOUT_S,
                exclusive=True,
            )
        except serial.SerialException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def bench_bus(path: str, setting: PollSetting, timeout_s: float, retries: int) -> BusConfig:
    """The benchmarks' bus: ``setting``'s line on ``path``, no extra gap, no kernel RS-485."""
    return BusConfig(
        name="bench",
        port=path,
        baud=setting.baud,
        parity=setting.parity,
        stop_bits=setting.stop_bits,
        timeout_s=timeout_s,
        gap_ms=0.0,
        rs485=False,
        retries=retries,
    )


def bench_detectors(profile: Profile, addresses: Sequence[int]) -> list[DetectorConfig]:
    """One detector ``det-<address>`` of ``profile`` per address, on the benchmarks' bus."""
    return [
        DetectorConfig(f"det-{a}", "bench", "bench", a, profile, Gas.NATURAL_GAS, 20.0, 50.0)
        for a in addresses
    ]


def baseline_cycles(
    path: str, setting: PollSetting, profile: Profile, addresses: Sequence[int], cycles: int
) -> list[float]:
    """Durations (s) of ``cycles`` back-to-back cycles of a bare minimalmodbus loop reading
    every address's block once; one warm-up cycle first."""
    start, count = profile.block
    port = open_port(path, setting)
    try:
        instruments = [minimalmodbus.Instrument(port, a) for a in addresses]
        starts = []
        for _ in range(cycles + 2):  # warm-up cycle, measured cycles, and one more start
            starts.append(time.monotonic())
            for inst in instruments:
                inst.read_registers(start, count, functioncode=profile.function_code)
    finally:
        port.close()
    return [b - a for a, b in itertools.pairwise(starts[1:])]


def gateway_cycles(
    path: str,
    setting: PollSetting,
    profile: Profile,
    addresses: Sequence[int],
    cycles: int,
    warmup: int,
) -> tuple[list[float], int]:
    """Durations (s) of ``cycles`` back-to-back DetectorBus cycles after ``warmup`` cycles (the
    first opens the port), from the starts in ``BusStats.recent_cycles``; and how many
    CommFailures it delivered."""
    bus = bench_bus(path, setting, REPLY_TIMEOUT_S, retries=0)
    delivered: queue.SimpleQueue[Reading | CommFailure] = queue.SimpleQueue()
    poller = DetectorBus(
        bus, bench_detectors(profile, addresses), BACK_TO_BACK_PERIOD_S, delivered.put
    )
    expected_s = (warmup + cycles + 1) * len(addresses) * 0.05
    deadline = time.monotonic() + 10.0 + 3 * expected_s
    poller.start()
    try:
        while poller.stats.cycles < warmup + cycles + 1:
            if time.monotonic() > deadline or not poller.running:
                raise RuntimeError(
                    f"DetectorBus on {path} ran {poller.stats.cycles} cycles, "
                    f"needed {warmup + cycles + 1}"
                )
            time.sleep(0.02)
    finally:
        poller.stop()
    recent = poller.stats.recent_cycles
    starts = [start for k, start in recent][-(cycles + 1) :]
    failures = 0
    while not delivered.empty():
        if isinstance(delivered.get_nowait(), CommFailure):
            failures += 1
    return [b - a for a, b in itertools.pairwise(starts)], failures


def run(
    out: TextIO,
    *,
    detectors: int = 16,
    cycles: int = 15,
    warmup: int = 2,
    turnaround_s: float = 0.001,
    settings: Sequence[PollSetting] = SETTINGS,
) -> list[Figure]:
    """Measure every setting; print and return the figures."""
    if not 1 <= detectors <= 247:
        raise ValueError(f"detectors {detectors!r} is not allowed: 1-247 (Modbus addresses)")
    if cycles < 1 or warmup < 1:
        raise ValueError(f"cycles {cycles!r} and warmup {warmup!r} must both be at least 1")
    profiles = load_profiles(default_profiles_dir())
    addresses = list(range(1, detectors + 1))
    buses = [
        BusSpec(
            s.baud,
            s.parity,
            s.stop_bits,
            turnaround_s,
            tuple(DetectorSpec(a, s.profile) for a in addresses),
        )
        for s in settings
    ]
    figures: list[Figure] = []
    note(
        out,
        f"(a) poll cycle: {detectors} detectors, {cycles} cycles back to back, emulator in "
        f"another process, turnaround {turnaround_s * 1000:g} ms",
    )
    with EmulatorProcess(buses) as emu:
        for i, s in enumerate(settings):
            profile = profiles[s.profile]
            path = emu.paths[i]
            floor = detectors * poll_floor_s(profile, s.baud, s.parity, s.stop_bits, turnaround_s)
            base = baseline_cycles(path, s, profile, addresses, cycles)
            base_gap = emu.min_gap_s(i)
            time.sleep(0.5)  # let the emulator park the idle pty before the port is re-opened
            emu.clear(i)
            cyc, failures = gateway_cycles(path, s, profile, addresses, cycles, warmup)
            gap = emu.min_gap_s(i)
            gaps = emu.gaps_s(i)
            if gap is None or base_gap is None or not gaps:
                raise RuntimeError(f"{s.tag}: the emulator saw no reply followed by a request")
            quiet = t35(s.baud, s.parity, s.stop_bits)
            cycle, base_cycle = median(cyc), median(base)
            t = s.tag
            block = profile.block[1]
            for fig in (
                Figure(
                    f"poll_floor_{t}",
                    floor * 1000,
                    "ms",
                    f"{t} {s.profile} ({block} registers): physical floor of one cycle of "
                    f"{detectors} (frames + 2 t3.5 + turnaround each)",
                ),
                Figure(
                    f"poll_cycle_{t}",
                    cycle * 1000,
                    "ms",
                    f"{t}: DetectorBus cycle, median",
                    samples=_ms(cyc),
                ),
                Figure(
                    f"poll_cycle_ratio_{t}",
                    cycle / floor,
                    "x",
                    f"{t}: DetectorBus cycle / physical floor [target <= 1.10]",
                    decimals=3,
                ),
                Figure(
                    f"poll_baseline_cycle_{t}",
                    base_cycle * 1000,
                    "ms",
                    f"{t}: baseline, bare minimalmodbus loop over the same emulator, median",
                    samples=_ms(base),
                ),
                Figure(
                    f"poll_baseline_ratio_{t}",
                    base_cycle / floor,
                    "x",
                    f"{t}: baseline cycle / physical floor",
                    decimals=3,
                ),
                Figure(
                    f"poll_vs_baseline_{t}",
                    cycle / base_cycle,
                    "x",
                    f"{t}: DetectorBus cycle / bare minimalmodbus cycle",
                ),
                Figure(
                    f"poll_min_gap_{t}",
                    gap * 1000,
                    "ms",
                    f"{t}: shortest silence DetectorBus left between a reply and its next "
                    f"request (t3.5 = {quiet * 1000:.3f} ms)",
                    decimals=3,
                ),
                Figure(
                    f"poll_min_gap_t35_ratio_{t}",
                    gap / quiet,
                    "x",
                    f"{t}: that gap / t3.5 (below 1.00 violates Modbus RTU framing)",
                ),
                Figure(
                    f"poll_gap_median_t35_ratio_{t}",
                    median(gaps) / quiet,
                    "x",
                    f"{t}: median gap / t3.5 (the min is one gap, and the emulator's stamp lags)",
                ),
                Figure(
                    f"poll_baseline_min_gap_t35_ratio_{t}",
                    base_gap / quiet,
                    "x",
                    f"{t}: baseline's shortest gap / t3.5",
                ),
                Figure(
                    f"poll_comm_failures_{t}",
                    failures,
                    "polls",
                    f"{t}: CommFailures during the run (the figures above mean nothing unless 0)",
                    decimals=0,
                ),
            ):
                figures.append(emit(out, fig))
    return figures


def _ms(seconds: Sequence[float]) -> tuple[float, ...]:
    return tuple(x * 1000 for x in seconds)
