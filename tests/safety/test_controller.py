"""The whole controller against the simulated kitchen: real ptys with an emulated Modbus bus on
the other end, real minimalmodbus and pyserial, gpiozero mock pins, the real event store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api.control import ControlClient, ControlError
from gateway.core.model import Level
from gateway.paths import uplink_socket
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import EventStore

POLL_S = 0.2
SILENCE_S = 1.5
DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
    SimDetector("fryer", "hot-kitchen", "bus1", 1, "honeywell-sensepoint-xcd", "natural-gas"),
)
BUSES = (SimBus("bus0", 9600, "N"), SimBus("bus1", 19200, "E"))


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture
def kitchen(tmp_path: Path) -> Iterator[SimulatedKitchen]:
    k = SimulatedKitchen(
        tmp_path,
        buses=BUSES,
        detectors=DETECTORS,
        travel_s=0.05,
        poll_period_s=POLL_S,
        comm_fault_timeout_s=SILENCE_S,
    )
    k.start()
    k.set_all_gas(1.0)
    yield k
    k.stop()


@pytest.fixture
def controller(kitchen: SimulatedKitchen) -> Iterator[Controller]:
    c = Controller(kitchen.config(), pin_factory=kitchen.factory, simulated=True)
    c.start()
    yield c
    c.stop()


def opened(kitchen: SimulatedKitchen, controller: Controller) -> None:
    """Bring the kitchen to cooking: first poll, then the local reset opens the valve."""
    assert controller.first_poll_done.wait(5)
    assert wait_for(lambda: not (controller.snapshot and controller.snapshot.reset_blockers))
    kitchen.press_reset()
    assert wait_for(kitchen.valve_coil_energised, 3), "reset did not open the valve"


def kinds(controller: Controller) -> list[str]:
    assert controller.recorder is not None
    assert controller.recorder.flush(5)
    with EventStore.open_readonly(controller.events_path) as reader:
        return [e.kind for e in reader.recent(1000)]


def test_start_up_keeps_gas_off_until_local_reset(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    assert controller.first_poll_done.wait(5)
    time.sleep(0.5)
    assert not kitchen.valve_coil_energised()
    opened(kitchen, controller)
    assert "operator.reset" in kinds(controller)


def test_leak_closes_the_valve_and_it_stays_closed_until_reset(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    kitchen.set_gas("wok-1", 60.0)
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 3)
    kitchen.set_gas("wok-1", 0.5)
    # Gas gone, alarm latched: the valve must not reopen by itself.
    time.sleep(1.0)
    assert not kitchen.valve_coil_energised()
    status = controller.status()
    assert status["detectors"][0]["latched"] == "high"
    assert status["valves"][0]["commanded"] == "closed"
    assert status["lights"]["red"] == "flash-alarm"
    got = kinds(controller)
    assert got.index("alarm.raised") < got.index("valve.closing") < got.index("alarm.cleared")
    opened(kitchen, controller)


def test_single_spike_does_not_close_the_valve(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    det = kitchen.detectors["wok-2"]
    before = det.requests_seen
    kitchen.set_gas("wok-2", 70.0)
    # Exactly one reply carries the spike, then the gas is normal again.
    assert wait_for(
        lambda: det.requests_seen >= before + 1,
        2,
    )
    kitchen.set_gas("wok-2", 1.0)
    time.sleep(1.0)
    assert kitchen.valve_coil_energised()
    assert "alarm.raised" not in kinds(controller)


def test_silent_detector_becomes_comm_fault_and_closes_the_valve(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    kitchen.detectors["fryer"].silent = True
    t0 = time.monotonic()
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 5)
    took = time.monotonic() - t0
    assert took < SILENCE_S + 1.5
    fryer = next(d for d in controller.status()["detectors"] if d["name"] == "fryer")
    assert fryer["state"] == "comm-fault", (fryer, kinds(controller))
    assert fryer["lel"] is None, "a silent detector's last value must never be shown"
    # Back on the bus: the fault clears, but the gas stays off until a reset.
    kitchen.detectors["fryer"].silent = False
    assert wait_for(
        lambda: (
            next(d for d in controller.status()["detectors"] if d["name"] == "fryer")["state"]
            == "normal"
        ),
        3,
    )
    assert not kitchen.valve_coil_energised()


def test_detector_fault_closes_the_valve(kitchen: SimulatedKitchen, controller: Controller) -> None:
    opened(kitchen, controller)
    kitchen.detectors["wok-2"].fault = True
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 3)
    got = kinds(controller)
    assert "fault.raised" in got


def test_crc_noise_alone_raises_no_alarm(kitchen: SimulatedKitchen, controller: Controller) -> None:
    opened(kitchen, controller)
    for det in kitchen.detectors.values():
        det.corrupt_crc = 2
        det.wrong_id = 1
    time.sleep(1.5)
    assert kitchen.valve_coil_energised()
    assert "alarm.raised" not in kinds(controller)


def test_restart_with_latched_alarm_keeps_the_valve_closed(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    kitchen.set_gas("wok-1", 30.0)
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 3)
    controller.stop()
    again = Controller(kitchen.config(), pin_factory=kitchen.factory, simulated=True)
    again.start()
    try:
        assert again.core is not None
        assert again.core.latched() == {"wok-1": Level.LOW}
        assert again.first_poll_done.wait(5)
        time.sleep(0.5)
        assert not kitchen.valve_coil_energised()
        kitchen.press_reset()  # refused: gas still present at wok-1
        time.sleep(0.3)
        assert not kitchen.valve_coil_energised()
        kitchen.set_gas("wok-1", 1.0)
        opened(kitchen, again)
    finally:
        again.stop()


def test_valve_stuck_open_raises_a_valve_fault(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    assert kitchen.valve is not None
    kitchen.valve.stuck_open = True
    kitchen.set_gas("wok-1", 60.0)
    assert wait_for(lambda: "valve.failed" in kinds(controller), 5)
    assert controller.status()["valves"][0]["failed"] is True


def test_status_api_over_the_socket(kitchen: SimulatedKitchen, controller: Controller) -> None:
    assert controller.first_poll_done.wait(5)
    status: dict[str, Any] = ControlClient(kitchen.config().control_socket).call("status")
    assert status["simulated"] is True
    assert status["site"]["id"] == "SIM-KITCHEN-01"
    assert {d["name"] for d in status["detectors"]} == {"wok-1", "wok-2", "fryer"}
    assert status["valves"][0]["commanded"] == "closed"
    mode = kitchen.config().control_socket.stat().st_mode & 0o777
    assert mode == 0o660


def test_a_filling_outbox_reported_by_the_uplinks_is_a_fault_in_the_status(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    assert controller.first_poll_done.wait(5)
    uplinks = ControlClient(uplink_socket(kitchen.config().control_socket))
    warning = "80000 events not acknowledged by every channel (80% of the 100000 it holds)"
    fill = {"rows": 80000, "max_rows": 100000, "warning": warning}
    uplinks.call("report", channels={}, outbox=fill)
    status = controller.status()
    assert status["outbox"] == fill
    assert f"outbox: {warning}" in status["faults"]
    # A malformed report is refused and changes nothing.
    with pytest.raises(ControlError, match="outbox must be null or an object"):
        uplinks.call("report", channels={}, outbox={"warning": 3})
    assert controller.status()["outbox"] == fill
    uplinks.call("report", channels={}, outbox={"rows": 10, "max_rows": 100000, "warning": None})
    assert not [f for f in controller.status()["faults"] if f.startswith("outbox")]


def test_safety_loop_failure_closes_every_valve(
    kitchen: SimulatedKitchen, controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened(kitchen, controller)
    assert controller.core is not None

    def broken(inp: object) -> object:
        raise RuntimeError("injected fault in the safety core")

    monkeypatch.setattr(controller.core, "handle", broken)
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 2)
    assert controller.failure is not None


def test_reload_applies_a_valid_config_and_opens_nothing(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    assert controller.first_poll_done.wait(5)
    path = kitchen.config_path
    path.write_text(path.read_text().replace("low_lel = 20", "low_lel = 15"))
    assert controller.reload_from_disk()
    assert all(d.low_lel == 15 for d in controller.config.detectors)
    time.sleep(0.5)
    assert not kitchen.valve_coil_energised(), "a reload must never open a valve"
    assert "config.applied" in kinds(controller)
    # The new set point is enforced: 17 %LEL is now a low alarm.
    opened(kitchen, controller)
    kitchen.set_gas("wok-2", 17.0)
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 3)


def test_invalid_config_never_replaces_the_running_one(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    path = kitchen.config_path
    good = path.read_text()
    path.write_text(good.replace("high_lel = 50", "high_lel = 80"))
    assert not controller.reload_from_disk()
    assert all(d.high_lel == 50 for d in controller.config.detectors)
    path.write_text(good.replace(f"output_pin = {17}", "output_pin = 18"))
    assert not controller.reload_from_disk()
    assert controller.config.valves[0].output_pin == 17
    assert kitchen.valve_coil_energised(), "a rejected reload changes nothing"
    assert kinds(controller).count("config.rejected") == 2


def test_technician_commands_over_the_control_socket(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    client = ControlClient(kitchen.config().control_socket)
    assert controller.first_poll_done.wait(5)
    kitchen.set_gas("wok-2", 30.0)
    time.sleep(0.6)
    refused = client.call("reset", operator="tech-7")
    assert refused["accepted"] is False
    assert any("wok-2" in r for r in refused["reasons"])
    assert not kitchen.valve_coil_energised()
    kitchen.set_gas("wok-2", 1.0)
    assert wait_for(lambda: not controller.status()["reset_blockers"], 3)
    assert client.call("reset", operator="tech-7")["accepted"] is True
    assert wait_for(kitchen.valve_coil_energised, 2)
    # A valve test closes the valve; the answer names the valve and the operator.
    answer = client.call("test_valve", valve="main-inlet", operator="tech-7")
    assert answer["accepted"] is True
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 2)
    assert client.call("test_valve", valve="nope", operator="tech-7")["accepted"] is False
    inhibit = client.call("inhibit", detector="wok-1", minutes=5, operator="tech-7")
    assert inhibit["accepted"] is True
    wok1 = next(d for d in controller.status()["detectors"] if d["name"] == "wok-1")
    assert wok1["state"] == "inhibited" and 0 < wok1["inhibited_s"] <= 300
    got = kinds(controller)
    for kind in (
        "operator.reset_refused",
        "operator.reset",
        "operator.valve_test",
        "detector.inhibited",
    ):
        assert kind in got


def test_a_reload_that_drops_a_latched_detector_is_refused_and_the_latch_kept(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    kitchen.set_gas("wok-1", 60.0)
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 3)
    path = kitchen.config_path
    text = path.read_text()
    start = text.index('[[detector]]\nname = "wok-1"')
    path.write_text(text[:start] + text[text.index("[[", start + 5) :])
    answer = ControlClient(controller.config.control_socket).call("reload")
    assert answer["applied"] is False
    assert "wok-1 has a latched" in answer["problems"][0]
    wok1 = next(d for d in controller.status()["detectors"] if d["name"] == "wok-1")
    assert wok1["latched"] != "normal"
    assert "wok-1" in [d.name for d in controller.config.detectors]
    assert "config.refused" in kinds(controller)
