"""Home Assistant discovery payloads, rendered with Jinja2 (Home Assistant's template engine)
against the status documents gasguard publishes (issue 19, items 1, 2, 3, 4 and 7)."""

from __future__ import annotations

import json
from typing import Any

import jinja2
import pytest

from gateway.uplinks.mqtt.discovery import MAX_STATE_CHARS, discovery_configs
from gateway.uplinks.mqtt.schema import Topics, event_message, offline_message, status_message
from gateway.uplinks.outbox import OutboxItem

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


def configs(status: dict[str, Any], language: str = "en") -> dict[str, dict[str, Any]]:
    return discovery_configs(
        "homeassistant",
        TOPICS,
        "hz-001",
        "Hangzhou kitchen",
        status,
        version="1.2.3",
        language=language,
    )


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
        "condition": "comm-fault",
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


# Attribute names Home Assistant's MQTT entities drop from json_attributes (2024.3,
# homeassistant/components/mqtt/mixins.py): an attribute by one of these names never shows.
HA_BLOCKED_ATTRIBUTES = {
    "assumed_state",
    "available",
    "device_class",
    "device_info",
    "entity_category",
    "entity_picture",
    "entity_registry_enabled_default",
    "extra_state_attributes",
    "force_update",
    "icon",
    "name",
    "should_poll",
    "state",
    "supported_features",
    "unique_id",
    "unit_of_measurement",
}


def test_no_attribute_has_a_name_home_assistant_drops() -> None:
    status = controller_status()
    doc = published(status)
    for topic, cfg in configs(status).items():
        if topic.endswith("/last_event/config"):
            continue
        attrs = json.loads(render(cfg, doc, "json_attributes_template"))
        assert attrs and not set(attrs) & HA_BLOCKED_ATTRIBUTES, (topic, attrs)


def test_every_entity_has_attributes_and_a_unique_id() -> None:
    c = configs(controller_status())
    assert len(c) == 3 + 3 * 2 + 2  # site (alarm, fault, last event), 3 per detector, 2 per valve
    assert len({cfg["unique_id"] for cfg in c.values()}) == len(c)
    doc = published(controller_status())
    for obj, cfg in c.items():
        if obj.endswith("/last_event/config"):
            continue
        assert cfg["json_attributes_topic"] == TOPICS.status
        json.loads(render(cfg, doc, "json_attributes_template"))


def labelled_status() -> dict[str, Any]:
    status = controller_status()
    status["detectors"][0]["label"] = "炒锅上方"
    status["detectors"][1]["zone"] = "cold"
    status["valves"][0]["label"] = "总阀"
    return status


def test_display_names_in_any_language_and_the_site_language() -> None:
    status = labelled_status()
    en = configs(status)
    assert entity(en, "binary_sensor", "wok-1_gas")["name"] == "炒锅上方 gas alarm"
    assert entity(en, "binary_sensor", "fryer_gas")["name"] == "fryer gas alarm"  # no label
    assert entity(en, "valve", "main")["name"] == "总阀 gas shutoff valve"
    zh = configs(status, "zh")
    assert entity(zh, "binary_sensor", "wok-1_gas")["name"] == "炒锅上方 燃气报警"
    assert entity(zh, "sensor", "wok-1_lel")["name"] == "炒锅上方 燃气浓度"
    assert entity(zh, "valve", "main")["name"] == "总阀 燃气紧急切断阀"
    assert entity(zh, "binary_sensor", "site_gas")["name"] == "燃气报警（任一探测器）"
    # The label is only a name: templates still address the detector by its id.
    assert "'wok-1'" in entity(zh, "binary_sensor", "wok-1_gas")["value_template"]
    # The published status carries the labels for any dashboard.
    doc = published(status)
    assert doc["detectors"]["wok-1"]["label"] == "炒锅上方"
    assert doc["detectors"]["fryer"]["label"] == "fryer"
    assert doc["valves"]["main"]["label"] == "总阀"


def test_each_zone_is_a_device_in_its_suggested_area_via_the_site_with_the_version() -> None:
    c = configs(labelled_status())
    site = entity(c, "binary_sensor", "site_gas")["device"]
    assert site["identifiers"] == [NODE]
    assert site["sw_version"] == "1.2.3"
    hot = entity(c, "binary_sensor", "wok-1_gas")["device"]
    cold = entity(c, "sensor", "fryer_lel")["device"]
    assert hot["suggested_area"] == "hot" and cold["suggested_area"] == "cold"
    assert hot["via_device"] == NODE and cold["via_device"] == NODE
    assert hot["identifiers"] != cold["identifiers"]
    # A detector's three entities share its zone's device; the valve stays on the site.
    assert entity(c, "binary_sensor", "wok-1_problem")["device"] == hot
    assert entity(c, "valve", "main")["device"] == site
    assert entity(c, "sensor", "wok-1_lel")["icon"].startswith("mdi:")
    assert entity(c, "valve", "main")["icon"].startswith("mdi:")


@pytest.mark.parametrize(("language", "field"), [("en", "text"), ("zh", "text_zh")])
def test_the_last_event_entity_shows_the_event_text_in_the_site_language(
    language: str, field: str
) -> None:
    config = entity(configs(controller_status(), language), "sensor", "last_event")
    assert config["state_topic"] == TOPICS.event
    assert config["json_attributes_topic"] == TOPICS.event
    item = OutboxItem(
        7,
        1764300000.0,
        "alarm.raised",
        "wok-1",
        {"level": "high", "lel": 62.0, "zone": "hot"},
        "hz-001-7",
    )
    doc = event_message("hz-001", item)
    assert render(config, doc) == doc[field]
    attrs = json.loads(render(config, doc, "json_attributes_template"))
    assert attrs["kind"] == "alarm.raised" and attrs["source"] == "wok-1"
    assert attrs["text"] == doc["text"] and attrs["text_zh"] == doc["text_zh"]
    # Home Assistant refuses states over 255 characters: a long text is cut, not refused.
    long = dict(doc, **{field: "x" * 400})
    assert len(render(config, long)) == MAX_STATE_CHARS
