"""The MQTT 5 uplink: channel (``MqttChannel``), its config (``MqttConfig``,
``parse_mqtt_config``), the topic tree and JSON schema (``schema``) and Home Assistant discovery
(``discovery``). See docs/uplinks.md."""

from gateway.uplinks.mqtt.channel import MqttChannel, MqttState
from gateway.uplinks.mqtt.config import MqttConfig, parse_mqtt_config

__all__ = ["MqttChannel", "MqttConfig", "MqttState", "parse_mqtt_config"]
