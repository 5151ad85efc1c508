"""Freedom from interference: the uplinks run in their own process, and whatever happens to it
(SIGKILL, SIGSTOP for 15 s) the safety process closes the valve in its usual time; once the
uplinks process runs again, every stored event reaches the centre, once, in order.

The safety process is the real ``Controller`` in this test's process (its pins are gpiozero
mock pins that the simulated kitchen drives); the uplinks process is ``python -m
gateway.uplinks.main`` as its unit starts it, against a real mosquitto and the reference
receiving centre.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.core.kinds import is_alarm_class
from gateway.safety.controller import UPLINK_STALE_S, Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import EventStore
from gateway.uplinks.receive import ReceivingCentre
from tests.uplink_fixtures import (
    Mosquitto,
    wait_for,
)

DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
)
BUSES = (SimBus("bus0", 9600, "N"),)
# Poll period 0.2 s, confirmation by 2 readings: the valve closes about 0.5 s after the leak.
# The bound below is the controller's usual time with a wide margin for a loaded test machine.
VALVE_BOUND_S = 3.0
FREEZE_S = UPLINK_STALE_S + 5.0  # long enough that the status must say "not reporting"


class UplinksProcess:
    """``python -m gateway.uplinks.main --config FILE`` as a child, its output in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.uplinks.main", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def site(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[SimulatedKitchen, Config]]:
    uplink = f"""
[uplink.mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
tls = false
ack_timeout_s = 2.0
reconnect_min_s = 1
reconnect_max_s = 1
"""
    kitchen = SimulatedKitchen(
        tmp_path, buses=BUSES, detectors=DETECTORS, poll_period_s=0.2, extra_config=uplink
    )
    config = kitchen.start()
    kitchen.set_all_gas(1.0)
    try:
        yield kitchen, config
    finally:
        kitchen.stop()


def stored_events(controller: Controller) -> list[tuple[int, str]]:
    recorder = controller.recorder
    assert recorder is not None and recorder.flush(5)
    with EventStore.open_readonly(controller.events_path) as reader:
        return [(r.seq, r.kind) for r in reader.since(0, 100_000)]


def leak_closes_the_valve(kitchen: SimulatedKitchen, controller: Controller) -> float:
    """Open the gas by a local reset, start a leak, return how long the valve took to close."""
    kitchen.press_reset()
    assert wait_for(lambda: kitchen.valve_coil_energised("main-inlet"), 5), "reset did not open"
    started = time.monotonic()
    kitchen.set_gas("wok-1", 40.0)
    assert wait_for(lambda: not kitchen.valve_coil_energised("main-inlet"), VALVE_BOUND_S, 0.005)
    return time.monotonic() - started


def assert_delivered_once_in_order(centre: ReceivingCentre, controller: Controller) -> None:
    site_id = controller.config.site.id
    stored = stored_events(controller)
    wanted = {f"{site_id}-{seq}" for seq, _ in stored}

    def complete() -> bool:
        return {str(e["event_id"]) for e in centre.events} >= wanted

    assert wait_for(complete, 30, 0.1), (
        f"missing: {sorted(wanted - {str(e['event_id']) for e in centre.events})[:10]}"
    )
    ids = [str(e["event_id"]) for e in centre.events]
    assert len(ids) == len(set(ids)), "an event was handed to the centre twice"
    # The outbox's order: alarm-class events first, each class in event-log order.
    seqs = [int(i.rsplit("-", 1)[1]) for i in ids if i in wanted]
    kinds = dict(stored)
    alarms = [s for s in seqs if is_alarm_class(kinds[s])]
    others = [s for s in seqs if not is_alarm_class(kinds[s])]
    assert alarms == sorted(alarms) and others == sorted(others)


@contextlib.contextmanager
def safety_and_uplinks(
    site: tuple[SimulatedKitchen, Config], mosquitto: Mosquitto, tmp_path: Path
) -> Iterator[tuple[SimulatedKitchen, Controller, UplinksProcess, ReceivingCentre]]:
    """The safety process here, the uplinks process beside it, the centre delivering."""
    kitchen, config = site
    centre = ReceivingCentre(mosquitto.host, mosquitto.port, config.site.id)
    centre.start()
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    uplinks = UplinksProcess(config.path, tmp_path / "uplinks.log")
    try:
        controller.start()
        uplinks.start()
        assert centre.connected.wait(5)
        assert controller.first_poll_done.wait(5)
        assert centre.wait_until(lambda c: bool(c.events), 15), "the uplinks never delivered"
        yield kitchen, controller, uplinks, centre
    finally:
        uplinks.stop()
        controller.stop()
        centre.stop()


def test_a_killed_uplinks_process_changes_nothing_and_catches_up(
    site: tuple[SimulatedKitchen, Config], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with safety_and_uplinks(site, mosquitto, tmp_path) as (kitchen, controller, uplinks, centre):
        uplinks.kill()  # SIGKILL, mid-whatever it was doing
        took = leak_closes_the_valve(kitchen, controller)
        assert took < VALVE_BOUND_S
        kitchen.set_gas("wok-1", 1.0)  # more events while nobody forwards them
        assert wait_for(lambda: "alarm.cleared" in {k for _, k in stored_events(controller)}, 5)
        assert controller.failure is None
        assert controller.status()["valves"][0]["commanded"] == "closed"

        uplinks.start()
        assert_delivered_once_in_order(centre, controller)


def test_a_frozen_uplinks_process_changes_nothing_and_catches_up(
    site: tuple[SimulatedKitchen, Config], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with safety_and_uplinks(site, mosquitto, tmp_path) as (kitchen, controller, uplinks, centre):
        uplinks.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        took = leak_closes_the_valve(kitchen, controller)
        assert took < VALVE_BOUND_S
        kitchen.set_gas("wok-1", 1.0)
        time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))
        # The safety process noticed, and only says so.
        assert controller.status()["uplinks_process"]["reporting"] is False
        assert controller.failure is None
        assert controller.status()["valves"][0]["commanded"] == "closed"

        uplinks.signal(signal.SIGCONT)
        assert_delivered_once_in_order(centre, controller)
        assert wait_for(lambda: controller.status()["uplinks_process"]["reporting"], 5)
