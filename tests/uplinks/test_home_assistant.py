"""gasguard against a real Home Assistant (2024.3.3, its MQTT integration, a real mosquitto):
what a kitchen owner sees on the phone, read back through Home Assistant's REST API (issue 19).

The gateway side is the real MQTT channel, outbox and recorder (``UplinkSite``); the status it
publishes is a controller status document the test sets, so each state (a stuck valve, a silent
detector, a latched alarm) is shown exactly when the test wants it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.uplinks.mqtt import MqttChannel, MqttConfig
from tests.home_assistant import HomeAssistant
from tests.uplink_fixtures import Mosquitto, UplinkSite, free_loopback_port, wait_for

SHOWN_S = 10.0  # Home Assistant follows the broker within milliseconds; this is a hang bound


@pytest.fixture(scope="module")
def home_assistant(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HomeAssistant, Mosquitto]]:
    """One Home Assistant (onboarded, MQTT integration added) and its broker for the module."""
    work = tmp_path_factory.mktemp("home-assistant")
    broker = Mosquitto(work / "broker")
    broker.start()
    ha = HomeAssistant(work / "config", free_loopback_port())
    try:
        ha.start()
        ha.add_mqtt(broker.host, broker.port)
        yield ha, broker
    finally:
        ha.stop()
        broker.stop()


def shown(ha: HomeAssistant, name: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The entity named ``name`` once ``check`` holds for it (fails after SHOWN_S)."""
    last: list[dict[str, Any] | None] = [None]

    def ok() -> bool:
        last[0] = ha.entity(name)
        return last[0] is not None and check(last[0])

    assert wait_for(ok, SHOWN_S, 0.1), f"{name}: {last[0]}\n{ha.log_tail()}"
    assert last[0] is not None
    return last[0]


def state_is(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["state"] == value


def test_the_owner_sees_faults_a_stuck_valve_a_latched_alarm_and_the_event_text(
    home_assistant: tuple[HomeAssistant, Mosquitto],
    uplink_site: Callable[..., UplinkSite],
    tmp_path: Path,
) -> None:
    ha, broker = home_assistant
    site = uplink_site()
    status = site.status_doc
    wok = status["detectors"][0]
    wok["label"] = "炒锅上方"
    valve = status["valves"][0]
    valve.update(label="总阀", commanded="closed", feedback="open", failed=True, reason="start-up")
    status["faults"] = ["fryer: comm: timeout", "main: valve fault"]
    cfg = MqttConfig(
        host=broker.host,
        port=broker.port,
        tls=False,
        homeassistant=True,
        homeassistant_language="zh",
        delivery="broker",
        reconnect_min_s=1,
        reconnect_max_s=1,
    )
    channel = MqttChannel(cfg, site.outbox, site.ctx)
    channel.start()
    try:
        # Faults are visible: the silent detector is a problem and has no value (never the
        # last one); the valve that failed to close shows open and a problem, not "closing".
        shown(ha, "炒锅上方 燃气报警", state_is("off"))
        shown(ha, "fryer 故障", state_is("on"))
        shown(ha, "fryer 燃气浓度", state_is("unknown"))
        stuck = shown(ha, "总阀 燃气紧急切断阀", state_is("open"))
        assert stuck["attributes"]["stuck_open"] is True
        assert stuck["attributes"]["condition"] == "stuck-open"
        shown(ha, "总阀 切断阀故障", state_is("on"))
        site_fault = shown(ha, "故障（任一部件）", state_is("on"))
        assert "fryer: comm: timeout" in site_fault["attributes"]["faults"]
        shown(ha, "燃气报警（任一探测器）", state_is("off"))

        # A leak at wok-1: the alarm, latched, and why; the event's text in Chinese.
        wok.update(state="high-alarm", level="high", latched="high", lel=62.0)
        status["alarms"] = ["wok-1: high alarm (latched until reset)"]
        site.emit("alarm.raised", "wok-1", level="high", lel=62.0, zone="hot-kitchen")
        alarm = shown(ha, "炒锅上方 燃气报警", state_is("on"))
        assert alarm["attributes"]["reset_needed"] is True
        assert alarm["attributes"]["latched"] == "high"
        lel = shown(ha, "炒锅上方 燃气浓度", state_is("62.0"))
        assert lel["attributes"]["unit_of_measurement"] == "%LEL"
        shown(ha, "燃气报警（任一探测器）", state_is("on"))
        last = shown(ha, "最近事件", lambda e: "燃气泄漏高限报警" in e["state"])
        assert last["attributes"]["kind"] == "alarm.raised"
        assert "wok-1" in last["attributes"]["text"]

        # Gas gone, alarm still latched: "Detected" stays until the local reset.
        wok.update(state="high-alarm", level="normal", lel=1.0)
        site.emit("alarm.cleared", "wok-1", lel=1.0, latched="high")
        shown(ha, "炒锅上方 燃气浓度", state_is("1.0"))
        assert shown(ha, "炒锅上方 燃气报警", state_is("on"))["attributes"]["reset_needed"]

        # Home Assistant sends no end-to-end ack: with delivery = "broker" nothing waits.
        assert wait_for(lambda: site.outbox.pending("mqtt") == 0, 5)
        assert channel.state.resent == 0
    finally:
        channel.stop()
    # Stopped (the same Last Will a crash leaves): every entity unavailable, and the templates
    # render what Home Assistant ignores, so it logs no warning per entity.
    for name in ("炒锅上方 燃气报警", "fryer 燃气浓度", "总阀 燃气紧急切断阀", "故障（任一部件）"):
        shown(ha, name, state_is("unavailable"))
    noisy = [
        line
        for line in ha.log_text().splitlines()
        if re.search(r"\b(WARNING|ERROR)\b", line) and "mqtt" in line.lower()
    ]
    assert noisy == [], "\n".join(noisy)
