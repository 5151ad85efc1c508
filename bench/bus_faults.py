"""(a2) The poller on a faulty bus: t3.5 kept after every frame, and the cost of a silent detector.

1. **Silence before every request under faults.** ``DetectorBus`` polls 8 detectors against
   emulated detectors in another process while the benchmark injects CRC errors (one spoiled
   reply every ~0.3 s), one silent detector (timeouts) and one detector whose reply straddles
   the master's reply timeout: it starts a few characters before the master gives up and ends
   after, so the master sees a late reply it must not talk over. For every request the emulator
   saw, the silence since the end of the last reply that had begun before it
   (``request_silences``) is compared with t3.5; the shortest must be >= 1.0 x t3.5.
2. **A silent detector on a busy bus.** 16 detectors at 9600 8N1 with a 0.5 s period (~96 %
   busy, as ``check-config`` reports): the healthy detectors' update rate (intervals between
   their readings counted in whole periods) with one detector silent, against the same with
   every detector answering, in the same run.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from typing import TextIO

from bench import Figure, emit, median, note
from bench.emulator_proc import BusSpec, DetectorSpec, EmulatorProcess
from bench.poll import PollSetting, bench_bus, bench_detectors
from gateway.core.model import CommFailure, Reading
from gateway.drivers.modbus_bus import DetectorBus
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.rtu import READ_REQUEST_BYTES, char_time, t35
from gateway.sim.emulator import request_silences

SETTINGS = (
    PollSetting(9600, "N", 1, "generic-cn-kitchen"),
    PollSetting(19200, "E", 1, "honeywell-sensepoint-xcd"),
)
TURNAROUND_S = 0.001
FAULT_TIMEOUT_S = 0.05
LATE, SILENT = 1, 2  # addresses of the misbehaving detectors in part 1
CRC_EVERY_S = 0.3
LATE_CHANGE_EVERY_S = 0.5
BUSY_PERIOD_S = 0.5


def late_delays(s: PollSetting, profile: Profile, timeout_s: float) -> list[float]:
    """Reply delays that put the reply's first byte 1 .. n-1 characters before the master's
    timeout, so each reply straddles it. The emulator starts a reply t3.5 after the request's
    wire time, plus its turnaround and the delay, and releases byte i one character later."""
    c = char_time(s.baud, s.parity, s.stop_bits)
    reply = 5 + 2 * profile.block[1]
    before = READ_REQUEST_BYTES * c + t35(s.baud, s.parity, s.stop_bits) + TURNAROUND_S + c
    return [timeout_s - j * c - before for j in range(1, reply)]


def faulted_run(
    emu: EmulatorProcess, bus: int, s: PollSetting, profile: Profile, seconds: float
) -> tuple[list[float], int, int]:
    """Poll ``bus`` under injected faults for ``seconds``; the silences before every request,
    the stray bytes the poller waited out and the readings it delivered."""
    addresses = list(range(1, 9))
    delivered: queue.SimpleQueue[Reading | CommFailure] = queue.SimpleQueue()
    poller = DetectorBus(
        bench_bus(emu.paths[bus], s, FAULT_TIMEOUT_S, retries=1),
        bench_detectors(profile, addresses),
        0.25,
        delivered.put,
    )
    emu.misbehave(bus, SILENT, silent=True)
    delays = late_delays(s, profile, FAULT_TIMEOUT_S)
    rng = random.Random(11)
    stop = threading.Event()

    def inject() -> None:
        next_late = 0.0
        while not stop.wait(CRC_EVERY_S):
            emu.misbehave(bus, rng.choice(addresses[2:]), corrupt_crc=1)
            if time.monotonic() >= next_late:
                emu.misbehave(bus, LATE, reply_delay_s=rng.choice(delays))
                next_late = time.monotonic() + LATE_CHANGE_EVERY_S

    emu.clear(bus)
    injector = threading.Thread(target=inject, name="bench-faults", daemon=True)
    poller.start()
    injector.start()
    try:
        time.sleep(seconds)
    finally:
        stop.set()
        injector.join()
        poller.stop()
        emu.misbehave(bus, SILENT, silent=False)
        emu.misbehave(bus, LATE, reply_delay_s=0.0)
    readings = 0
    while not delivered.empty():
        if isinstance(delivered.get_nowait(), Reading):
            readings += 1
    return request_silences(emu.exchanges(bus)), poller.stats.stray_bytes, readings


def healthy_rate(
    emu: EmulatorProcess, bus: int, s: PollSetting, profile: Profile, seconds: float, silent: bool
) -> tuple[float, float]:
    """The healthy detectors' (all but address 1) update rate as a share of the configured one,
    with address 1 silent or not: per detector, the intervals between its readings, each
    counted in whole periods (a 2.1-period interval is one cycle missed); and the longest
    interval, in periods."""
    addresses = list(range(1, 17))
    emu.misbehave(bus, 1, silent=silent)
    delivered: queue.SimpleQueue[Reading | CommFailure] = queue.SimpleQueue()
    poller = DetectorBus(
        bench_bus(emu.paths[bus], s, 0.2, retries=1),
        bench_detectors(profile, addresses),
        BUSY_PERIOD_S,
        delivered.put,
    )
    poller.start()
    try:
        time.sleep(1.0)  # the first cycles, and the silent one's first failures
        while not delivered.empty():
            delivered.get_nowait()
        time.sleep(seconds)
        times: dict[str, list[float]] = {}
        while not delivered.empty():
            item = delivered.get_nowait()
            if isinstance(item, Reading) and item.detector != "det-1":
                times.setdefault(item.detector, []).append(item.at)
    finally:
        poller.stop()
        emu.misbehave(bus, 1, silent=False)
    intervals = periods = 0
    longest = 0.0
    for ats in times.values():
        for a, b in itertools.pairwise(ats):
            intervals += 1
            longest = max(longest, (b - a) / BUSY_PERIOD_S)
            periods += max(1, round((b - a) / BUSY_PERIOD_S))
    if not intervals:
        raise RuntimeError("busy bus: no healthy detector was read twice")
    return intervals / periods, longest


def run(out: TextIO, *, seconds: float = 12.0, busy_seconds: float = 12.0) -> list[Figure]:
    if seconds <= 0 or busy_seconds <= 0:
        raise ValueError(f"seconds {seconds!r} and busy_seconds {busy_seconds!r} must be > 0")
    profiles = load_profiles(default_profiles_dir())
    figures: list[Figure] = []
    buses = [
        BusSpec(
            s.baud,
            s.parity,
            s.stop_bits,
            TURNAROUND_S,
            tuple(DetectorSpec(a, s.profile) for a in range(1, 9)),
        )
        for s in SETTINGS
    ]
    busy = PollSetting(9600, "N", 1, "generic-cn-kitchen")
    buses.append(
        BusSpec(
            busy.baud,
            busy.parity,
            busy.stop_bits,
            TURNAROUND_S,
            tuple(DetectorSpec(a, busy.profile) for a in range(1, 17)),
        )
    )
    note(
        out,
        f"(a2) faulty bus: 8 detectors, {seconds:g} s each setting, reply timeout "
        f"{FAULT_TIMEOUT_S * 1000:g} ms, a CRC error every {CRC_EVERY_S:g} s, one silent "
        "detector, one whose replies straddle the timeout",
    )
    with EmulatorProcess(buses) as emu:
        for i, s in enumerate(SETTINGS):
            silences, stray, readings = faulted_run(emu, i, s, profiles[s.profile], seconds)
            if not silences or readings == 0:
                raise RuntimeError(f"{s.tag}: no exchanges or no readings under faults")
            quiet = t35(s.baud, s.parity, s.stop_bits)
            t = s.tag
            for fig in (
                Figure(
                    f"faults_min_silence_t35_ratio_{t}",
                    min(silences) / quiet,
                    "x",
                    f"{t}: shortest silence before a request / t3.5 under CRC errors, timeouts "
                    f"and late replies, {len(silences)} requests [target >= 1.00]",
                ),
                Figure(
                    f"faults_median_silence_t35_ratio_{t}",
                    median(silences) / quiet,
                    "x",
                    f"{t}: median silence before a request / t3.5",
                ),
                Figure(
                    f"faults_stray_bytes_{t}",
                    stray,
                    "bytes",
                    f"{t}: late-reply bytes the poller waited out before its next request "
                    "(0 would mean no late reply was tested)",
                    decimals=0,
                ),
            ):
                figures.append(emit(out, fig))
        note(
            out,
            f"(a2) busy bus: 16 detectors at 9600 8N1, 0.5 s period, timeout 0.2 s, "
            f"{busy_seconds:g} s with all answering, then {busy_seconds:g} s with one silent",
        )
        profile = profiles[busy.profile]
        last = len(buses) - 1
        answering, _ = healthy_rate(emu, last, busy, profile, busy_seconds, silent=False)
        one_silent, longest = healthy_rate(emu, last, busy, profile, busy_seconds, silent=True)
        for fig in (
            Figure(
                "busy_bus_update_rate_answering",
                answering,
                "x",
                "healthy detectors' update rate / the configured one, all answering",
                decimals=3,
            ),
            Figure(
                "busy_bus_update_rate_one_silent",
                one_silent,
                "x",
                "the same with one detector silent",
                decimals=3,
            ),
            Figure(
                "busy_bus_update_rate_ratio",
                one_silent / answering,
                "x",
                "update rate with one detector silent / all answering "
                "[target >= 0.95; 0.75 before issue 11]",
                decimals=3,
            ),
            Figure(
                "busy_bus_longest_interval_one_silent",
                longest,
                "periods",
                "longest interval between a healthy detector's readings with one silent "
                "(a try at the silent one where it does not fit delays a cycle, never drops it)",
            ),
        ):
            figures.append(emit(out, fig))
    return figures
