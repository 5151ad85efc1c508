"""The MQTT 5 channel against a real mosquitto broker on loopback, with the real recorder, event
log and outbox on the gateway side and the reference receiving centre on the other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import __version__
from gateway.paths import outbox_db
from gateway.safety.controller import Controller
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import EventStore
from gateway.uplinks.mqtt import MqttChannel, MqttConfig, parse_mqtt_config
from gateway.uplinks.mqtt import channel as channel_module
from gateway.uplinks.mqtt.discovery import discovery_configs
from gateway.uplinks.mqtt.schema import (
    EVENT_SCHEMA,
    MessageError,
    Topics,
    encode,
    event_texts,
    parse_ack,
    parse_command,
    parse_event,
)
from gateway.uplinks.outbox import Outbox, OutboxItem
from gateway.uplinks.receive import ReceivingCentre
from gateway.validate import Checker
from tests.commands import require_command
from tests.uplink_fixtures import (
    Mosquitto,
    UplinkSite,
    free_loopback_port,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
SITE = "hz-001"


def mqtt_config(broker: Mosquitto, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "tls": False,
        "ack_timeout_s": 2.0,
        "reconnect_min_s": 1,
        "reconnect_max_s": 1,
    }
    values.update(overrides)
    return MqttConfig(**values)


class Peer:
    """A bare MQTT client for what the centre class does not do: listen to any topic, publish
    forged or malformed down-link messages."""

    def __init__(self, broker: Mosquitto, subscribe: str | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self._got(m)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if subscribe:
            self.client.subscribe(subscribe, qos=1)
            assert subscribed.wait(5)

    def _got(self, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[Any]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def started() -> Iterator[Callable[..., Any]]:
    """``started(thing)`` starts a channel or centre and stops it at teardown."""
    things: list[Any] = []

    def start(thing: Any) -> Any:
        thing.start()
        things.append(thing)
        return thing

    yield start
    for thing in reversed(things):
        thing.stop()


def centre(broker: Mosquitto, **kwargs: Any) -> ReceivingCentre:
    c = ReceivingCentre(broker.host, broker.port, SITE, **kwargs)
    return c


def ids(c: ReceivingCentre) -> list[str]:
    return [str(e["event_id"]) for e in c.events]


def ordered_within_class(c: ReceivingCentre) -> bool:
    for cls in ("alarm", "other"):
        seqs = [int(e["seq"]) for e in c.events if e["class"] == cls]
        if seqs != sorted(seqs):
            return False
    return True


# -- schema and config -----------------------------------------------------------------------------


def test_event_message_follows_the_schema_and_says_it_in_chinese() -> None:
    item = OutboxItem(
        12, 1_738_311_302.125, "alarm.raised", "wok-1", {"level": "high", "lel": 62.0}, "hz-001-12"
    )
    from gateway.uplinks.mqtt.schema import event_message

    doc = event_message(SITE, item)
    assert set(EVENT_SCHEMA["required"]) <= set(doc)
    assert doc["utc"] == "2025-01-31T08:15:02.125Z"
    assert doc["class"] == "alarm"
    assert doc["text_zh"] == "燃气泄漏高限报警：wok-1（62.0 %LEL）"
    assert parse_event(encode(doc), SITE) == doc
    assert "燃气泄漏高限报警".encode() in encode(doc)  # characters, not \\u escapes


@pytest.mark.parametrize(
    ("kind", "details", "zh"),
    [
        ("alarm.raised", {"level": "low", "lel": 21.0}, "燃气泄漏低限报警：wok-1（21.0 %LEL）"),
        ("fault.raised", {"fault": "comm"}, "探测器通信故障：wok-1"),
        ("valve.closed", {}, "紧急切断阀已关闭：wok-1"),
        ("something.new", {}, "事件 something.new：wok-1"),
        (
            "fan.started",
            {"reason": "low alarm at wok-1"},
            "排风机已联动启动：wok-1（low alarm at wok-1）",
        ),
        ("fault.raised", {"fault": "fan"}, "排风机故障：wok-1"),
        ("power.mains_failed", {}, "主电源故障（备用电源供电）"),
        ("power.battery_low", {}, "备用电源电量低：紧急切断阀已关闭"),
        (
            "cylinder.recorded",
            {"kg": 50, "state": "in-use", "place": "kitchen"},
            "液化气钢瓶登记（一瓶一码）：wok-1，50 kg，在用，kitchen",
        ),
        (
            "detector.service_due",
            {"text": "calibration overdue since 2026-01-02 (58 days)"},
            "探测器标定已过期，请尽快标定：wok-1",
        ),
    ],
)
def test_every_kind_gets_a_text(kind: str, details: dict[str, Any], zh: str) -> None:
    assert event_texts(kind, "wok-1", details)[0] == zh


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "ack: not UTF-8 JSON"),
        (b"[1, 2]", "ack: list, must be a JSON object"),
        (b'{"seq": 3}', "ack: event_id None does not match seq 3 of hz-001"),
        (b'{"event_id": "hz-001-4", "seq": 3}', "does not match seq 3"),
        (b'{"event_id": "hz-001-0", "seq": 0}', "seq 0, must be a whole number >= 1"),
        (b'{"event_id": "hz-001-1", "seq": true}', "seq True, must be a whole number"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{" + b'"x": 1,' * 1000 + b"}", "bytes, at most 4096 allowed"),
    ],
)
def test_bad_acks_are_refused_with_the_reason(payload: bytes, message: str) -> None:
    with pytest.raises(MessageError, match=message):
        parse_ack(payload, SITE)


def test_the_only_command_is_a_status_request() -> None:
    assert parse_command(b'{"cmd": "status"}') == "status"
    for payload in (b'{"cmd": "open"}', b'{"cmd": "reset"}', b'{"cmd": "status", "valve": "x"}'):
        with pytest.raises(MessageError):
            parse_command(payload)


def test_config_defaults_are_the_safe_ones() -> None:
    c = Checker("site.toml")
    cfg = parse_mqtt_config({"host": "mqtt.example"}, c, "uplink.mqtt")
    assert c.problems == []
    assert (cfg.tls, cfg.port, cfg.keepalive_s, cfg.homeassistant) == (True, 8883, 30, False)
    assert cfg.topic_prefix == "gasguard"


def test_delivery_and_home_assistant_language_take_only_known_values() -> None:
    c = Checker("site.toml")
    cfg = parse_mqtt_config(
        {"host": "h", "delivery": "broker", "homeassistant_language": "zh"}, c, "uplink.mqtt"
    )
    assert c.problems == [] and (cfg.delivery, cfg.homeassistant_language) == ("broker", "zh")
    c = Checker("site.toml")
    parse_mqtt_config({"host": "h", "delivery": "ha", "homeassistant_language": "fr"}, c, "x")
    text = "\n".join(str(p) for p in c.problems)
    assert "x.delivery = 'ha'" in text and "'centre'" in text and "'broker'" in text
    assert "x.homeassistant_language = 'fr'" in text


def test_config_problems_name_key_value_and_range(tmp_path: Path) -> None:
    c = Checker("site.toml")
    parse_mqtt_config(
        {
            "host": "",
            "port": 70000,
            "tls": False,
            "ca_file": str(tmp_path / "missing.pem"),
            "keepalive_s": 5,
            "topic_prefix": "city/#",
            "password": "secret",
            "colour": "red",
        },
        c,
        "uplink.mqtt",
    )
    text = "\n".join(str(p) for p in c.problems)
    assert "uplink.mqtt.colour = 'red': not a known key" in text
    assert "uplink.mqtt.host = '': a non-empty string" in text
    assert "uplink.mqtt.port = 70000: a whole number from 1 to 65535" in text
    assert "uplink.mqtt.ca_file" in text and "existing, readable file" in text
    assert "uplink.mqtt.tls = False: true when ca_file" in text
    assert "uplink.mqtt.keepalive_s = 5: a whole number from 30 to 60" in text
    assert "uplink.mqtt.topic_prefix = 'city/#'" in text
    assert "uplink.mqtt.username = None: a username when a password is set" in text
    assert "secret" not in repr(MqttConfig(host="h", password="secret"))


# -- delivery --------------------------------------------------------------------------------------


def test_events_arrive_in_order_and_count_as_delivered_only_when_the_centre_acks(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    site = uplink_site()
    c = started(centre(mosquitto))
    assert c.connected.wait(5)
    channel = started(MqttChannel(mqtt_config(mosquitto), site.outbox, site.ctx))
    site.emit("alarm.raised", "wok-1", level="high", lel=62.0, zone="hot-kitchen")
    site.emit("valve.closing", "main", reason="high alarm at wok-1")
    site.emit("valve.closed", "main", confirmed=True)
    assert c.wait_for_events(3, 5)
    assert [e["kind"] for e in c.events] == ["alarm.raised", "valve.closing", "valve.closed"]
    first = c.events[0]
    logged = site.logged()
    assert first["event_id"] == f"{SITE}-{logged[0].seq}" and first["seq"] == logged[0].seq
    assert first["site_id"] == SITE and first["source"] == "wok-1"
    assert first["details"] == {"level": "high", "lel": 62.0, "zone": "hot-kitchen"}
    assert first["text_zh"] == "燃气泄漏高限报警：wok-1（62.0 %LEL）"
    assert wait_for(lambda: site.outbox.pending("mqtt") == 0)
    state = channel.state
    assert state.connected and state.acked == 3 and state.pending == 0 and state.resent == 0


def test_an_unacknowledged_event_is_resent_until_the_centre_confirms_it(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    site = uplink_site()
    c = started(centre(mosquitto, acking=False))
    assert c.connected.wait(5)
    channel = started(MqttChannel(mqtt_config(mosquitto, ack_timeout_s=0.3), site.outbox, site.ctx))
    site.emit("alarm.raised", "wok-1", level="low", lel=22.0)
    assert c.wait_until(lambda c: c.duplicates >= 2, 10), "the event was not re-sent"
    assert len(c.events) == 1  # shown once
    assert site.outbox.pending("mqtt") == 1  # the broker has it, the centre did not confirm
    # Counted after the publish that the centre may already have seen: wait, do not race it.
    assert wait_for(lambda: channel.state.resent >= 2, 2)
    c.acking = True
    assert wait_for(lambda: site.outbox.pending("mqtt") == 0, 10)
    resent = channel.state.resent
    time.sleep(1.0)  # several former ack timeouts: nothing more is re-sent
    assert channel.state.resent == resent


def test_a_forged_or_malformed_ack_does_not_mark_anything_delivered(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    site = uplink_site()
    c = started(centre(mosquitto, acking=False))
    assert c.connected.wait(5)
    channel = started(MqttChannel(mqtt_config(mosquitto, ack_timeout_s=30), site.outbox, site.ctx))
    site.emit("alarm.raised", "wok-1", level="high", lel=70.0)
    site.emit("fault.raised", "fryer", fault="comm")
    assert c.wait_for_events(2, 5)
    first, second = (int(e["seq"]) for e in c.events)
    peer = Peer(mosquitto)
    topics = Topics("gasguard", SITE)
    for payload in (
        b"\x00\xff garbage",
        b"{}",
        json.dumps({"event_id": f"{SITE}-{second}", "seq": first}).encode(),
        json.dumps({"event_id": f"other-site-{first}", "seq": first}).encode(),
        b'{"event_id": "' + b"x" * 10_000 + b'"}',
    ):
        peer.publish(topics.ack, payload)
    # A valid ack for the second event, published after them: once it has taken effect, the
    # bad ones before it were handled too (one subscription, in order).
    c.ack(second)
    assert wait_for(lambda: site.outbox.pending("mqtt") == 1)
    assert [i.seq for i in site.outbox.peek("mqtt")] == [first]
    assert channel.state.connected and channel.state.acked == 1
    peer.close()


def test_status_is_retained_answers_a_request_and_nothing_else_is_obeyed(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    site = uplink_site()
    started(MqttChannel(mqtt_config(mosquitto), site.outbox, site.ctx))
    c = started(centre(mosquitto))  # connects later: gets the retained status
    assert c.wait_until(lambda c: c.status is not None and c.status.get("state") == "online", 5)
    assert c.status is not None
    assert c.status["detectors"]["wok-1"] == {
        "label": "wok-1",  # no display name configured: the name
        "state": "normal",
        "lel": 1.0,
        "over_range": False,
        "zone": "hot-kitchen",
        "latched": "normal",
        "fault": None,
        "service": None,  # the fake status has no service dates
    }
    assert c.status["detectors"]["fryer"]["lel"] is None  # comm fault: no value, not a stale one
    assert c.status["valves"]["main"]["state"] == "closed"
    assert c.status["fault"] is True and c.status["alarm"] is False
    before = len(c.statuses)
    peer = Peer(mosquitto)
    cmd = Topics("gasguard", SITE).cmd
    for bad in (b"{", b'{"cmd": "open_valve", "valve": "main"}', b'{"cmd": "set", "high": 99}'):
        peer.publish(cmd, bad)
    peer.publish(cmd, b'{"cmd": "status"}')
    assert c.wait_until(lambda c: len(c.statuses) > before, 5)
    time.sleep(0.3)
    assert len(c.statuses) == before + 1  # the request answered once; the others ignored
    # A change of the site's state is published by itself (coalesced, retained).
    site.status_doc["alarms"] = ["wok-1: high alarm (latched until reset)"]
    site.status_doc["detectors"][0].update(state="high-alarm", lel=64.0, latched="high")
    assert c.wait_until(lambda c: c.status is not None and c.status.get("alarm") is True, 5)
    peer.close()


def test_a_home_assistant_only_site_counts_the_brokers_puback_and_stops_resending(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    # Issue 19 item 5: with delivery = "centre" and nobody acking, the outbox re-sent forever.
    site = uplink_site()
    listener = Peer(mosquitto, subscribe="gasguard/hz-001/event")  # Home Assistant: no acks
    cfg = mqtt_config(mosquitto, ack_timeout_s=0.3, delivery="broker")
    channel = started(MqttChannel(cfg, site.outbox, site.ctx))
    site.emit("alarm.raised", "wok-1", level="high", lel=62.0, zone="hot-kitchen")
    site.emit("valve.closed", "main", confirmed=True)
    assert wait_for(lambda: site.outbox.pending("mqtt") == 0, 5), "the PUBACKs did not count"
    assert wait_for(lambda: len(listener.on("gasguard/hz-001/event")) == 2, 5)
    time.sleep(1.0)  # three ack timeouts: nothing is re-sent
    state = channel.state
    assert (state.acked, state.resent, state.delivery) == (2, 0, "broker")
    assert len(listener.on("gasguard/hz-001/event")) == 2
    listener.close()


def test_a_site_with_a_centre_keeps_the_end_to_end_ack_by_default(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    site = uplink_site()
    channel = started(MqttChannel(mqtt_config(mosquitto, ack_timeout_s=0.3), site.outbox, site.ctx))
    site.emit("alarm.raised", "wok-1", level="high", lel=62.0, zone="hot-kitchen")
    assert wait_for(lambda: channel.state.resent >= 1, 5)
    # The broker has the event, but only the centre's ack is a delivery.
    assert site.outbox.pending("mqtt") == 1
    assert channel.state.delivery == "centre"


def test_home_assistant_discovery_is_read_only(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    site = uplink_site()
    peer = Peer(mosquitto, subscribe="homeassistant/#")
    cfg = mqtt_config(mosquitto, homeassistant=True)
    started(MqttChannel(cfg, site.outbox, site.ctx))
    # Every config the channel publishes (not a first few: they arrive one by one).
    expected = discovery_configs(
        cfg.homeassistant_prefix, Topics(cfg.topic_prefix, "hz-001"), "hz-001",
        site.ctx.site_name, site.ctx.status(), version=__version__,
        language=cfg.homeassistant_language,
    )  # fmt: skip
    assert wait_for(lambda: {m.topic for m in peer.messages} >= set(expected), 5)
    configs = {m.topic: json.loads(m.payload) for m in peer.messages}
    node = "gasguard_hz-001"
    gas = configs[f"homeassistant/binary_sensor/{node}/wok-1_gas/config"]
    assert gas["device_class"] == "gas" and gas["state_topic"] == "gasguard/hz-001/status"
    assert "value_json.detectors['wok-1']" in gas["value_template"]
    lel = configs[f"homeassistant/sensor/{node}/fryer_lel/config"]
    assert lel["unit_of_measurement"] == "%LEL"
    valve = configs[f"homeassistant/valve/{node}/main/config"]
    assert "command_topic" not in valve
    assert valve["payload_open"] is None and valve["payload_close"] is None
    assert all(c["availability_topic"] == "gasguard/hz-001/status" for c in configs.values())
    peer.close()
    later = Peer(mosquitto, subscribe="homeassistant/#")  # Home Assistant restarting
    assert wait_for(lambda: len(later.messages) == len(configs), 5)
    assert all(m.retain for m in later.messages)
    later.close()


def test_discovery_is_off_by_default(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    site = uplink_site()
    peer = Peer(mosquitto, subscribe="#")
    channel = started(MqttChannel(mqtt_config(mosquitto), site.outbox, site.ctx))
    assert wait_for(lambda: bool(peer.on("gasguard/hz-001/heartbeat")), 5)
    assert channel.state.connected
    assert not [m for m in peer.messages if m.topic.startswith("homeassistant/")]
    peer.close()


# -- faults ----------------------------------------------------------------------------------------

DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("wok-2", "hot-kitchen", "bus0", 2, "generic-cn-kitchen", "natural-gas"),
)


def test_broker_outage_during_a_leak_every_event_arrives_once_in_order(
    tmp_path: Path, mosquitto: Mosquitto, started: Callable[..., Any]
) -> None:
    """The whole controller on the simulated kitchen, its recorder feeding the outbox. A leak
    starts, the broker goes down, the leak spreads, the broker comes back: the centre has
    every event of the event log, each once, in order within its class."""
    kitchen = SimulatedKitchen(
        tmp_path / "kitchen",
        buses=(SimBus("bus0", 9600, "N"),),
        detectors=DETECTORS,
        travel_s=0.05,
        poll_period_s=0.2,
        comm_fault_timeout_s=1.5,
    )
    kitchen.start()
    kitchen.set_all_gas(1.0)
    controller = Controller(kitchen.config(), pin_factory=kitchen.factory, simulated=True)
    outbox: Outbox | None = None
    try:
        controller.start()
        assert controller.recorder is not None
        cfg = kitchen.config()
        outbox = Outbox(outbox_db(cfg.data_dir), cfg.site.id, ["mqtt"])
        controller.recorder.subscribe(outbox.add)
        with EventStore.open_readonly(controller.events_path) as reader:
            outbox.catch_up(reader)
        from gateway.uplinks.context import UplinkContext

        ctx = UplinkContext(
            cfg.site.id,
            cfg.site.name,
            cfg.site.address,
            controller.status,
            lambda e: controller.recorder_inbox.put((time.time(), e)),
        )
        c = started(ReceivingCentre(mosquitto.host, mosquitto.port, cfg.site.id))
        assert c.connected.wait(5)
        channel = started(MqttChannel(mqtt_config(mosquitto), outbox, ctx))
        assert controller.first_poll_done.wait(5)
        assert wait_for(lambda: not (controller.snapshot and controller.snapshot.reset_blockers))
        kitchen.press_reset()
        assert wait_for(kitchen.valve_coil_energised, 3), "reset did not open the valve"

        kitchen.set_gas("wok-1", 60.0)
        assert c.wait_until(lambda c: any(e["kind"] == "alarm.raised" for e in c.events), 5)
        mosquitto.stop()
        kitchen.set_gas("wok-2", 30.0)  # the leak spreads while the uplink is down
        assert wait_for(
            lambda: "alarm.raised" in [e.kind for e in _logged(controller) if e.source == "wok-2"]
        )
        kitchen.set_gas("wok-1", 5.0)
        time.sleep(2.0)
        assert not channel.state.connected
        waiting = outbox.pending("mqtt")
        assert waiting >= 1
        mosquitto.start()

        def complete() -> bool:
            assert controller.recorder is not None
            controller.recorder.flush(5)
            logged = {f"{cfg.site.id}-{e.seq}" for e in _logged(controller)}
            return outbox.pending("mqtt") == 0 and set(ids(c)) == logged

        def missing() -> list[int]:
            return sorted({e.seq for e in _logged(controller)} - {e["seq"] for e in c.events})

        assert wait_for(complete, 20, 0.1), f"missing: {missing()}"
        assert len(ids(c)) == len(set(ids(c)))  # the de-duplicated count is exact
        assert ordered_within_class(c)
        kinds = [(e["kind"], e["source"]) for e in c.events]
        assert ("alarm.raised", "wok-2") in kinds and ("uplink.down", "mqtt") in kinds
        assert kinds.index(("alarm.raised", "wok-1")) < kinds.index(("alarm.raised", "wok-2"))
        assert not kitchen.valve_coil_energised()  # the uplink never touched the valve
    finally:
        controller.stop()
        kitchen.stop()
        if outbox is not None:
            outbox.close()


def _logged(controller: Controller) -> list[Any]:
    with EventStore.open_readonly(controller.events_path) as reader:
        return reader.since(0, 100_000)


GATEWAY_SCRIPT = textwrap.dedent(
    """
    import queue, signal, sys, threading, time
    from pathlib import Path
    from gateway.core.model import Event
    from gateway.store.events import EventStore
    from gateway.store.recorder import Recorder
    from gateway.uplinks.context import UplinkContext
    from gateway.uplinks.mqtt import MqttChannel, MqttConfig
    from gateway.paths import outbox_db
    from gateway.uplinks.outbox import Outbox

    data, port, produce = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data.mkdir(exist_ok=True)
    events = data / "events.db"
    EventStore(events).close()
    inbox = queue.SimpleQueue()
    box = Outbox(outbox_db(data), "hz-001", ["mqtt"])
    with EventStore.open_readonly(events) as reader:
        box.catch_up(reader)
    recorder = Recorder(events, 999, inbox)
    recorder.subscribe(box.add)
    recorder.start()
    ctx = UplinkContext("hz-001", "Test", "", lambda: {}, lambda e: inbox.put((time.time(), e)))
    cfg = MqttConfig(host="127.0.0.1", port=port, tls=False, ack_timeout_s=2.0,
                     reconnect_min_s=1, reconnect_max_s=1)
    channel = MqttChannel(cfg, box, ctx)
    channel.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    print("ready", flush=True)
    for n in range(produce):
        if stop.is_set():
            break
        inbox.put((time.time(), Event("alarm.raised", f"wok-{n % 4}", time.monotonic(), {"n": n})))
        time.sleep(0.005)
    stop.wait()
    channel.stop()
    recorder.stop()
    box.close()
    """
)


def test_gateway_killed_mid_publish_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, started: Callable[..., Any]
) -> None:
    """A gateway process (recorder, outbox, channel) is SIGKILLed while it publishes a stream
    of alarms; restarted, it delivers everything its event log holds. The broker publishes
    its Last Will (retained offline) when it dies."""
    c = started(centre(mosquitto))
    assert c.connected.wait(5)
    data = tmp_path / "gw"

    def run(produce: int) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-c", GATEWAY_SCRIPT, str(data), str(mosquitto.port), str(produce)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        return child

    first = run(2000)
    try:
        assert c.wait_until(lambda c: len(c.events) >= 100, 20), "the stream did not start"
        assert c.wait_until(lambda c: c.status is not None and c.status["state"] == "online", 5)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.stdout is not None
        first.stdout.close()
    assert c.wait_until(lambda c: c.status is not None and c.status["state"] == "offline", 10)
    with EventStore.open_readonly(data / "events.db") as reader:
        stored = reader.since(0, 100_000)
    assert 100 <= len(stored) < 2000, "the gateway was not killed mid-stream"
    second = run(0)
    try:

        def has_all() -> bool:
            with EventStore.open_readonly(data / "events.db") as reader:
                logged = {f"{SITE}-{e.seq}" for e in reader.since(0, 100_000)}
            return logged <= set(ids(c))

        assert wait_for(has_all, 30, 0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
        assert second.stdout is not None
        second.stdout.close()
    with EventStore.open_readonly(data / "events.db") as reader:
        logged = [f"{SITE}-{e.seq}" for e in reader.since(0, 100_000)]
    assert set(ids(c)) == set(logged)
    assert len(ids(c)) == len(set(ids(c)))
    assert ordered_within_class(c)


# -- TLS -------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    openssl = require_command("openssl", "openssl")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(workdir: Path, name: str) -> Path:
    """A throw-away CA (EC P-256) in ``workdir``; returns its certificate."""
    workdir.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=workdir,
    )  # fmt: skip
    return workdir / f"{name}.pem"


def make_server_cert(workdir: Path, ca: str) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 signed by CA ``ca``; returns (cert, key)."""
    (workdir / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=workdir,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
        cwd=workdir,
    )  # fmt: skip
    return workdir / "server.pem", workdir / "server.key"


