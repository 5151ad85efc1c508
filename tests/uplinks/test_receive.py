"""``gasguard receive``, the reference receiving centre: shows a site's events, acknowledges
each, de-duplicates by event id. Against a real mosquitto broker on loopback."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.uplinks.mqtt import MqttChannel, MqttConfig
from gateway.uplinks.mqtt.schema import Topics, encode, event_message
from gateway.uplinks.outbox import OutboxItem
from gateway.uplinks.receive import ReceivingCentre, add_parser, parse_broker
from tests.uplink_fixtures import (
    Mosquitto,
    UplinkSite,
    free_loopback_port,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
SITE = "hz-001"
TOPICS = Topics("gasguard", SITE)
# ``gasguard receive`` as the CLI will run it (the lead registers add_parser in gateway/cli.py).
RUNNER = (
    "import argparse, sys\n"
    "from gateway.uplinks.receive import add_parser\n"
    "p = argparse.ArgumentParser(prog='gasguard')\n"
    "add_parser(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def receive(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, "receive", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"},
    )


def run_in_process(*args: str) -> int:
    p = argparse.ArgumentParser(prog="gasguard")
    add_parser(p.add_subparsers(dest="command", required=True))
    ns = p.parse_args(["receive", *args])
    rc: int = ns.func(ns)
    return rc


class Listener:
    """A bare MQTT client that records what arrives on one topic and can publish anything."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.payloads: list[bytes] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.payloads.append(bytes(m.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_receive_shows_alarms_in_chinese_and_acknowledges_them(
    mosquitto: Mosquitto, uplink_site: Callable[..., UplinkSite]
) -> None:
    site = uplink_site()
    centre = receive(
        "--broker", f"{mosquitto.host}:{mosquitto.port}", "--site", SITE, "--once", "3",
        "--timeout", "30",
    )  # fmt: skip
    cfg = MqttConfig(
        host=mosquitto.host, port=mosquitto.port, tls=False, ack_timeout_s=0.5, reconnect_max_s=1
    )
    channel = MqttChannel(cfg, site.outbox, site.ctx)
    channel.start()
    try:
        site.emit("alarm.raised", "wok-1", level="high", lel=62.0)
        site.emit("valve.closed", "main", confirmed=True)
        site.emit("fault.raised", "fryer", fault="comm")
        out, err = centre.communicate(timeout=30)
        assert centre.returncode == 0, err
        assert wait_for(lambda: site.outbox.pending("mqtt") == 0, 5), "not acknowledged"
    finally:
        channel.stop()
        if centre.poll() is None:
            centre.kill()
            centre.communicate()
    lines = [line for line in out.splitlines() if " #" in line]
    seqs = [e.seq for e in site.logged()]
    assert len(lines) == 3
    assert lines[0].endswith(
        f"ALARM #{seqs[0]} alarm.raised wok-1 燃气泄漏高限报警：wok-1（62.0 %LEL）"
    )
    assert lines[1].endswith(f"ALARM #{seqs[1]} valve.closed main 紧急切断阀已关闭：main")
    assert lines[2].endswith(f"ALARM #{seqs[2]} fault.raised fryer 探测器通信故障：fryer")
    assert "status online alarm=no fault=yes" in out
    assert "# 3 event(s)" in err


def test_duplicates_are_shown_once_but_acknowledged_each_time(mosquitto: Mosquitto) -> None:
    acks = Listener(mosquitto, TOPICS.ack)
    shown = io.StringIO()
    centre = ReceivingCentre(mosquitto.host, mosquitto.port, SITE, out=shown)
    centre.start()
    try:
        assert centre.connected.wait(5)
        item = OutboxItem(5, 1_700_000_000.0, "alarm.raised", "wok-1", {"level": "low"}, "hz-001-5")
        message = encode(event_message(SITE, item))
        acks.publish(TOPICS.event, message)
        acks.publish(TOPICS.event, message)  # a re-send: our first ack was lost
        acks.publish(TOPICS.event, b"{not json")
        other = dict(event_message(SITE, item), site_id="elsewhere", event_id="elsewhere-5")
        acks.publish(TOPICS.event, encode(other))
        assert centre.wait_until(lambda c: c.duplicates == 1 and c.rejected == 2, 5)
        assert wait_for(lambda: len(acks.payloads) == 2, 5)
    finally:
        centre.stop()
        acks.close()
    assert [json.loads(p) for p in acks.payloads] == [{"event_id": "hz-001-5", "seq": 5}] * 2
    assert len(centre.events) == 1
    assert shown.getvalue().count("#5 alarm.raised wok-1 燃气泄漏低限报警：wok-1") == 1


def test_timeout_without_events_exits_1(mosquitto: Mosquitto) -> None:
    centre = receive(
        "--broker", f"{mosquitto.host}:{mosquitto.port}", "--site", SITE, "--once", "1",
        "--timeout", "1",
    )  # fmt: skip
    _, err = centre.communicate(timeout=30)
    assert centre.returncode == 1
    assert "timeout after 1 s with 0 event(s)" in err


def test_an_unreachable_broker_is_reported() -> None:
    port = free_loopback_port()
    centre = receive("--broker", f"127.0.0.1:{port}", "--site", SITE, "--timeout", "1")
    _, err = centre.communicate(timeout=30)
    assert centre.returncode == 1
    assert f"with 0 event(s), last error: cannot connect to 127.0.0.1:{port}" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "localhost", "--site", SITE], "--broker 'localhost': must be HOST:PORT"),
        (["--broker", "h:99999", "--site", SITE], "port 99999 must be from 1 to 65535"),
        (["--broker", "h:1883", "--site", "a/#"], "--site 'a/#': letters, digits"),
        (["--broker", "h:1883", "--site", SITE, "--once", "0"], "--once 0: must be from 1"),
        (["--broker", "h:1883", "--site", SITE, "--ca-file", "/nonexistent"], "need --tls"),
        (
            ["--broker", "h:1883", "--site", SITE, "--tls", "--ca-file", "/nonexistent"],
            "--ca-file /nonexistent: no such file",
        ),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_in_process(*args) == 2
    assert message in capsys.readouterr().err


def test_broker_addresses() -> None:
    assert parse_broker("127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_broker("[::1]:8883") == ("::1", 8883)
    assert parse_broker("mqtt.example.cn:8883") == ("mqtt.example.cn", 8883)
    for bad in ("", ":1883", "host:", "host:port", "a b:1"):
        with pytest.raises(ValueError, match="must be HOST:PORT"):
            parse_broker(bad)
