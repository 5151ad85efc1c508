"""Home Assistant MQTT discovery (behind ``homeassistant = true``).

Retained configs under ``<prefix>/<component>/<node>/<object>/config``:

* ``binary_sensor`` with ``device_class: gas`` per detector: ON while the detector is in (or
  latched in) a low or high alarm;
* ``sensor`` in ``%LEL`` per detector: unknown while the detector has no current value (a comm
  fault is never shown as the last value);
* ``binary_sensor`` with ``device_class: problem`` per detector: ON in a comm fault or a sensor
  fault (a silent detector's gas alarm alone would read "Clear");
* ``valve`` per shutoff valve: open / closed / opening / closing, **read-only**: no
  ``command_topic``, and ``payload_open`` / ``payload_close`` are null so Home Assistant shows
  no buttons. The gas comes back only by the local manual reset. A valve that failed to close
  shows "open" (the gas may flow), never "closing", and its problem sensor is ON;
* ``binary_sensor`` ``problem`` per valve: ON when the valve failed (stuck);
* site level: a ``gas`` binary_sensor (any alarm, latched included) and a ``problem`` one (any
  fault: detector, valve, event log, power), to automate on.

* a ``sensor`` "last event": the newest event's text (Chinese or English, as the site's
  language), its kind, source and time as attributes.

Attributes (``json_attributes_topic`` = the status topic) explain each state: a detector's
latched level, fault and whether a local reset is needed; a valve's reason and stuck state; the
site's alarm and fault texts. Their names avoid the ones Home Assistant drops (``state``):
the status document's ``state`` is the ``condition`` attribute.

Presentation: the site is a device (with the software version); each zone is a device of its
own, "via" the site, whose suggested area is the zone, holding that zone's detectors. Entity
names use the configured display names (``label``, any language) and the site's language
(``homeassistant_language``: English or Chinese words around them).

Every entity reads the site's retained status topic; availability is its ``state`` field, which
the Last Will turns to ``offline``. With no such detector or valve in the document (the offline
Last Will) the templates render what Home Assistant ignores: "None" (unknown) for sensors, an
empty string for the valve, whose MQTT platform warns on anything else.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.uplinks.mqtt.schema import Topics

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_STATE_CHARS = 255  # Home Assistant refuses a longer sensor state

# The words around display names, per ``homeassistant_language``.
WORDS: dict[str, dict[str, str]] = {
    "en": {
        "site_gas": "Gas alarm (any detector)",
        "site_problem": "Fault (any part)",
        "last_event": "Last event",
        "gas": "{} gas alarm",
        "problem": "{} fault",
        "lel": "{} gas concentration",
        "valve": "{} gas shutoff valve",
        "valve_problem": "{} valve fault",
        "site_device": "gasguard {}",
        "zone_device": "gasguard {} zone {}",
        "site_model": "kitchen gas-safety controller",
        "zone_model": "gas detection zone",
    },
    "zh": {
        "site_gas": "燃气报警（任一探测器）",
        "site_problem": "故障（任一部件）",
        "last_event": "最近事件",
        "gas": "{} 燃气报警",
        "problem": "{} 故障",
        "lel": "{} 燃气浓度",
        "valve": "{} 燃气紧急切断阀",
        "valve_problem": "{} 切断阀故障",
        "site_device": "gasguard {}",
        "zone_device": "gasguard {} 区域 {}",
        "site_model": "厨房燃气安全控制器",
        "zone_model": "燃气探测区域",
    },
}


def object_id(name: str) -> str:
    """A name as a Home Assistant node/object id (letters, digits, '_', '-')."""
    return _UNSAFE.sub("_", name)


def _site_device(node: str, site: str, words: dict[str, str], version: str) -> dict[str, Any]:
    return {
        "identifiers": [node],
        "name": words["site_device"].format(site),
        "manufacturer": "gasguard",
        "model": words["site_model"],
        "sw_version": version,
    }


def _zone_device(node: str, site: str, zone: str, words: dict[str, str]) -> dict[str, Any]:
    return {
        "identifiers": [f"{node}_zone_{object_id(zone)}"],
        "name": words["zone_device"].format(site, zone),
        "manufacturer": "gasguard",
        "model": words["zone_model"],
        "suggested_area": zone,
        "via_device": node,
    }


def _field(collection: str, name: str, attribute: str, missing: str = "None") -> str:
    # Names are validated ([A-Za-z0-9_.-]), so quoting them in the template is safe. The
    # offline Last Will has no detectors: render ``missing``, not a template error.
    return (
        f"{{% if value_json.{collection} is defined and '{name}' in value_json.{collection} %}}"
        f"{{{{ value_json.{collection}['{name}'].{attribute} }}}}{{% else %}}{missing}{{% endif %}}"
    )


def _when(collection: str, name: str, condition: str) -> str:
    """'ON' / 'OFF' from a Jinja ``condition`` on ``x`` (the named entry), 'None' when absent."""
    entry = f"value_json.{collection}['{name}']"
    return (
        f"{{% if value_json.{collection} is defined and '{name}' in value_json.{collection} %}}"
        f"{{% set x = {entry} %}}{{{{ 'ON' if {condition} else 'OFF' }}}}"
        f"{{% else %}}None{{% endif %}}"
    )


def _attributes(collection: str, name: str, fields: dict[str, str]) -> str:
    """A JSON object of Jinja expressions on ``x`` (the named entry); {} when absent."""
    body = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    entry = f"value_json.{collection}['{name}']"
    return (
        f"{{% if value_json.{collection} is defined and '{name}' in value_json.{collection} %}}"
        f"{{% set x = {entry} %}}{{{{ {{{body}}} | tojson }}}}{{% else %}}{{}}{{% endif %}}"
    )


ALARM_STATES = "['low-alarm', 'high-alarm']"
LATCHED = "['low', 'high']"
# The valve's status state as Home Assistant's valve states: a stuck valve is shown as where
# it is, its problem sensor says it is stuck.
VALVE_STATE = "{{ {'stuck-open': 'open', 'stuck-closed': 'closed'}.get(x.state, x.state) }}"


def discovery_configs(
    prefix: str,
    topics: Topics,
    site_id: str,
    site_name: str,
    status: dict[str, Any],
    *,
    version: str,
    language: str = "en",
) -> dict[str, dict[str, Any]]:
    """Topic -> retained config for every detector and valve in the controller's ``status``,
    and the site-level alarm, problem and last-event entities. ``language`` ("en" or "zh")
    chooses the words around the display names; ``version`` is the software version."""
    words = WORDS[language]
    node = object_id(f"gasguard_{site_id}")
    site = site_name or site_id
    device = _site_device(node, site, words, version)
    common: dict[str, Any] = {
        "state_topic": topics.status,
        "availability_topic": topics.status,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "json_attributes_topic": topics.status,
        "device": device,
        "qos": 1,
    }
    configs: dict[str, dict[str, Any]] = {}
    site_attrs = (
        "{{ {'alarms': value_json.alarms | default([]), 'faults': value_json.faults "
        "| default([]), 'simulated': value_json.simulated | default(false)} | tojson }}"
    )
    configs[f"{prefix}/binary_sensor/{node}/site_gas/config"] = {
        **common,
        "name": words["site_gas"],
        "unique_id": f"{node}_site_gas",
        "device_class": "gas",
        "value_template": "{{ 'ON' if value_json.alarm | default(false) else 'OFF' }}",
        "json_attributes_template": site_attrs,
        "payload_on": "ON",
        "payload_off": "OFF",
    }
    configs[f"{prefix}/binary_sensor/{node}/site_problem/config"] = {
        **common,
        "name": words["site_problem"],
        "unique_id": f"{node}_site_problem",
        "device_class": "problem",
        "value_template": "{{ 'ON' if value_json.fault | default(false) else 'OFF' }}",
        "json_attributes_template": site_attrs,
        "payload_on": "ON",
        "payload_off": "OFF",
    }
    text = "text_zh" if language == "zh" else "text"
    configs[f"{prefix}/sensor/{node}/last_event/config"] = {
        **common,
        "name": words["last_event"],
        "unique_id": f"{node}_last_event",
        "icon": "mdi:message-alert",
        "state_topic": topics.event,
        "value_template": (
            f"{{{{ (value_json.{text} | default(value_json.kind) | string)[:{MAX_STATE_CHARS}] }}}}"
        ),
        "json_attributes_topic": topics.event,
        "json_attributes_template": (
            "{{ {'kind': value_json.kind, 'source': value_json.source, 'utc': value_json.utc, "
            "'text': value_json.text | default(''), 'text_zh': value_json.text_zh | default('')}"
            " | tojson }}"
        ),
    }
    # Attribute names avoid those Home Assistant's MQTT entities drop (``state``, ``name``,
    # ``icon``, ``unit_of_measurement`` ...): "condition" is the status document's "state".
    detector_attrs = {
        "condition": "x.state",
        "zone": "x.zone",
        "latched": "x.latched",
        "fault": "x.fault",
        "reset_needed": f"x.latched in {LATCHED}",
    }
    for d in status.get("detectors", []):
        if not isinstance(d, dict) or "name" not in d:
            continue
        name = str(d["name"])
        label = str(d.get("label") or name)
        obj = object_id(name)
        attrs = _attributes("detectors", name, detector_attrs)
        zone = str(d.get("zone") or "")
        in_zone = {**common, "device": _zone_device(node, site, zone, words)} if zone else common
        # A latched alarm stays ON whatever the detector does now (a comm fault included).
        configs[f"{prefix}/binary_sensor/{node}/{obj}_gas/config"] = {
            **in_zone,
            "name": words["gas"].format(label),
            "unique_id": f"{node}_{obj}_gas",
            "device_class": "gas",
            "value_template": _when(
                "detectors", name, f"x.state in {ALARM_STATES} or x.latched in {LATCHED}"
            ),
            "json_attributes_template": attrs,
            "payload_on": "ON",
            "payload_off": "OFF",
        }
        configs[f"{prefix}/binary_sensor/{node}/{obj}_problem/config"] = {
            **in_zone,
            "name": words["problem"].format(label),
            "unique_id": f"{node}_{obj}_problem",
            "device_class": "problem",
            "value_template": _when("detectors", name, "x.fault is not none"),
            "json_attributes_template": attrs,
            "payload_on": "ON",
            "payload_off": "OFF",
        }
        configs[f"{prefix}/sensor/{node}/{obj}_lel/config"] = {
            **in_zone,
            "name": words["lel"].format(label),
            "icon": "mdi:gauge",
            "unique_id": f"{node}_{obj}_lel",
            "unit_of_measurement": "%LEL",
            "state_class": "measurement",
            "value_template": _field("detectors", name, "lel"),
            "json_attributes_template": attrs,
        }
    valve_attrs = {
        "condition": "x.state",
        "commanded": "x.commanded",
        "feedback": "x.feedback",
        "failed": "x.failed",
        "stuck_open": "x.state == 'stuck-open'",
        "reason": "x.reason",
    }
    for v in status.get("valves", []):
        if not isinstance(v, dict) or "name" not in v:
            continue
        name = str(v["name"])
        label = str(v.get("label") or name)
        obj = object_id(name)
        attrs = _attributes("valves", name, valve_attrs)
        configs[f"{prefix}/valve/{node}/{obj}/config"] = {
            **common,
            "name": words["valve"].format(label),
            "icon": "mdi:pipe-valve",
            "unique_id": f"{node}_{obj}_valve",
            "device_class": "gas",
            "value_template": (
                f"{{% if value_json.valves is defined and '{name}' in value_json.valves %}}"
                f"{{% set x = value_json.valves['{name}'] %}}{VALVE_STATE}{{% endif %}}"
            ),
            "json_attributes_template": attrs,
            # Read-only: no command topic, no open/close buttons (down-link safety).
            "payload_open": None,
            "payload_close": None,
        }
        configs[f"{prefix}/binary_sensor/{node}/{obj}_valve_problem/config"] = {
            **common,
            "name": words["valve_problem"].format(label),
            "unique_id": f"{node}_{obj}_valve_problem",
            "device_class": "problem",
            "value_template": _when("valves", name, "x.failed is sameas true"),
            "json_attributes_template": attrs,
            "payload_on": "ON",
            "payload_off": "OFF",
        }
    return configs
