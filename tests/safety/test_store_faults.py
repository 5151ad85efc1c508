"""A broken event log never takes gas detection down: with a corrupt, full, read-only or deleted
store the safety process starts, polls, closes the valve on a leak, and shows the store fault
(status, flashing yellow light, a ``fault.raised`` event that goes upstream once it can be
stored). The data directory is on a real small filesystem (``small_disk``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.core.model import Level, Light
from gateway.paths import events_db
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import EventStore
from gateway.store.latchfile import LatchFile
from tests.conftest import SmallDisk
from tests.uplink_fixtures import wait_for

DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
)
BUSES = (SimBus("bus0", 9600, "N"),)


@pytest.fixture
def site(tmp_path: Path, small_disk: SmallDisk) -> Iterator[tuple[SimulatedKitchen, Config]]:
    """The kitchen's config and sockets in tmp_path; its data directory on the small disk."""
    workdir = tmp_path / "site"
    workdir.mkdir()
    (small_disk.path / "data").mkdir()
    (workdir / "data").symlink_to(small_disk.path / "data")
    kitchen = SimulatedKitchen(
        workdir, buses=BUSES, detectors=DETECTORS, poll_period_s=0.2, comm_fault_timeout_s=3.0
    )
    config = kitchen.start()
    kitchen.set_all_gas(1.0)
    try:
        yield kitchen, config
    finally:
        kitchen.stop()


def a_healthy_log(kitchen: SimulatedKitchen, config: Config) -> None:
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    controller.start()
    assert controller.first_poll_done.wait(5)
    controller.stop()


def store_fault(controller: Controller) -> str | None:
    return next((f for f in controller.status()["faults"] if f.startswith("store:")), None)


def leak_closes_the_valve(kitchen: SimulatedKitchen) -> None:
    kitchen.press_reset()
    assert wait_for(lambda: kitchen.valve_coil_energised("main-inlet"), 5), "reset refused"
    kitchen.set_gas("wok-1", 40.0)
    assert wait_for(lambda: not kitchen.valve_coil_energised("main-inlet"), 5)
    kitchen.set_gas("wok-1", 1.0)


def kinds_stored(config: Config) -> list[tuple[str, str]]:
    with EventStore.open_readonly(events_db(config.data_dir)) as reader:
        return [(e.kind, e.source) for e in reader.recent(1000)]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_store_is_a_fault_and_detection_goes_on(
    site: tuple[SimulatedKitchen, Config], small_disk: SmallDisk, fault: str
) -> None:
    kitchen, config = site
    a_healthy_log(kitchen, config)
    if fault == "full":
        small_disk.fill()
    else:
        small_disk.read_only(True)
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    try:
        controller.start()  # no traceback, no exit: the store is a fault, not a stop
        assert controller.first_poll_done.wait(5)
        assert wait_for(lambda: store_fault(controller) is not None, 5)
        text = store_fault(controller)
        assert text is not None
        assert ("disk full" if fault == "full" else "read-only") in text
        snap = controller.snapshot
        assert snap is not None and snap.outputs.yellow == Light.FLASH_FAULT
        assert controller.status()["store"]["ok"] is False
        leak_closes_the_valve(kitchen)
        assert controller.status()["store"]["backlog"] > 0  # held in memory, not lost
        # The card is repaired: everything held is stored, the fault clears.
        if fault == "full":
            small_disk.free()
        else:
            small_disk.read_only(False)
        assert wait_for(lambda: store_fault(controller) is None, 15)
        recorder = controller.recorder
        assert recorder is not None and recorder.flush(10)
    finally:
        controller.stop()
        small_disk.read_only(False)
    stored = kinds_stored(config)
    # Upstream gets them from the log: the fault, the alarm held while it lasted, the recovery.
    assert ("fault.raised", "store") in stored and ("fault.cleared", "store") in stored
    assert ("alarm.raised", "wok-1") in stored and ("store.recovered", "recorder") in stored


def test_a_corrupt_store_is_moved_aside_and_detection_goes_on(
    site: tuple[SimulatedKitchen, Config],
) -> None:
    kitchen, config = site
    a_healthy_log(kitchen, config)
    db = events_db(config.data_dir)
    with open(db, "r+b") as f:
        f.write(os.urandom(4096))  # the header page
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    try:
        controller.start()
        assert controller.first_poll_done.wait(5)
        leak_closes_the_valve(kitchen)
        recorder = controller.recorder
        assert recorder is not None and recorder.flush(5)
        assert store_fault(controller) is None  # a new log is in place
    finally:
        controller.stop()
    assert list(config.data_dir.glob("events.db.corrupt-*")), "the evidence was not kept"
    stored = kinds_stored(config)
    assert ("store.moved_aside", "recorder") in stored and ("alarm.raised", "wok-1") in stored


