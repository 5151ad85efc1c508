"""The whole chain: a leak in the simulated kitchen, the real controller, the event log, the
outbox, and both upstream channels — MQTT through a real mosquitto broker to the reference
receiving centre, and GB/T 26875.3 over loopback TCP to the test centre."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.uplinks.config import uplink_config
from gateway.uplinks.gb26875.centre import GbCentre, Received
from gateway.uplinks.gb26875.codec import (
    OPERATION_DUTY_ANSWER,
    PART_ALARM,
    DeviceOperation,
    PartStatus,
)
from gateway.uplinks.receive import ReceivingCentre
from gateway.uplinks.service import UplinkService
from tests.uplink_fixtures import (
    Mosquitto,
    wait_for,
)

DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("lpg-store", "lpg-room", "bus1", 1, "honeywell-sensepoint-xcd", "lpg"),
)
BUSES = (SimBus("bus0", 9600, "N"), SimBus("bus1", 19200, "E"))


@pytest.fixture
def gb_centre() -> Iterator[GbCentre]:
    centre = GbCentre()
    centre.start()
    yield centre
    centre.stop()


def test_a_leak_reaches_both_centres_and_the_outbox_drains(
    tmp_path: Path,
    mosquitto: Mosquitto,
    gb_centre: GbCentre,
) -> None:
    uplinks = f"""
[uplink.mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
tls = false
ack_timeout_s = 2.0
[uplink.gb26875]
host = "127.0.0.1"
port = {gb_centre.port}
device_address = 1
heartbeat_s = 5
"""
    kitchen = SimulatedKitchen(
        tmp_path, buses=BUSES, detectors=DETECTORS, poll_period_s=0.2, extra_config=uplinks
    )
    config = kitchen.start()
    receiver = ReceivingCentre(mosquitto.host, mosquitto.port, config.site.id)
    receiver.start()
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    service = UplinkService(config, uplink_config(config))
    try:
        controller.start()
        service.start()
        assert receiver.connected.wait(5)
        assert controller.first_poll_done.wait(5)
        kitchen.set_gas("lpg-store", 40.0)
        assert wait_for(lambda: not kitchen.valve_coil_energised("lpg-manifold"), 5)

        def mqtt_has_alarm(c: ReceivingCentre) -> bool:
            return any(e["kind"] == "alarm.raised" for e in c.events)

        assert receiver.wait_until(mqtt_has_alarm, 10)
        alarm = next(e for e in receiver.events if e["kind"] == "alarm.raised")
        assert alarm["source"] == "lpg-store" and alarm["site_id"] == config.site.id

        def gb_has_alarm(received: list[Received]) -> bool:
            # Only the list handed in: the centre holds its lock while asking.
            for r in (r for r in received if r.answer == "confirm"):
                for obj in r.data.objects if r.data is not None else ():
                    if isinstance(obj, PartStatus) and obj.status & PART_ALARM:
                        return True
            return False

        assert gb_centre.wait_for(gb_has_alarm, 10)
        # Every stored event acknowledged end to end by both centres: nothing left queued.
        outbox = service.outbox
        assert outbox is not None
        assert wait_for(lambda: outbox.pending("mqtt") == 0 and outbox.pending("gb26875") == 0, 15)

        # The uplinks process reports its channels to the safety process's status.
        def both_connected() -> bool:
            state = controller.status()["uplinks"]
            return all(state.get(c, {}).get("connected") is True for c in ("mqtt", "gb26875"))

        assert wait_for(both_connected, 5)
        assert controller.status()["uplinks_process"]["reporting"] is True
        # Their high-water mark reaches the safety process (issue 27: the event log never
        # rotates out a never-dropped event above it), and the status shows it.
        assert wait_for(lambda: controller.uplinks_forwarded == outbox.high_water, 5)
        assert controller.status()["store"]["uplinks_forwarded_seq"] == outbox.high_water
        # No upstream message opened anything: the valve is still closed.
        time.sleep(0.3)
        assert not kitchen.valve_coil_energised("lpg-manifold")
    finally:
        service.stop()
        controller.stop()
        receiver.stop()
        kitchen.stop()


def test_a_duty_check_chirps_and_the_silence_button_answers_it(
    tmp_path: Path, gb_centre: GbCentre
) -> None:
    uplinks = f"""
[uplink.gb26875]
host = "127.0.0.1"
port = {gb_centre.port}
device_address = 1
"""
    kitchen = SimulatedKitchen(
        tmp_path, buses=BUSES, detectors=DETECTORS, poll_period_s=0.2, extra_config=uplinks
    )
    config = kitchen.start()
    controller = Controller(config, pin_factory=kitchen.factory, simulated=True)
    service = UplinkService(config, uplink_config(config))
    sounder = kitchen.factory.pin(config.annunciator.sounder_pin)
    try:
        controller.start()
        service.start()
        assert gb_centre.wait_connected(5)
        assert controller.first_poll_done.wait(5)
        # The site confirms it got the question (a generous deadline: a loaded machine).
        assert gb_centre.duty_check(timeout=15.0) is not None
        assert wait_for(lambda: controller.duty_check_pending is not None, 5)
        assert wait_for(lambda: bool(sounder.state), 2), "the staff must hear the duty check"
        kitchen.press_silence()
        assert controller.duty_check_pending is None

        def answered(received: list[Received]) -> bool:
            for r in received:
                for obj in r.data.objects if r.data is not None else ():
                    if isinstance(obj, DeviceOperation) and obj.flags & OPERATION_DUTY_ANSWER:
                        return True
            return False

        assert gb_centre.wait_for(answered, 10)
    finally:
        service.stop()
        controller.stop()
        kitchen.stop()
