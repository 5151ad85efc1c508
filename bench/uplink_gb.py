"""Benchmark: alarm raised -> GB/T 26875.3 centre confirm, over loopback.

The real path after the safety thread: the alarm event is put into the recorder's queue (what
the safety thread does), the recorder stores it (SQLite, fsync), the uplinks' follower (woken by
inotify, as in the uplinks process) takes it into the outbox (SQLite, fsync), the outbox wakes
the GB/T 26875.3 channel, which frames it and sends it to the
test centre over loopback TCP; the clock stops when the centre has sent its confirm of the
part-status frame (the alarm bit). One alarm at a time, ``SAMPLES`` of them.

Prints ``name: value unit`` lines; target p99 <= 50 ms (the standard allows 10 s, the issue
targets <= 1 s end to end).
"""

from __future__ import annotations

import logging
import queue
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from bench import Figure, emit, median, note, percentile
from gateway.core.model import Event
from gateway.store.recorder import Recorder, RecorderItem
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.gb26875.centre import GbCentre, Received
from gateway.uplinks.gb26875.channel import Gb26875Channel
from gateway.uplinks.gb26875.codec import PART_ALARM, Command, PartStatus
from gateway.uplinks.gb26875.config import Gb26875Config
from gateway.uplinks.outbox import Outbox
from gateway.uplinks.service import EventFollower

SAMPLES = 200
WARMUP = 10
TIMEOUT_S = 10.0


def _status() -> dict[str, Any]:
    return {
        "simulated": False,
        "detectors": [{"name": "wok-1", "level": "high", "fault": None}],
        "valves": [],
        "alarms": ["wok-1: high alarm"],
        "faults": [],
    }


def _more_than(items: list[float], n: int) -> bool:
    return len(items) > n


def measure(samples: int = SAMPLES, warmup: int = WARMUP) -> list[float]:
    """Seconds from putting each alarm into the recorder queue to the centre's confirm."""
    if samples < 1 or warmup < 0:
        raise ValueError(f"samples {samples!r} / warmup {warmup!r}: need samples >= 1, warmup >= 0")
    tmp = tempfile.TemporaryDirectory(prefix="gasguard-bench-gb-")
    base = Path(tmp.name)
    confirmed: list[float] = []  # monotonic time of each alarm's confirm
    arrived = threading.Condition()

    def on_frame(r: Received) -> None:
        data = r.data
        if r.answer != "confirm" or r.frame.command != Command.SEND_DATA or data is None:
            return
        for obj in data.objects:
            if isinstance(obj, PartStatus) and obj.status & PART_ALARM:
                with arrived:
                    confirmed.append(r.at)
                    arrived.notify_all()

    centre = GbCentre(address=1, on_frame=on_frame)
    centre.start()
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    recorder = Recorder(base / "events.db", 10_000, inbox)
    outbox = Outbox(base / "outbox.db", "BENCH-1", ["gb26875"])
    # As in the split: the uplinks' follower reads the event log (woken by inotify).
    follower = EventFollower(base / "events.db", outbox)
    ctx = UplinkContext("BENCH-1", "bench", "loopback", _status, lambda e: None)
    cfg = Gb26875Config(
        host="127.0.0.1", port=centre.port, device_address=2, centre_address=1, heartbeat_s=600.0
    )
    channel = Gb26875Channel(cfg, outbox, ctx)
    recorder.start()
    follower.start()
    channel.start()
    latencies: list[float] = []
    try:
        if not centre.wait_connected(TIMEOUT_S):
            raise RuntimeError("the GB/T 26875.3 channel did not connect to the test centre")
        for i in range(samples + warmup):
            with arrived:
                before = len(confirmed)
            t0 = time.monotonic()
            event = Event("alarm.raised", "wok-1", t0, {"level": "high", "lel": 50.0 + i % 40})
            inbox.put((time.time(), event))
            with arrived:
                if not arrived.wait_for(partial(_more_than, confirmed, before), TIMEOUT_S):
                    raise RuntimeError(f"alarm {i} not confirmed within {TIMEOUT_S:g} s")
                t1 = confirmed[before]
            if i >= warmup:
                latencies.append(t1 - t0)
    finally:
        channel.stop()
        follower.stopping.set()
        follower.join(5)
        recorder.stop()
        outbox.close()
        centre.stop()
        tmp.cleanup()
    return latencies


def run(out: TextIO, *, samples: int = SAMPLES, warmup: int = WARMUP) -> list[Figure]:
    """Measure; print and return the figures (the ``python -m bench`` interface)."""
    # Only the figures on stdout: the recorder logs every alarm as a warning line.
    gasguard_logger = logging.getLogger("gasguard")
    level = gasguard_logger.level
    gasguard_logger.setLevel(logging.ERROR)
    try:
        note(out, f"GB/T 26875.3: {samples} alarms, recorder -> outbox -> channel -> centre")
        ms = [x * 1000.0 for x in measure(samples, warmup)]
    finally:
        gasguard_logger.setLevel(level)
    what = "alarm into the recorder queue -> GB/T 26875.3 centre confirm, loopback"
    return [
        emit(out, Figure("gb26875_alarm_to_confirm_median", median(ms), "ms", f"{what}, median")),
        emit(
            out,
            Figure(
                "gb26875_alarm_to_confirm_p99",
                percentile(ms, 99),
                "ms",
                f"{what}, p99 [target <= 50 ms]",
            ),
        ),
        emit(out, Figure("gb26875_alarm_to_confirm_max", max(ms), "ms", f"{what}, worst")),
    ]


def main() -> None:
    run(sys.stdout)


if __name__ == "__main__":
    main()