def test_a_store_deleted_while_running_is_noticed_and_the_latch_kept(
    site: tuple[SimulatedKitchen, Config],
) -> None:
    kitchen, config = site
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    try:
        controller.start()
        assert controller.first_poll_done.wait(5)
        leak_closes_the_valve(kitchen)  # wok-1 latched
        recorder = controller.recorder
        assert recorder is not None and recorder.flush(5)
        db = events_db(config.data_dir)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        time.sleep(0.1)
        kitchen.set_gas("wok-2", 40.0)  # more events: they must land in a new log

        def wok2_latched() -> bool:
            return any(
                d["name"] == "wok-2" and d["latched"] != "normal"
                for d in controller.status()["detectors"]
            )

        assert wait_for(wok2_latched, 5)
        assert wait_for(lambda: db.exists() and recorder.flush(1), 10)
    finally:
        controller.stop()
    stored = kinds_stored(config)
    assert ("store.replaced", "recorder") in stored and ("alarm.raised", "wok-2") in stored
    assert ("fault.raised", "store") in stored
    with EventStore.open_readonly(events_db(config.data_dir)) as reader:
        assert "wok-1@bus0:1" in reader.load_latched()  # rewritten from memory into the new log
    # And a restart still knows both latches.
    again = Controller(config, pin_factory=kitchen.factory, simulated=True)
    try:
        again.start()
        core = again.core
        assert core is not None and {k.split("@")[0] for k in core.latched()} == {"wok-1", "wok-2"}
        assert not kitchen.valve_coil_energised("main-inlet")
    finally:
        again.stop()


@pytest.mark.parametrize("shape", ["fifo", "device", "huge"])
def test_a_latch_file_that_is_no_regular_file_is_a_store_fault_never_a_hang(
    tmp_path: Path, shape: str
) -> None:
    """Issue 27, item 5: ``latched.state`` as a FIFO (nobody writes: opening it used to wait for
    ever, so no polling and no READY), a device, or a huge file. The controller starts, polls,
    shows a store fault naming the latch file, and the latches come from the event log."""
    kitchen = SimulatedKitchen(
        tmp_path, buses=BUSES, detectors=DETECTORS, poll_period_s=0.2, comm_fault_timeout_s=3.0
    )
    config = kitchen.start()
    kitchen.set_all_gas(1.0)
    try:
        first = Controller(config, pin_factory=kitchen.factory, simulated=True)
        first.start()
        try:
            leak_closes_the_valve(kitchen)  # wok-1 latched, in the log and the latch file
        finally:
            first.stop()
        latch = config.data_dir / "latched.state"
        latch.unlink()
        if shape == "fifo":
            os.mkfifo(latch)
        elif shape == "device":
            latch.symlink_to("/dev/zero")
        else:
            with latch.open("wb") as f:
                f.truncate(64 * 1024 * 1024)  # sparse: costs no disk
        again = Controller(config, pin_factory=kitchen.factory, simulated=True)
        again.start()
        try:
            assert again.first_poll_done.wait(10), "no READY: the start hung on the latch file"
            assert wait_for(lambda: (store_fault(again) or "").find("latched.state") >= 0, 10)
            assert again.core is not None
            assert {k.split("@")[0] for k in again.core.latched()} == {"wok-1"}  # from the log
            assert wait_for(lambda: not kitchen.valve_coil_energised("main-inlet"), 1)
        finally:
            again.stop()
    finally:
        kitchen.stop()


def test_a_latch_stored_by_name_is_stored_again_by_sensor_at_start(tmp_path: Path) -> None:
    """The upgrade step: a latch file from before latches belonged to sensors ("wok-1") is
    restored by name once, then written back as wok-1@bus0:1, so a later re-address by hand
    leaves it on its sensor (an orphan), never on the new address."""
    kitchen = SimulatedKitchen(
        tmp_path, buses=BUSES, detectors=DETECTORS, poll_period_s=0.2, comm_fault_timeout_s=3.0
    )
    config = kitchen.start()
    kitchen.set_all_gas(1.0)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        LatchFile(config.data_dir / "latched.state").save({"wok-1": Level.HIGH})
        controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
        controller.start()
        try:
            assert controller.recorder is not None and controller.recorder.flush(5)
        finally:
            controller.stop()
        assert LatchFile(config.data_dir / "latched.state").load() == {"wok-1@bus0:1": Level.HIGH}
    finally:
        kitchen.stop()
