"""The shipped example configuration: it loads, it says what its comments say, it respects the
safety rules, and the plan built from it drives the safety core as a kitchen expects."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.config import OUTPUT_PINS, Config, load_config
from gateway.core.model import (
    DetectorPlan,
    FanPlan,
    Level,
    PowerPlan,
    Reading,
    ResetRequest,
    SafetyPlan,
    Tick,
    ValveFeedback,
    ValvePlan,
)
from gateway.core.safety import SafetyCore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gasguard.example.toml"


def example() -> Config:
    return load_config(EXAMPLE)


def test_example_config_loads() -> None:
    cfg = example()
    assert cfg.path == EXAMPLE
    assert cfg.site.id == "NC-DEMO-0001"
    assert cfg.site.name == "Example Noodle House"


def test_example_bus_is_the_pl011_at_9600_8n1() -> None:
    [bus] = example().buses
    assert (bus.name, bus.port, bus.baud, bus.parity, bus.stop_bits) == (
        "bus0",
        "/dev/ttyAMA0",
        9600,
        "N",
        1,
    )
    assert (bus.timeout_s, bus.gap_ms, bus.rs485, bus.retries) == (0.2, 0.0, False, 1)


def test_example_detectors_use_gb_15322_set_points_and_the_generic_profile() -> None:
    detectors = example().detectors
    assert [d.name for d in detectors] == ["wok-1", "wok-2", "steamer"]
    assert [d.address for d in detectors] == [1, 2, 3]
    for d in detectors:
        assert d.zone == "hot-kitchen"
        assert d.bus == "bus0"
        assert d.profile.name == "generic-cn-kitchen"
        assert d.gas.value == "natural-gas"
        assert 1.0 <= d.low_lel <= 25.0 < d.high_lel <= 50.0
        assert (d.low_lel, d.high_lel) == (20.0, 50.0)


def test_example_valve_is_held_open_with_feedback() -> None:
    [valve] = example().valves
    assert valve.name == "main-inlet"
    assert valve.kind == "held-open"  # fails safe: no power, no gas
    assert (valve.output_pin, valve.feedback_pin, valve.feedback_closed_level) == (17, 27, "high")
    assert valve.pulse_ms == 0
    assert valve.close_confirm_s == 2.0
    assert valve.zones == ("hot-kitchen",)


def test_example_pins_are_safe_at_power_on_and_unique() -> None:
    cfg = example()
    ann = cfg.annunciator
    outputs = [ann.sounder_pin, ann.red_pin, ann.yellow_pin, ann.green_pin]
    outputs += [v.output_pin for v in cfg.valves] + [f.output_pin for f in cfg.fans]
    for pin in outputs:
        assert pin in OUTPUT_PINS and 9 <= pin <= 27 and pin not in (14, 15)
    inputs = [ann.silence_pin, ann.reset_pin] + [
        v.feedback_pin for v in cfg.valves if v.feedback_pin is not None
    ]
    inputs += [f.feedback_pin for f in cfg.fans if f.feedback_pin is not None]
    inputs += [p for p in (cfg.power.mains_failed_pin, cfg.power.battery_low_pin) if p]
    assert len(inputs) == 6  # buttons, valve contact, fan contact, both power contacts
    every = outputs + inputs
    assert len(every) == len(set(every))
    assert ann.reset_hold_s == 2.0


def test_example_timings_meet_gb_16808() -> None:
    t = example().timings
    assert (t.poll_period_s, t.comm_fault_timeout_s, t.confirm_count) == (0.5, 10.0, 2)
    assert t.comm_fault_timeout_s <= 100.0
    assert t.poll_period_s * t.confirm_count <= 10.0
    assert t.comm_fault_timeout_s >= 2 * t.poll_period_s


def test_example_storage_keeps_at_least_999_events() -> None:
    cfg = example()
    assert cfg.data_dir == Path("/var/lib/gasguard")
    assert cfg.event_capacity == 10_000 >= 999
    assert cfg.control_socket == Path("/var/lib/gasguard/control.sock")


def test_example_plan_is_what_the_safety_core_enforces() -> None:
    plan = example().plan()
    assert plan == SafetyPlan(
        detectors=tuple(
            DetectorPlan(
                name,
                "hot-kitchen",
                20.0,
                50.0,
                100.0,
                sensor=f"bus0:{address}",  # the latch belongs to the sensor (bus, address)
                profile=example().detectors[0].profile.fingerprint,
            )
            for address, name in enumerate(("wok-1", "wok-2", "steamer"), start=1)
        ),
        valves=(ValvePlan("main-inlet", ("hot-kitchen",), True, 2.0),),
        comm_fault_timeout_s=10.0,
        confirm_count=2,
        fans=(FanPlan("hood", ("hot-kitchen",), 300.0, False, True, 10.0),),
        power=PowerPlan(mains=True, battery=True, debounce_s=2.0),
    )


def test_example_loads_from_another_directory_with_the_shipped_profiles(tmp_path: Path) -> None:
    copy = tmp_path / "site.toml"
    shutil.copy(EXAMPLE, copy)
    cfg = load_config(copy)
    assert cfg.path == copy
    assert cfg.detectors == example().detectors
    assert cfg.detectors[0].profile == load_config(EXAMPLE).detectors[0].profile


def test_example_kitchen_starts_closed_opens_on_reset_and_closes_on_gas() -> None:
    cfg = example()
    plan = cfg.plan()
    core = SafetyCore(plan, 0.0)
    out = core.handle(Tick(0.0))
    assert out.valves_open == {"main-inlet": False}
    core.handle(ValveFeedback("main-inlet", 0.05, True))
    # The valve's contact confirms closed; every detector reads clean air through its profile.
    profile = cfg.detectors[0].profile
    t = 0.1
    for d in cfg.detectors:
        regs = profile.encode(0.0)
        start, count = profile.block
        decoded = d.profile.decode([regs.get(a, 0) for a in range(start, start + count)])
        out = core.handle(Reading(d.name, t, decoded.lel, decoded.own_alarm, decoded.fault))
        t += 0.1
    out = core.handle(ResetRequest(t))
    assert out.valves_open == {"main-inlet": True}
    # Gas at the steamer, read twice through the profile: the valve closes.
    for _ in range(plan.confirm_count):
        t += 0.5
        regs = profile.encode(30.0, Level.LOW)
        start, count = profile.block
        decoded = profile.decode([regs.get(a, 0) for a in range(start, start + count)])
        out = core.handle(Reading("steamer", t, decoded.lel, decoded.own_alarm, decoded.fault))
    assert out.valves_open == {"main-inlet": False}
    assert core.latched() == {"steamer@bus0:3": Level.LOW}
