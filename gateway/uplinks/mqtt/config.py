"""``[uplink.mqtt]``: where the MQTT 5 channel connects and how it delivers.

Example (every key but ``host`` has a default)::

    [uplink.mqtt]
    host = "mqtt.city-platform.example"
    port = 8883                    # default 8883 with TLS, 1883 without
    tls = true                     # default true: the server certificate is checked
    ca_file = "/etc/gasguard/city-ca.pem"   # default: the system's CA store
    cert_file = "/etc/gasguard/site.crt"    # optional client certificate ...
    key_file = "/etc/gasguard/site.key"     # ... and its key (both or neither)
    username = "site-hz-001"
    password_file = "/etc/gasguard/mqtt.password"   # or password = "..." (file preferred)
    topic_prefix = "gasguard"
    keepalive_s = 30               # 30..60 s
    ack_timeout_s = 10             # re-send an event the centre has not acknowledged
    delivery = "centre"            # "centre": delivered when the centre acks it (end to end);
                                   # "broker": when the broker's PUBACK comes back (a site
                                   # whose only MQTT peer is Home Assistant: nobody else acks)
    heartbeat_s = 30
    homeassistant = false          # Home Assistant MQTT discovery
    homeassistant_language = "en"  # entity names: "en" or "zh" (display names stay as written)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.validate import Checker

KEYS = (
    "enabled",
    "host",
    "port",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password",
    "password_file",
    "client_id",
    "topic_prefix",
    "keepalive_s",
    "session_expiry_s",
    "ack_timeout_s",
    "max_inflight",
    "heartbeat_s",
    "status_interval_s",
    "reconnect_min_s",
    "reconnect_max_s",
    "homeassistant",
    "homeassistant_prefix",
    "homeassistant_language",
    "delivery",
)
HA_LANGUAGES = ("en", "zh")
# What counts as delivered: the receiving centre's end-to-end ack, or the broker's PUBACK.
DELIVERY_MODES = ("centre", "broker")

# A topic level we put site ids and prefixes into: no wildcards, no separators, no NUL.
TOPIC_LEVEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOPIC_PREFIX_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,63})*$"
)
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The MQTT channel's settings. Safety-relevant defaults: TLS on with the server
    certificate checked, QoS 1 on a persistent session (the broker keeps what the gateway
    missed for ``session_expiry_s``), and an event counts as delivered only when the centre's
    acknowledgement arrives; without one it is re-sent after ``ack_timeout_s``."""

    host: str
    port: int = 8883
    enabled: bool = True
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = ""  # "" = gasguard-<site id>
    topic_prefix: str = "gasguard"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    ack_timeout_s: float = 10.0
    max_inflight: int = 100
    heartbeat_s: float = 30.0
    status_interval_s: float = 60.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    homeassistant: bool = False
    homeassistant_prefix: str = "homeassistant"
    homeassistant_language: str = "en"
    delivery: str = "centre"

    def __repr__(self) -> str:
        # Never print the password (status pages, logs, tracebacks).
        shown = "set" if self.password else "none"
        return (
            f"MqttConfig(host={self.host!r}, port={self.port}, tls={self.tls}, "
            f"username={self.username!r}, password={shown}, topic_prefix={self.topic_prefix!r})"
        )


def _optional_file(c: Checker, table: dict[str, Any], key: str) -> Path | None:
    leaf = key.rsplit(".", 1)[-1]
    if leaf not in table:
        return None
    value = c.string(table, key)
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        c.bad(key, value, "the path of an existing, readable file")
    return path


