"""Storage that lasts: bytes the controller writes to the SD card per hour with 8 detectors
polled every 500 ms, in steady state and per stored event.

The safety process (``python -m gateway.safety.main --config FILE``) runs as a subprocess
(mock pins), against 4 generic kitchen detectors on a 9600 8N1 bus and 4 Sensepoint XCDs on a
19200 8E1 bus emulated in another process. After READY and a warm-up (the start-up events are
stored then), the window measures:

* ``write_bytes`` of /proc/PID/io: what the controller process made the kernel write to storage
  (SQLite's WAL appends, its checkpoints, anything else it writes);
* the event log's growth: ``events.db`` + ``-wal`` bytes, and events stored (``last_seq``);
* the log lines it printed (journald would store them).

Then a second window makes events (gas up and down at one detector: alarms raised and
cleared) to give the cost of one stored event: with ``synchronous=FULL`` each recorder
transaction appends its pages to the WAL and fsyncs it; the checkpoint later copies each page
once more into the main file, so the bytes per event count the WAL appends twice.
Target (issue 6): steady state <= 5 MB/h.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bench import Figure, emit, note
from bench.emulator_proc import EmulatorProcess
from bench.resources import BUSES, ControllerProcess, emulated_buses, site_buses
from bench.siteconfig import write_site_config
from gateway.store.events import last_seq_of

MB = 1_000_000
HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class StorageSample:
    """The controller's storage footprint at one moment."""

    at: float
    write_bytes: int
    log_bytes: int
    log_lines: int
    db_bytes: int
    events: int


def read_write_bytes(pid: int) -> int:
    """``write_bytes`` of /proc/PID/io: bytes this process caused to be written to storage."""
    for line in Path(f"/proc/{pid}/io").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key == "write_bytes":
            return int(value)
    raise ValueError(f"/proc/{pid}/io has no write_bytes line")


def last_seq(db: Path) -> int:
    """The highest event number ever stored (read-only: the benchmark writes nothing)."""
    return last_seq_of(db) if db.exists() else 0


def db_bytes(db: Path) -> int:
    """Size of the event log and its WAL now."""
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def take(controller: ControllerProcess, db: Path) -> StorageSample:
    lines = list(controller.lines)
    return StorageSample(
        at=time.monotonic(),
        write_bytes=read_write_bytes(controller.proc.pid),
        log_bytes=sum(len(line.encode()) + 1 for line in lines),
        log_lines=len(lines),
        db_bytes=db_bytes(db),
        events=last_seq(db),
    )


def run(
    out: TextIO,
    *,
    per_bus: int = 4,
    poll_period_s: float = 0.5,
    warmup_s: float = 5.0,
    window_s: float = 60.0,
    event_window_s: float = 40.0,
) -> list[Figure]:
    """Measure the steady state for ``window_s``, then events for ``event_window_s``."""
    if per_bus < 1 or warmup_s < 0 or window_s <= 0 or event_window_s <= 0:
        raise ValueError(
            f"per_bus {per_bus!r} >= 1, warmup_s {warmup_s!r} >= 0, window_s {window_s!r} > 0 "
            f"and event_window_s {event_window_s!r} > 0 are required"
        )
    detectors = per_bus * len(BUSES)
    note(
        out,
        f"storage: {detectors} detectors polled every {poll_period_s:g} s, "
        f"the safety process on mock pins; steady window {window_s:g} s after "
        f"{warmup_s:g} s warm-up, then {event_window_s:g} s of alarms raised and cleared",
    )
    with (
        tempfile.TemporaryDirectory(prefix="gasguard-bench-", dir=_disk_tmp()) as tmp,
        EmulatorProcess(emulated_buses(per_bus)) as emu,
    ):
        config = write_site_config(
            Path(tmp), site_buses(emu.paths, per_bus), poll_period_s=poll_period_s
        )
        db = Path(tmp) / "data" / "events.db"
        controller = ControllerProcess(config)
        try:
            controller.wait_ready()
            time.sleep(warmup_s)
            first = take(controller, db)
            time.sleep(window_s)
            steady = take(controller, db)
            # Events: each detector in turn goes up to a low alarm, then a high one, then back
            # down (alarms latch: the next detector makes the next new alarms).
            levels = (30.0, 60.0, 1.0)
            step_s = max(4 * poll_period_s, 1.0)
            deadline = steady.at + event_window_s
            i = 0
            while time.monotonic() < deadline:
                detector = i // len(levels)
                bus, address = detector % len(BUSES), detector // len(BUSES) % per_bus + 1
                emu.set_gas(bus, address, levels[i % len(levels)])
                i += 1
                time.sleep(min(step_s, max(0.0, deadline - time.monotonic())))
            for bus in range(len(BUSES)):
                for address in range(1, per_bus + 1):
                    emu.set_gas(bus, address, 1.0)
            time.sleep(2 * poll_period_s + 0.5)  # the last events reach the disk
            busy = take(controller, db)
            if controller.proc.poll() is not None:
                raise RuntimeError(
                    f"controller exited with status {controller.proc.returncode}; last output:\n"
                    + "\n".join(controller.lines[-15:])
                )
        finally:
            controller.stop()
    span = steady.at - first.at
    scale = HOUR_S / span
    events = busy.events - steady.events
    event_writes = busy.write_bytes - steady.write_bytes
    wal_growth = max(0, busy.db_bytes - steady.db_bytes)
    per_event = (event_writes + wal_growth) / events if events else 0.0
    figures = [
        Figure(
            "storage_write_bytes_per_hour",
            (steady.write_bytes - first.write_bytes) * scale / MB,
            "MB/h",
            "steady state: /proc/PID/io write_bytes of the controller, scaled to an hour "
            "[target <= 5 MB/h]",
            decimals=3,
        ),
        Figure(
            "storage_db_growth_per_hour",
            (steady.db_bytes - first.db_bytes) * scale / MB,
            "MB/h",
            "steady state: growth of events.db + WAL, scaled to an hour",
            decimals=3,
        ),
        Figure(
            "storage_events_per_hour",
            (steady.events - first.events) * scale,
            "events/h",
            "steady state: events stored (each is one fsynced transaction at most)",
            decimals=0,
        ),
        Figure(
            "storage_log_bytes_per_hour",
            (steady.log_bytes - first.log_bytes) * scale / MB,
            "MB/h",
            "steady state: log lines printed (journald stores them), scaled to an hour",
            decimals=3,
        ),
        Figure(
            "storage_events_made",
            float(events),
            "events",
            f"events stored while gas went up and down at each detector in turn for "
            f"{event_window_s:g} s",
            decimals=0,
        ),
        Figure(
            "storage_event_write_bytes",
            event_writes / 1000,
            "kB",
            "write_bytes of the controller while those events were stored",
            decimals=1,
        ),
        Figure(
            "storage_bytes_per_event",
            per_event / 1000,
            "kB",
            "write_bytes + later checkpoint copy of the WAL growth, per stored event "
            "(synchronous=FULL: one fsync per recorder transaction) [target < 4 kB]",
            decimals=1,
        ),
    ]
    for fig in figures:
        emit(out, fig)
    return figures


def _disk_tmp() -> str | None:
    """A temp directory on a real filesystem (/var/tmp): write_bytes counts nothing on a
    tmpfs /tmp. None (the default temp dir) when there is no /var/tmp."""
    return "/var/tmp" if Path("/var/tmp").is_dir() else None


def main() -> None:
    """``python -m bench.storage_writes``: print the figures."""
    run(sys.stdout)


if __name__ == "__main__":
    main()