def test_tls_checks_the_broker_certificate(
    tmp_path: Path, uplink_site: Callable[..., UplinkSite], started: Callable[..., Any]
) -> None:
    pki = tmp_path / "pki"
    ca = make_ca(pki, "city-ca")
    stranger = make_ca(pki, "stranger-ca")
    cert, key = make_server_cert(pki, "city-ca")
    tls_port = free_loopback_port()
    broker = Mosquitto(
        tmp_path / "tls-broker",
        extra_config=(
            f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        ),
    )
    broker.start()
    try:
        c = started(ReceivingCentre(broker.host, broker.port, SITE))  # plain, same broker
        assert c.connected.wait(5)
        trusted = uplink_site()
        started(
            MqttChannel(
                mqtt_config(broker, port=tls_port, tls=True, ca_file=ca),
                trusted.outbox,
                trusted.ctx,
            )
        )
        trusted.emit("alarm.raised", "wok-1", level="high", lel=55.0)
        assert c.wait_for_events(1, 10)
        assert wait_for(lambda: trusted.outbox.pending("mqtt") == 0, 5)
        # A gateway that trusts another CA must refuse this broker and keep its events.
        wary = uplink_site(site_id="hz-002")
        channel = started(
            MqttChannel(
                mqtt_config(broker, port=tls_port, tls=True, ca_file=stranger),
                wary.outbox,
                wary.ctx,
            )
        )
        wary.emit("alarm.raised", "wok-1", level="high", lel=55.0)
        assert wait_for(lambda: channel.state.last_error is not None, 10)
        assert "CERTIFICATE_VERIFY_FAILED" in str(channel.state.last_error)
        wary.flush()
        assert not channel.state.connected
        assert wary.outbox.pending("mqtt") >= 1
    finally:
        broker.stop()


