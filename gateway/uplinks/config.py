"""``[uplink.*]``: which channels the uplinks process runs and how.

The safety process keeps the ``[uplink]`` table as written and never parses it; this module is
where it is validated, by the uplinks process at its start, by ``gasguard check-config`` and by
the console before it applies a config. An invalid uplink section stops the uplinks process with
a clear error and never the gas protection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, load_config
from gateway.uplinks.gb26875.config import Gb26875Config, parse_gb26875_config
from gateway.uplinks.mqtt.config import MqttConfig, parse_mqtt_config
from gateway.uplinks.sms.config import SmsConfig, parse_sms_config
from gateway.validate import Checker, ConfigError


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """``[uplink.mqtt]``, ``[uplink.gb26875]`` and ``[uplink.sms]``; each is optional."""

    mqtt: MqttConfig | None = None
    gb26875: Gb26875Config | None = None
    sms: SmsConfig | None = None

    def channels(self) -> list[str]:
        """The names of the enabled channels, in the outbox's terms."""
        names = []
        if self.mqtt is not None and self.mqtt.enabled:
            names.append("mqtt")
        if self.gb26875 is not None and self.gb26875.enabled:
            names.append("gb26875")
        if self.sms is not None and self.sms.enabled:
            names.append("sms")
        return names


def uplink_config(cfg: Config) -> UplinkConfig:
    """Parse ``cfg``'s ``[uplink]`` table; ConfigError names the file, key, value and range."""
    c = Checker(str(cfg.path))
    table = cfg.uplink_table
    c.known_keys(table, "uplink", ("mqtt", "gb26875", "sms"))
    out = UplinkConfig(
        mqtt=parse_mqtt_config(c.table(table, "uplink.mqtt"), c, "uplink.mqtt")
        if "mqtt" in table
        else None,
        gb26875=parse_gb26875_config(c.table(table, "uplink.gb26875"), c, "uplink.gb26875")
        if "gb26875" in table
        else None,
        sms=parse_sms_config(c.table(table, "uplink.sms"), c, "uplink.sms")
        if "sms" in table
        else None,
    )
    if c.problems:
        raise ConfigError(c.problems)
    return out


def load_site(path: Path | str) -> tuple[Config, UplinkConfig]:
    """The whole file validated: the safety part and the uplinks part (check-config, console)."""
    cfg = load_config(path)
    return cfg, uplink_config(cfg)
