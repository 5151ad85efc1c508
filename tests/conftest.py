"""Shared fixtures: detector profiles, emulated RS-485 buses on real ptys, running pollers and a
collector for what they deliver. Generic on purpose: other test files may use and extend them."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BusConfig, DetectorConfig
from gateway.core.model import CommFailure, Gas, Reading
from gateway.drivers.modbus_bus import DetectorBus
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.sim.emulator import BusEmulator, EmulatedDetector
from tests.uplink_fixtures import mosquitto_fixture, uplink_site_fixture

__all__ = ["mosquitto_fixture", "uplink_site_fixture"]  # the `mosquitto`, `uplink_site` fixtures


@pytest.fixture(scope="session")
def profiles() -> dict[str, Profile]:
    """The detector profiles shipped in config/profiles, by name."""
    return load_profiles(default_profiles_dir())


class Deliveries:
    """Collects what a DetectorBus delivers: pass ``.put`` as ``deliver`` (non-blocking)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Reading | CommFailure] = queue.SimpleQueue()
        self._items: list[Reading | CommFailure] = []

    def put(self, item: Reading | CommFailure) -> None:
        self._queue.put(item)

    def all(self) -> list[Reading | CommFailure]:
        while True:
            try:
                self._items.append(self._queue.get_nowait())
            except queue.Empty:
                return list(self._items)

    def readings(self, detector: str | None = None) -> list[Reading]:
        return [
            i
            for i in self.all()
            if isinstance(i, Reading) and (detector is None or i.detector == detector)
        ]

    def failures(self, detector: str | None = None) -> list[CommFailure]:
        return [
            i
            for i in self.all()
            if isinstance(i, CommFailure) and (detector is None or i.detector == detector)
        ]

    def wait_for(
        self,
        predicate: Callable[[Reading | CommFailure], bool],
        timeout: float = 5.0,
        start: int = 0,
    ) -> int:
        """Index of the first delivery at or after ``start`` matching ``predicate``; fails the
        test if none arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            items = self.all()
            for index in range(start, len(items)):
                if predicate(items[index]):
                    return index
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching delivery within {timeout} s; got {items[-10:]}")
            time.sleep(0.01)


@pytest.fixture
def deliveries() -> Deliveries:
    return Deliveries()


@pytest.fixture
def bus_emulator() -> Iterator[Callable[..., BusEmulator]]:
    """Factory: ``bus_emulator(detectors, baud=9600, parity="N", stop_bits=1, link=None,
    turnaround_s=0.001)`` gives a started emulator on its own pty (``.path`` to open).
    Every emulator is stopped at teardown."""
    made: list[BusEmulator] = []

    def make(
        detectors: Sequence[EmulatedDetector],
        baud: int = 9600,
        parity: str = "N",
        stop_bits: int = 1,
        link: Path | None = None,
        turnaround_s: float = 0.001,
    ) -> BusEmulator:
        emulator, _ = BusEmulator.on_pty(baud, parity, stop_bits, detectors, turnaround_s, link)
        made.append(emulator)
        emulator.start()
        return emulator

    yield make
    for emulator in made:
        emulator.stop()


def bus_config(port: str, **overrides: Any) -> BusConfig:
    """A BusConfig for tests: 9600 8N1, 0.1 s reply timeout, no retries unless overridden."""
    values: dict[str, Any] = {
        "name": "bus0",
        "port": port,
        "baud": 9600,
        "parity": "N",
        "stop_bits": 1,
        "timeout_s": 0.1,
        "gap_ms": 0.0,
        "rs485": False,
        "retries": 0,
    }
    values.update(overrides)
    return BusConfig(**values)


def detector_config(
    name: str, address: int, profile: Profile, bus: str = "bus0", zone: str = "hot-kitchen"
) -> DetectorConfig:
    return DetectorConfig(name, zone, bus, address, profile, Gas.NATURAL_GAS, 20.0, 50.0)


@pytest.fixture
def start_bus(bus_emulator: Callable[..., BusEmulator]) -> Iterator[Callable[..., DetectorBus]]:
    """Factory: ``start_bus(bus_cfg, detector_cfgs, period_s, deliver, clock=...,
    confirm_count=1)`` gives a started DetectorBus, stopped at teardown (before the emulators)."""
    made: list[DetectorBus] = []

    def make(
        bus: BusConfig,
        detectors: Sequence[DetectorConfig],
        period_s: float,
        deliver: Callable[[Reading | CommFailure], None],
        clock: Callable[[], float] = time.monotonic,
        confirm_count: int = 1,
    ) -> DetectorBus:
        poller = DetectorBus(bus, detectors, period_s, deliver, clock, confirm_count)
        made.append(poller)
        poller.start()
        return poller

    yield make
    for poller in made:
        poller.stop()


# -- a small real filesystem for storage faults -------------------------------------------------


class SmallDisk:
    """A tmpfs of ``size`` bytes mounted at ``path``: it fills up, and can go read-only."""

    def __init__(self, path: Path, size: int = 2 * 1024 * 1024) -> None:
        self.path = path
        path.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"these tests mount a small tmpfs and need root (CI runs as root): "
                f"{done.stderr.strip()}"
            )
        self.filler = path / "filler"

    def fill(self) -> None:
        """Fill every free byte (unbuffered writes until ENOSPC)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool) -> None:
        mode = "ro" if on else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 2 MiB tmpfs at tmp_path/sd: fill it, free it, make it read-only."""
    d = SmallDisk(tmp_path / "sd")
    try:
        yield d
    finally:
        d.unmount()