def test_an_unusable_ca_file_is_named(
    tmp_path: Path, uplink_site: Callable[..., UplinkSite]
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    site = uplink_site()
    cfg = MqttConfig(host="127.0.0.1", port=8883, tls=True, ca_file=bad)
    with pytest.raises(ValueError, match=f"uplink.mqtt.ca_file {bad}: not usable as CA"):
        MqttChannel(cfg, site.outbox, site.ctx)


def test_an_over_range_alarm_says_so_and_never_shows_the_raw_value() -> None:
    details = {"level": "high", "lel": 100.0, "over_range": True, "zone": "hot"}
    zh, en = event_texts("alarm.raised", "wok-1", details)
    assert zh == "燃气泄漏高限报警：wok-1（≥100 %LEL，超量程）"
    assert en == "High gas alarm: wok-1 (≥100 %LEL, over range)"
    assert "3276" not in zh + en


def test_an_alarm_event_publishes_the_status_at_once_not_at_the_next_check(
    mosquitto: Mosquitto,
    uplink_site: Callable[..., UplinkSite],
    started: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Home Assistant reads the status topic: after an alarm it must not wait for the periodic
    check (issue 19, item 6). The periodic check is pushed out of reach here, so only the
    event can have published the new status."""
    monkeypatch.setattr(channel_module, "STATUS_CHECK_S", 3600.0)
    site = uplink_site()
    c = started(centre(mosquitto))
    assert c.connected.wait(5)
    started(MqttChannel(mqtt_config(mosquitto, status_interval_s=3600.0), site.outbox, site.ctx))
    assert c.wait_until(lambda c: c.status is not None and c.status.get("state") == "online", 5)
    site.status_doc["alarms"] = ["wok-1: high alarm (latched until reset)"]
    site.status_doc["detectors"][0].update(state="high-alarm", lel=64.0, latched="high")
    site.emit("alarm.raised", "wok-1", level="high", lel=64.0, zone="hot-kitchen")
    assert c.wait_until(lambda c: c.status is not None and c.status.get("alarm") is True, 5)
    assert c.status is not None and c.status["detectors"]["wok-1"]["latched"] == "high"
