"""The whole controller against the simulated kitchen: real ptys with an emulated Modbus bus on
the other end, real minimalmodbus and pyserial, gpiozero mock pins, the real event store."""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api.control import ControlClient, ControlError
from gateway.config import load_config
from gateway.core.model import Level
from gateway.paths import uplink_socket
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import EventStore
from gateway.store.trendfile import read_hours, trend_path, write_hour
from gateway.trend import Hour

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
        assert again.core.latched() == {"wok-1@bus0:1": Level.LOW}
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


def test_a_restart_with_the_latched_detector_edited_out_keeps_an_orphan_latch(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    """Issue 27: wok-1 latched with the leak present, its [[detector]] deleted by hand, restart.
    The latch stays on its sensor (bus0:1) as an orphan latch: no reset opens the gas until a
    technician clears it, signed and with a reason."""
    opened(kitchen, controller)
    kitchen.set_gas("wok-1", 60.0)
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 3)
    controller.stop()
    path = kitchen.config_path
    text = path.read_text()
    start = text.index('[[detector]]\nname = "wok-1"')
    path.write_text(text[:start] + text[text.index("[[", start + 5) :])
    again = Controller(load_config(path), pin_factory=kitchen.factory, simulated=True)
    again.start()
    try:
        assert again.first_poll_done.wait(5)
        assert again.recorder is not None and again.recorder.flush(5)
        with EventStore.open_readonly(again.events_path) as reader:
            started = [e for e in reader.recent(1000) if e.kind == "controller.started"][-1]
        assert started.details["latched_restored"] == {}
        assert started.details["latched_orphaned"] == {
            "wok-1": {"sensor": "bus0:1", "level": "high"}
        }
        status = again.status()
        assert status["orphan_latches"] == [{"name": "wok-1", "sensor": "bus0:1", "level": "high"}]
        assert any(f.startswith("wok-1: orphan latch") for f in status["faults"])
        assert wait_for(lambda: len(again.status()["reset_blockers"]) == 1, 5)
        kitchen.press_reset()  # refused: the orphan latch blocks every valve
        assert wait_for(lambda: "operator.reset_refused" in kinds(again), 3)
        assert not kitchen.valve_coil_energised()
        client = ControlClient(again.config.control_socket)
        with pytest.raises(ControlError, match="reason"):
            client.call("clear_orphan", latch="wok-1", reason="", operator="li.wei")
        answer = client.call(
            "clear_orphan", latch="bus0:1", reason="detector moved, no gas", operator="li.wei"
        )
        assert answer["accepted"], answer
        assert again.recorder is not None and again.recorder.flush(5)
        with EventStore.open_readonly(again.events_path) as reader:
            cleared = [e for e in reader.recent(1000) if e.kind == "operator.orphan_cleared"]
        assert cleared and cleared[0].details["operator"] == "li.wei"
        assert cleared[0].details["reason"] == "detector moved, no gas"
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


