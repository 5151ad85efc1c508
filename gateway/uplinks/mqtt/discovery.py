"""Home Assistant MQTT discovery (behind ``homeassistant = true``).

Retained configs under ``<prefix>/<component>/<node>/<object>/config``:

* ``binary_sensor`` with ``device_class: gas`` per detector: ON while the detector is in (or
  latched in) a low or high alarm;
* ``sensor`` in ``%LEL`` per detector: unknown while the detector has no current value (a comm
  fault is never shown as the last value);
* ``valve`` per shutoff valve: open / closed / opening / closing, **read-only**: no
  ``command_topic``, and ``payload_open`` / ``payload_close`` are null so Home Assistant shows
  no buttons. The gas comes back only by the local manual reset.

Every entity reads the site's retained status topic; availability is its ``state`` field, which
the Last Will turns to ``offline``.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.uplinks.mqtt.schema import Topics

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def object_id(name: str) -> str:
    """A name as a Home Assistant node/object id (letters, digits, '_', '-')."""
    return _UNSAFE.sub("_", name)


def _device(site_id: str, site_name: str, node: str) -> dict[str, Any]:
    return {
        "identifiers": [node],
        "name": f"gasguard {site_name or site_id}",
        "manufacturer": "gasguard",
        "model": "kitchen gas-safety controller",
    }


def _field(collection: str, name: str, attribute: str) -> str:
    # Names are validated ([A-Za-z0-9_.-]), so quoting them in the template is safe. The
    # offline Last Will has no detectors: render None (unknown), not a template error.
    return (
        f"{{% if value_json.{collection} is defined and '{name}' in value_json.{collection} %}}"
        f"{{{{ value_json.{collection}['{name}'].{attribute} }}}}{{% else %}}None{{% endif %}}"
    )


def discovery_configs(
    prefix: str,
    topics: Topics,
    site_id: str,
    site_name: str,
    status: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Topic -> retained config for every detector and valve in the controller's ``status``."""
    node = object_id(f"gasguard_{site_id}")
    device = _device(site_id, site_name, node)
    common: dict[str, Any] = {
        "state_topic": topics.status,
        "availability_topic": topics.status,
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "qos": 1,
    }
    configs: dict[str, dict[str, Any]] = {}
    for d in status.get("detectors", []):
        if not isinstance(d, dict) or "name" not in d:
            continue
        name = str(d["name"])
        obj = object_id(name)
        alarm = (
            f"{{% if value_json.detectors is defined and '{name}' in value_json.detectors %}}"
            f"{{{{ 'ON' if value_json.detectors['{name}'].state in "
            f"['low-alarm', 'high-alarm'] else 'OFF' }}}}{{% else %}}None{{% endif %}}"
        )
        configs[f"{prefix}/binary_sensor/{node}/{obj}_gas/config"] = {
            **common,
            "name": f"{name} gas alarm",
            "unique_id": f"{node}_{obj}_gas",
            "device_class": "gas",
            "value_template": alarm,
            "payload_on": "ON",
            "payload_off": "OFF",
        }
        configs[f"{prefix}/sensor/{node}/{obj}_lel/config"] = {
            **common,
            "name": f"{name} gas concentration",
            "unique_id": f"{node}_{obj}_lel",
            "unit_of_measurement": "%LEL",
            "state_class": "measurement",
            "value_template": _field("detectors", name, "lel"),
        }
    for v in status.get("valves", []):
        if not isinstance(v, dict) or "name" not in v:
            continue
        name = str(v["name"])
        obj = object_id(name)
        configs[f"{prefix}/valve/{node}/{obj}/config"] = {
            **common,
            "name": f"{name} gas shutoff valve",
            "unique_id": f"{node}_{obj}_valve",
            "device_class": "gas",
            "value_template": _field("valves", name, "state"),
            # Read-only: no command topic, no open/close buttons (down-link safety).
            "payload_open": None,
            "payload_close": None,
        }
    return configs
