"""A bare kitchen for city tests: an MQTT 5 client that publishes event documents made by the
gateway's own schema code (``event_message``) or forged ones, and collects the city's acks."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.uplinks.mqtt.schema import Topics, encode, event_message
from gateway.uplinks.outbox import OutboxItem
from tests.uplink_fixtures import Mosquitto, wait_for


def event_doc(site_id: str, seq: int, kind: str, source: str, **details: Any) -> dict[str, Any]:
    """The document a real kitchen publishes for this event."""
    item = OutboxItem(seq, time.time(), kind, source, details, f"{site_id}-{seq}")
    return event_message(site_id, item)


class BareKitchen:
    """Publishes as ``site_id`` (or as ``username`` on a broker with credentials)."""

    def __init__(
        self, broker: Mosquitto, site_id: str, username: str = "", password: str = ""
    ) -> None:
        self.site_id = site_id
        self.topics = Topics("gasguard", site_id)
        self.acks: list[int] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"kitchen-{site_id}-{id(self)}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not wait_for(lambda: self.connected.is_set() or self.refused.is_set(), 5) or (
            self.refused.is_set()
        ):
            self.close()
            raise AssertionError(f"kitchen {site_id} did not connect")
        time.sleep(0.05)  # the ack subscription is in

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.refused.set()  # bad credentials: never "connected"
            return
        c.subscribe(self.topics.ack, qos=1)
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        doc = json.loads(m.payload)
        with self._lock:
            self.acks.append(int(doc["seq"]))

    def send(self, doc: dict[str, Any] | bytes, topic: str | None = None) -> mqtt.MQTTMessageInfo:
        payload = doc if isinstance(doc, bytes) else encode(doc)
        info = self.client.publish(topic or self.topics.event, payload, qos=1)
        info.wait_for_publish(5)
        return info

    def event(
        self, seq: int, kind: str = "alarm.raised", source: str = "wok-1", **details: Any
    ) -> None:
        self.send(event_doc(self.site_id, seq, kind, source, **details))

    def heartbeat(self, pending: int = 0) -> None:
        doc = {
            "site_id": self.site_id,
            "utc": "2026-12-06T00:00:00.000Z",
            "seq": 1,
            "pending": pending,
        }
        self.client.publish(self.topics.heartbeat, encode(doc), qos=0)

    def wait_acks(self, seqs: set[int], timeout: float = 10.0) -> bool:
        return wait_for(lambda: seqs <= set(self.acked()), timeout)

    def acked(self) -> list[int]:
        with self._lock:
            return list(self.acks)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