def parse_mqtt_config(table: dict[str, Any], c: Checker, key: str) -> MqttConfig:
    """Validate an ``[uplink.mqtt]`` table (``key`` is its dotted name for messages). Problems
    are collected in ``c``; the returned value is only meaningful if ``c.problems`` is empty."""
    c.known_keys(table, key, KEYS)
    enabled = c.boolean(table, f"{key}.enabled", True)
    host = c.string(table, f"{key}.host")
    tls = c.boolean(table, f"{key}.tls", True)
    port = c.integer(table, f"{key}.port", 1, 65535, default=8883 if tls else 1883)
    ca_file = _optional_file(c, table, f"{key}.ca_file")
    cert_file = _optional_file(c, table, f"{key}.cert_file")
    key_file = _optional_file(c, table, f"{key}.key_file")
    if (cert_file is None) != (key_file is None):
        c.bad(
            f"{key}.cert_file",
            str(cert_file) if cert_file else None,
            "cert_file and key_file together (a client certificate needs its key), or neither",
        )
    if not tls and (ca_file or cert_file or key_file):
        c.bad(f"{key}.tls", tls, "true when ca_file, cert_file or key_file is set")
    username = c.string(table, f"{key}.username", required=False) or None
    password = c.string(table, f"{key}.password", required=False) or None
    password_file = _optional_file(c, table, f"{key}.password_file")
    if password is not None and password_file is not None:
        c.bad(f"{key}.password_file", str(password_file), "either password or password_file")
    if password_file is not None and password_file.is_file():
        try:
            password = password_file.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as e:
            c.bad(f"{key}.password_file", str(password_file), f"a readable UTF-8 file ({e})")
        if password is None:
            c.bad(f"{key}.password_file", str(password_file), "a file holding the password")
    if password is not None and username is None:
        c.bad(f"{key}.username", None, "a username when a password is set")
    client_id = c.string(table, f"{key}.client_id", required=False)
    if client_id and not CLIENT_ID_RE.match(client_id):
        c.bad(f"{key}.client_id", client_id, "1 to 64 letters, digits, '_', '.' or '-'")
    prefix = c.string(table, f"{key}.topic_prefix", required=False, default="gasguard")
    if prefix and not TOPIC_PREFIX_RE.match(prefix):
        c.bad(
            f"{key}.topic_prefix",
            prefix,
            "topic levels of letters, digits, '_', '.', '-' separated by '/' (no wildcards)",
        )
    ha_prefix = c.string(
        table, f"{key}.homeassistant_prefix", required=False, default="homeassistant"
    )
    if ha_prefix and not TOPIC_PREFIX_RE.match(ha_prefix):
        c.bad(f"{key}.homeassistant_prefix", ha_prefix, "a topic prefix without wildcards")
    reconnect_min = c.integer(table, f"{key}.reconnect_min_s", 1, 60, default=1)
    reconnect_max = c.integer(table, f"{key}.reconnect_max_s", 1, 600, default=30)
    if reconnect_max < reconnect_min:
        c.bad(
            f"{key}.reconnect_max_s", reconnect_max, f"at least reconnect_min_s ({reconnect_min})"
        )
    return MqttConfig(
        host=host,
        port=port,
        enabled=enabled,
        tls=tls,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username,
        password=password,
        client_id=client_id,
        topic_prefix=prefix,
        keepalive_s=c.integer(table, f"{key}.keepalive_s", 30, 60, default=30),
        session_expiry_s=c.integer(
            table, f"{key}.session_expiry_s", 60, 30 * 86400, default=7 * 86400
        ),
        ack_timeout_s=c.number(table, f"{key}.ack_timeout_s", 0.2, 600.0, default=10.0),
        max_inflight=c.integer(table, f"{key}.max_inflight", 1, 1000, default=100),
        heartbeat_s=c.number(table, f"{key}.heartbeat_s", 1.0, 3600.0, default=30.0),
        status_interval_s=c.number(table, f"{key}.status_interval_s", 1.0, 3600.0, default=60.0),
        reconnect_min_s=reconnect_min,
        reconnect_max_s=reconnect_max,
        homeassistant=c.boolean(table, f"{key}.homeassistant", False),
        homeassistant_prefix=ha_prefix,
        homeassistant_language=c.choice(
            table, f"{key}.homeassistant_language", HA_LANGUAGES, default="en"
        ),
        delivery=c.choice(table, f"{key}.delivery", DELIVERY_MODES, default="centre"),
    )
