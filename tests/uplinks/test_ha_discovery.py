"""Home Assistant discovery payloads, rendered with Jinja2 (Home Assistant's template engine)
against the status documents gasguard publishes (issue 19, items 1, 2, 3 and 7)."""

from __future__ import annotations

import json
from typing import Any

import jinja2
import pytest

from gateway.uplinks.mqtt.discovery import discovery_configs
from gateway.uplinks.mqtt.schema import Topics, offline_message, status_message

NODE = "gasguard_hz-001"
TOPICS = Topics("gasguard", "hz-001")
ENV = jinja2.Environment(autoescape=False)


def controller_status(**changes: Any) -> dict[str, Any]:
    """A controller status dict as ``gasguard status --json`` gives it: two detectors, a valve."""
    detectors = [
        {
            "name": "wok-1",
            "zone": "hot",
            "state": "normal",
            "lel": 1.0,
            "over_range": False,
            "latched": "normal",
            "fault": None,
        },
        {
            "name": "fryer",
            "zone": "hot",
            "state": "normal",
            "lel": 0.5,
            "over_range": False,
            "latched": "normal",
            "fault": None,
        },
    ]
    valves = [
        {"name": "main", "commanded": "open", "feedback": "open", "failed": False, "reason": None}
    ]
    status: dict[str, Any] = {"detectors": detectors, "valves": valves, "alarms": [], "faults": []}
    for key, value in changes.items():
        status[key] = value
    return status


def configs(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return discovery_configs("homeassistant", TOPICS, "hz-001", "Hangzhou kitchen", status)


def render(config: dict[str, Any], document: dict[str, Any], key: str = "value_template") -> str:
    text = json.dumps(document, ensure_ascii=False)
    return ENV.from_string(config[key]).render(value_json=json.loads(text), value=text).strip()


def entity(all_configs: dict[str, dict[str, Any]], component: str, obj: str) -> dict[str, Any]:
    return all_configs[f"homeassistant/{component}/{NODE}/{obj}/config"]


def published(status: dict[str, Any]) -> dict[str, Any]:
    return status_message("hz-001", status, 1764300000.0)


def test_a_valve_that_failed_to_close_shows_open_and_a_problem_not_closing() -> None:
    status = controller_status(
        valves=[
            {
                "name": "main",
                "commanded": "closed",
                "feedback": "open",
                "failed": True,
                "reason": "alarm wok-1",
            }
        ],
        faults=["main: valve did not close"],
    )
    doc = published(status)
    assert doc["valves"]["main"]["state"] == "stuck-open"
    c = configs(status)
    assert render(entity(c, "valve", "main"), doc) == "open"
    assert render(entity(c, "binary_sensor", "main_valve_problem"), doc) == "ON"
    attrs = json.loads(render(entity(c, "valve", "main"), doc, "json_attributes_template"))
    assert attrs["stuck_open"] is True and attrs["reason"] == "alarm wok-1"
    assert render(entity(c, "binary_sensor", "site_problem"), doc) == "ON"


def test_a_closing_valve_that_has_not_failed_is_closing() -> None:
    status = controller_status(
        valves=[
            {
                "name": "main",
                "commanded": "closed",
                "feedback": "open",
                "failed": False,
                "reason": "alarm wok-1",
            }
        ]
    )
    doc = published(status)
    c = configs(status)
    assert render(entity(c, "valve", "main"), doc) == "closing"
    assert render(entity(c, "binary_sensor", "main_valve_problem"), doc) == "OFF"


def test_a_silent_detector_is_a_problem_and_its_value_unknown() -> None:
    dets = controller_status()["detectors"]
    dets[0].update(state="comm-fault", lel=None, fault="comm: no reply for 10 s")
    status = controller_status(detectors=dets, faults=["wok-1: comm fault"])
    doc = published(status)
    c = configs(status)
    assert render(entity(c, "binary_sensor", "wok-1_problem"), doc) == "ON"
    assert render(entity(c, "binary_sensor", "fryer_problem"), doc) == "OFF"
    assert render(entity(c, "binary_sensor", "wok-1_gas"), doc) == "OFF"
    assert render(entity(c, "sensor", "wok-1_lel"), doc) == "None"  # unknown, never stale
    assert render(entity(c, "binary_sensor", "site_problem"), doc) == "ON"
    assert render(entity(c, "binary_sensor", "site_gas"), doc) == "OFF"


def test_a_latched_alarm_stays_on_and_says_a_reset_is_needed_even_in_a_comm_fault() -> None:
    dets = controller_status()["detectors"]
    dets[0].update(state="comm-fault", lel=None, latched="high", fault="comm: no reply")
    status = controller_status(detectors=dets, alarms=["wok-1: high alarm (latched)"])
    doc = published(status)
    c = configs(status)
    gas = entity(c, "binary_sensor", "wok-1_gas")
    assert render(gas, doc) == "ON"
    attrs = json.loads(render(gas, doc, "json_attributes_template"))
    assert attrs == {
        "state": "comm-fault",
        "zone": "hot",
        "latched": "high",
        "fault": "comm: no reply",
        "reset_needed": True,
    }
    assert render(entity(c, "binary_sensor", "site_gas"), doc) == "ON"


@pytest.mark.parametrize(
    ("component", "obj", "expected"),
    [
        ("valve", "main", ""),  # HA's MQTT valve ignores an empty state; "None" it warns about
        ("binary_sensor", "wok-1_gas", "None"),
        ("binary_sensor", "wok-1_problem", "None"),
        ("binary_sensor", "main_valve_problem", "None"),
        ("sensor", "fryer_lel", "None"),
    ],
)
def test_the_offline_last_will_renders_what_home_assistant_ignores(
    component: str, obj: str, expected: str
) -> None:
    c = configs(controller_status())
    config = entity(c, component, obj)
    doc = offline_message("hz-001")
    assert render(config, doc) == expected
    assert render(config, doc, "json_attributes_template") == "{}"
    assert render(config, doc, "availability_template") == "offline"


def test_every_entity_has_attributes_and_a_unique_id() -> None:
    c = configs(controller_status())
    assert len(c) == 2 + 3 * 2 + 2  # site, 3 per detector, 2 per valve
    assert len({cfg["unique_id"] for cfg in c.values()}) == len(c)
    doc = published(controller_status())
    for cfg in c.values():
        assert cfg["json_attributes_topic"] == TOPICS.status
        json.loads(render(cfg, doc, "json_attributes_template"))
