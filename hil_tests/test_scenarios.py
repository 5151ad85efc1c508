"""The HIL scenarios: the same tests on the sim rig and on the hardware rig.

Every interval is measured on the fixture's clock, from the moment the fixture changed the
kitchen (``t=`` of its reply) to the edge it saw on a wire (``edge ... <t>``). The bounds asserted
are the standards' requirements (GB 16808: alarm within 10 s; comm fault within the configured
silence limit), never a speed target; the measured values go to the report.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.profiles import default_profiles_dir, load_profiles
from hil_tests.conftest import Timings
from hil_tests.fixture_client import FixtureClient, ticks_diff
from hil_tests.rigs import DetectorSpec, Gateway, Rig, Site, wait_for

PROFILES = load_profiles(default_profiles_dir())
ALARM_BUDGET_S = 10.0  # GB 16808: the controller alarms within 10 s of the detector's signal
LEAK_LEL = 60.0  # above every detector's high set point (50 %LEL)
NOISE_PERMILLE = 10  # 1 % of replies with a bad CRC
NOISE_SEED = 0xACE1  # the fixture's xorshift16 corrupts replies 38 and 58 first with this seed
NOISE_REPLIES = 150
SCHEDULING_ALLOWANCE_S = 1.0

StartGateway = Callable[[Site], Gateway]


def us_to_s(us: int) -> float:
    return us / 1_000_000


def generic(n: int) -> tuple[DetectorSpec, ...]:
    return tuple(DetectorSpec(f"det-{i}", i, "generic-cn-kitchen") for i in range(1, n + 1))


def replies_of(fx: FixtureClient, address: int) -> int:
    """Replies the fixture has sent for the detector at ``address``."""
    return int(fx.stats()[f"d{address}"].split("/")[1])


def leak_closes_valve(
    rig: Rig, gateway: Gateway, timings: Timings, scenario: str, address: int, name: str
) -> None:
    """Gas at ``address``: the valve drive must drop within the alarm budget, before the
    sounder comes on; the contact then confirms "closed". Records the intervals."""
    fx = rig.fixture
    step = fx.command(f"gas {address} {LEAK_LEL}").at
    valve = fx.wait_edge("valve", 0, step, ALARM_BUDGET_S + 2.0)
    assert valve is not None, f"valve not closed {ALARM_BUDGET_S} s after a leak at {name}"
    took = us_to_s(ticks_diff(valve.at, step))
    timings.record(scenario, "gas step -> valve drive off", took, ALARM_BUDGET_S)
    assert took <= ALARM_BUDGET_S
    sounder = fx.wait_edge("sounder", 1, step, 2.0)
    assert sounder is not None, "the sounder did not come on"
    assert ticks_diff(sounder.at, valve.at) >= 0, "valve first: the sounder came on before it"
    timings.record(
        scenario, "gas step -> sounder on", us_to_s(ticks_diff(sounder.at, step)), ALARM_BUDGET_S
    )
    contact = fx.wait_edge("feedback", 1, valve.at, 3.0)
    assert contact is not None, "the valve contact never said closed"
    assert wait_for(lambda: "valve.closed" in gateway.kinds(), 3.0)
    kinds = gateway.kinds()
    assert kinds.index("alarm.raised") < kinds.index("valve.closing")
    raised = next(d for k, s, d in gateway.events() if k == "alarm.raised" and s == name)
    assert raised["level"] == "high"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_leak_closes_the_valve_within_budget(
    rig: Rig, start_gateway: StartGateway, timings: Timings, profile: str
) -> None:
    p = PROFILES[profile]
    site = Site((DetectorSpec("det-1", 1, profile),), baud=p.default_baud, parity=p.default_parity)
    gateway = start_gateway(site)
    rig.open_valve(gateway)
    leak_closes_valve(rig, gateway, timings, f"leak {profile}", 1, "det-1")


def test_a_single_reading_spike_does_not_close_the_valve(
    rig: Rig, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(Site(generic(2)))
    rig.open_valve(gateway)
    fx = rig.fixture
    since = fx.now()
    before = replies_of(fx, 1)
    fx.command(f"spike 1 {LEAK_LEL} 1")
    # The spike went out, then at least two normal readings (the confirmation window).
    assert wait_for(lambda: replies_of(fx, 1) >= before + 3, 3.0)
    assert fx.edges("valve", since) == [], "one spiking reading closed the valve"
    assert fx.lines()["valve"] == 1
    assert "alarm.raised" not in gateway.kinds()


def test_a_silent_detector_becomes_a_comm_fault_within_its_timeout(
    rig: Rig, start_gateway: StartGateway, timings: Timings
) -> None:
    site = Site(generic(2))
    gateway = start_gateway(site)
    rig.open_valve(gateway)
    fx = rig.fixture
    silent_at = fx.command("silent 2 1").at
    # The core faults the detector once its last valid reply is older than the timeout; the
    # allowance covers one poll period and the host's scheduling (not a speed target).
    budget = site.comm_fault_timeout_s + site.poll_period_s + SCHEDULING_ALLOWANCE_S
    valve = fx.wait_edge("valve", 0, silent_at, budget + 2.0)
    assert valve is not None, "a silent detector did not close the valve"
    took = us_to_s(ticks_diff(valve.at, silent_at))
    timings.record("silent detector", "silence -> comm fault, valve off", took, budget)
    # Not before the silence limit (less the poll period the last reply may be old) ...
    assert took >= site.comm_fault_timeout_s - site.poll_period_s
    assert took <= budget
    det = gateway.detector("det-2")
    assert det["state"] == "comm-fault"
    assert det["lel"] is None, "a silent detector's last value must never be shown"
    assert gateway.detector("det-1")["state"] == "normal", "a dead detector hid a healthy one"
    fx.command("silent 2 0")
    assert wait_for(lambda: gateway.detector("det-2")["state"] == "normal", 3.0)
    assert fx.lines()["valve"] == 0, "the valve reopened by itself"


def test_one_percent_crc_noise_gives_no_false_and_no_missed_alarm(
    rig: Rig, start_gateway: StartGateway, timings: Timings
) -> None:
    gateway = start_gateway(Site(generic(3)))
    rig.open_valve(gateway)
    fx = rig.fixture
    since = fx.now()
    start = int(fx.stats()["replies"])
    fx.command(f"noise {NOISE_PERMILLE} {NOISE_SEED}")
    assert wait_for(lambda: int(fx.stats()["replies"]) >= start + NOISE_REPLIES, 30.0)
    stats = fx.stats()
    assert int(stats["corrupted"]) >= 2, f"no noise reached the gateway: {stats}"
    assert fx.edges("valve", since) == [], "CRC noise alone closed the valve"
    kinds = gateway.kinds()
    assert "alarm.raised" not in kinds and "fault.raised" not in kinds, kinds
    leak_closes_valve(rig, gateway, timings, "leak under 1 % noise", 2, "det-2")


def test_valve_feedback_stuck_open_gives_a_valve_fault(
    rig: Rig, start_gateway: StartGateway, timings: Timings
) -> None:
    site = Site(generic(1))
    gateway = start_gateway(site)
    rig.open_valve(gateway)
    fx = rig.fixture
    fx.command("valve stuck open")
    step = fx.command(f"gas 1 {LEAK_LEL}").at
    assert fx.wait_edge("valve", 0, step, ALARM_BUDGET_S) is not None
    budget = site.close_confirm_s + 2.0
    assert wait_for(lambda: "valve.failed" in gateway.kinds(), budget)
    failed_at = fx.now()
    timings.record(
        "valve stuck open",
        "gas step -> valve fault seen",
        us_to_s(ticks_diff(failed_at, step)),
        ALARM_BUDGET_S + budget,
    )
    valve = gateway.status()["valves"][0]
    assert valve["failed"] is True and valve["commanded"] == "closed"
    assert fx.lines()["feedback"] == 0, "the contact should still say open (stuck)"


def test_gateway_restart_during_a_latched_alarm_keeps_the_valve_closed(
    rig: Rig, start_gateway: StartGateway, timings: Timings
) -> None:
    gateway = start_gateway(Site(generic(1)))
    rig.open_valve(gateway)
    fx = rig.fixture
    step = fx.command(f"gas 1 {LEAK_LEL}").at
    closed = fx.wait_edge("valve", 0, step, ALARM_BUDGET_S)
    assert closed is not None
    fx.command("gas 1 0")  # the gas is gone; the alarm stays latched
    killed = fx.now()
    gateway.restart()
    assert gateway.controller.first_poll_done.wait(5.0)
    timings.record(
        "restart during latch",
        "restart -> first complete poll",
        us_to_s(ticks_diff(fx.now(), killed)),
        5.0,
    )
    assert wait_for(lambda: gateway.detector("det-1")["level"] == "normal", 3.0)
    det = gateway.detector("det-1")
    assert det["latched"] == "high", f"the latch was lost in the restart: {det}"
    settle = fx.now()
    assert not wait_for(lambda: fx.edges("valve", settle) != [], 1.0)
    assert fx.edges("valve", closed.at)[1:] == [], "the valve drive came on across the restart"
    assert fx.lines()["valve"] == 0
    # Only the local reset brings the gas back: the gateway was up and holding the latch.
    rig.open_valve(gateway)
    assert [e.level for e in fx.edges("valve", closed.at)] == [0, 1]


# -- site inputs and outputs: the hood fan and the power contacts -------------------------------

POWER_DEBOUNCE_S = 2.0  # configfile.PowerSpec's debounce, the rig's config


def test_a_leak_starts_the_hood_after_the_valve_and_it_runs_on_after_the_reset(
    rig: Rig, start_gateway: StartGateway, timings: Timings
) -> None:
    site = Site(generic(1))
    gateway = start_gateway(site)
    rig.open_valve(gateway)
    fx = rig.fixture
    step = fx.command("gas 1 30").at  # a low alarm is enough for the fan
    valve = fx.wait_edge("valve", 0, step, ALARM_BUDGET_S)
    fan = fx.wait_edge("fan", 1, step, ALARM_BUDGET_S)
    assert valve is not None and fan is not None, "the valve or the hood did not react"
    assert ticks_diff(fan.at, valve.at) >= 0, "valve first: the fan started before it"
    timings.record("hood", "gas step -> fan relay on", us_to_s(ticks_diff(fan.at, step)), 10.0)
    assert fx.wait_edge("fan-run", 1, fan.at, 2.0) is not None
    fx.command("gas 1 0")
    rig.open_valve(gateway)  # the reset; the hood runs on
    reset_at = fx.now()
    assert fx.lines()["fan"] == 1, "the hood stopped at the reset, with no run-on"
    stopped = fx.wait_edge("fan", 0, reset_at, site.fan_run_on_s + 3.0)
    assert stopped is not None, "the hood never stopped after its run-on"
    run_on = us_to_s(ticks_diff(stopped.at, reset_at))
    timings.record("hood", "reset -> fan off (run-on)", run_on, site.fan_run_on_s + 3.0)
    assert run_on >= site.fan_run_on_s - 1.0  # the reset was pressed up to ~1 s before
    assert "fan.failed" not in gateway.kinds()


def test_a_jammed_hood_is_a_fault_and_changes_no_valve(
    rig: Rig, start_gateway: StartGateway, timings: Timings
) -> None:
    site = Site(generic(2))
    gateway = start_gateway(site)
    rig.open_valve(gateway)
    fx = rig.fixture
    fx.command("fan jam 1")
    step = fx.command("gas 1 30").at
    fan = fx.wait_edge("fan", 1, step, ALARM_BUDGET_S)
    assert fan is not None
    budget = site.fan_start_confirm_s + SCHEDULING_ALLOWANCE_S
    assert wait_for(lambda: "fan.failed" in gateway.kinds(), budget + 2.0)
    failed_after = us_to_s(ticks_diff(fx.now(), fan.at))
    timings.record("jammed hood", "fan relay on -> fan fault", failed_after, budget + 2.0)
    assert any(f.startswith("hood: fan fault") for f in gateway.status()["faults"])
    assert fx.wait_edge("yellow", 1, fan.at, 3.0) is not None, "no yellow fault light"
    assert fx.lines()["fan-run"] == 0


def test_a_mains_failure_warns_and_a_low_battery_closes_the_valve(
    rig: Rig, start_gateway: StartGateway, timings: Timings
) -> None:
    gateway = start_gateway(Site(generic(1)))
    rig.open_valve(gateway)
    fx = rig.fixture
    failed_at = fx.command("power mains fail").at
    assert wait_for(lambda: gateway.status()["power"]["mains"] == "failed", 5.0)
    assert fx.edges("valve", failed_at) == [], "a mains failure alone closed the gas"
    low_at = fx.command("power battery fail").at
    valve = fx.wait_edge("valve", 0, low_at, POWER_DEBOUNCE_S + 3.0)
    assert valve is not None, "a low battery did not close the valve"
    took = us_to_s(ticks_diff(valve.at, low_at))
    timings.record("battery low", "contact -> valve drive off", took, POWER_DEBOUNCE_S + 3.0)
    assert took >= POWER_DEBOUNCE_S - 0.1, "the battery contact was not debounced"
    kinds = gateway.kinds()
    assert kinds.index("power.mains_failed") < kinds.index("power.battery_low")
    # Power back: the gas stays off until the local reset.
    fx.command("power battery ok")
    fx.command("power mains ok")
    assert wait_for(lambda: "power.battery_ok" in gateway.kinds(), 5.0)
    assert fx.lines()["valve"] == 0, "the valve reopened by itself"
    rig.open_valve(gateway)