def test_delivery_statistics_reported_by_the_uplinks_are_shown_with_their_warnings(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    assert controller.first_poll_done.wait(5)
    uplinks = ControlClient(uplink_socket(kitchen.config().control_socket))
    slow = "mqtt: 1 alarm(s) acknowledged more than 10 s after they were raised in the last 24 h"
    delivery = {
        "channels": {"mqtt": {"24h": {"count": 3, "p50_s": 0.2, "p95_s": 12.0, "max_s": 12.0,
                                      "availability": 0.99}}},
        "warnings": [slow],
    }  # fmt: skip
    uplinks.call("report", channels={}, outbox=None, delivery=delivery)
    status = controller.status()
    assert status["delivery"] == delivery
    assert f"delivery: {slow}" in status["faults"]
    with pytest.raises(ControlError, match="delivery must be null or an object"):
        uplinks.call("report", channels={}, outbox=None, delivery={"warnings": "slow"})
    assert controller.status()["delivery"] == delivery


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


# -- site inputs and outputs: the hood fan and the power contacts -------------------------------


def test_a_leak_starts_the_hood_fan_after_the_valve_closed(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    assert not kitchen.fan_relay_on()
    kitchen.set_gas("wok-1", 30.0)
    assert wait_for(kitchen.fan_relay_on, 3), "the hood did not start on a low alarm"
    assert not kitchen.valve_coil_energised()
    assert wait_for(lambda: controller.status()["fans"][0]["running"] is True, 3)
    fan = controller.status()["fans"][0]
    assert fan["commanded"] == "on" and fan["reason"] == "low alarm at wok-1"
    got = kinds(controller)
    assert got.index("valve.closing") < got.index("fan.started")


def test_a_jammed_hood_is_a_fault_in_the_status(
    kitchen: SimulatedKitchen, tmp_path: Path
) -> None:
    kitchen.jam_fan("hood")
    cfg = kitchen.config()
    fan = dataclasses.replace(cfg.fans[0], start_confirm_s=1.0)
    c = Controller(dataclasses.replace(cfg, fans=(fan,)), pin_factory=kitchen.factory)
    c.start()
    try:
        opened(kitchen, c)
        kitchen.set_gas("wok-2", 60.0)
        assert wait_for(lambda: "hood: fan fault (not running when it should)"
                        in c.status()["faults"], 4)  # fmt: skip
        assert c.status()["lights"]["yellow"] == "flash-fault"
        assert "fan.failed" in kinds(c)
    finally:
        c.stop()


def test_a_low_battery_closes_the_valve_and_a_mains_failure_only_warns(
    kitchen: SimulatedKitchen, controller: Controller
) -> None:
    opened(kitchen, controller)
    kitchen.set_mains(True)
    assert wait_for(lambda: controller.status()["power"]["mains"] == "failed", 4)
    assert kitchen.valve_coil_energised()  # the battery carries the kitchen: gas stays on
    assert "power: mains failed, running on the backup battery" in controller.status()["faults"]
    kitchen.set_battery(True)
    assert wait_for(lambda: not kitchen.valve_coil_energised(), 4)
    status = controller.status()
    assert status["power"] == {"mains": "failed", "battery": "low"}
    assert status["valves"][0]["reason"].startswith("backup battery low")
    assert any("backup battery low" in b for b in status["reset_blockers"])
    got = kinds(controller)
    assert got.index("power.mains_failed") < got.index("power.battery_low")


def test_an_overdue_calibration_is_a_warning_recorded_once_a_day_until_it_is_done(
    kitchen: SimulatedKitchen,
) -> None:
    cfg = kitchen.config()
    overdue = dataclasses.replace(
        cfg.detectors[0], installed=datetime.date(2025, 1, 1), calibrated=datetime.date(2025, 1, 2)
    )
    days = [datetime.datetime(2026, 3, 1, 10, 0), datetime.datetime(2026, 3, 1, 23, 0)]
    days.append(datetime.datetime(2026, 3, 2, 9, 0))
    wall = [days[0].timestamp()]
    c = Controller(
        dataclasses.replace(cfg, detectors=(overdue, *cfg.detectors[1:])),
        pin_factory=kitchen.factory,
        wall=lambda: wall[0],
    )
    c.start()
    try:
        assert wait_for(lambda: c.status()["lights"]["yellow"] == "flash-fault", 3)
        status = c.status()
        assert "wok-1: calibration overdue since 2026-01-02 (58 days)" in status["faults"]
        assert status["detectors"][0]["service"]["calibration_due_days"] == -58
        assert status["detectors"][1]["service"]["text"] == (
            "install and calibration dates not recorded"
        )
        assert not status["sounder"]
        for day in days[1:]:  # later the same day, then the next day
            wall[0] = day.timestamp()
            c.check_service()
        assert kinds(c).count("detector.service_due") == 2
        # Calibrated at the console (the config reloaded): the warning clears.
        fresh = dataclasses.replace(overdue, calibrated=datetime.date(2026, 3, 2))
        c.reload(dataclasses.replace(c.config, detectors=(fresh, *c.config.detectors[1:])))
        c.check_service()
        assert "detector.service_ok" in kinds(c)
        assert wait_for(lambda: c.status()["lights"]["yellow"] != "flash-fault", 3)
    finally:
        c.stop()


def test_the_trend_thread_stores_each_hour_of_current_readings_and_a_rise_is_reported(
    kitchen: SimulatedKitchen,
) -> None:
    hour = 500_000
    wall = [hour * 3600.0 + 10]
    c = Controller(kitchen.config(), pin_factory=kitchen.factory, wall=lambda: wall[0])
    c.start()
    try:
        assert c.first_poll_done.wait(5) and c.trend is not None
        kitchen.set_gas("wok-1", 3.0)
        assert wait_for(lambda: c.status()["detectors"][0]["lel"] == 3.0, 3)
        for _ in range(3):
            c.trend.sample()
        wall[0] += 3600  # the next hour: the first one is written
        assert wait_for(lambda: c.snapshot is not None and c.snapshot.wall >= wall[0], 3)
        c.trend.sample()
        (stored,) = read_hours(trend_path(c.config.data_dir, "wok-1"))
        assert (stored.index, stored.mean) == (hour, 3.0)
        # A week of slowly rising hours (written as the thread would): a trend warning.
        path = trend_path(c.config.data_dir, "wok-2")
        for i in range(7 * 24):
            write_hour(path, Hour(hour - 7 * 24 + i, 0.0, 1.0 + 8.0 * i / 168, 2.0))
        c.rejudge_trends()
        c.check_service()
        trend = [e for e in events(c) if e.kind == "detector.trend"]
        assert len(trend) == 1 and trend[0].source == "wok-2"
        assert trend[0].details["text"].startswith("slow rise below the low set point")
        assert len(trend[0].details["daily_means"]) == 7
        assert any(f.startswith("wok-2: slow rise") for f in c.status()["faults"])
    finally:
        c.stop()


def events(controller: Controller) -> list[Any]:
    assert controller.recorder is not None and controller.recorder.flush(5)
    with EventStore.open_readonly(controller.events_path) as reader:
        return reader.recent(1000)
