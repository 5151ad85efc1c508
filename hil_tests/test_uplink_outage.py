"""HIL scenario with the real MQTT broker: an uplink outage during a leak loses nothing.

The gateway forwards every stored event through its durable outbox and MQTT channel to a real
mosquitto broker on loopback, where the reference receiving centre (``gateway.uplinks.receive``)
acknowledges them. The broker goes down while the leak spreads; when it is back, the centre has
every event of the gateway's event log, each once, and the valve never moved for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.store.events import EventStore
from gateway.uplinks.receive import ReceivingCentre
from hil_tests.conftest import Timings
from hil_tests.fixture_client import ticks_diff
from hil_tests.rigs import DetectorSpec, Gateway, Rig, Site, wait_for
from tests.uplink_fixtures import Mosquitto, find_mosquitto

LEAK_LEL = 60.0
DELIVERY_BUDGET_S = 20.0


@pytest.fixture
def broker(rig: Rig, tmp_path: Path) -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        why = "the uplink scenario needs the mosquitto broker (apt-get install -y mosquitto)"
        if rig.name == "hw":
            pytest.skip(why)
        pytest.fail(why)
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


def logged_ids(gateway: Gateway) -> set[str]:
    recorder = gateway.controller.recorder
    assert recorder is not None and recorder.flush(5)
    with EventStore.open_readonly(gateway.controller.events_path) as reader:
        rows = reader.since(0, 100_000)
    return {f"{gateway.config.site.id}-{r.seq}" for r in rows}


def test_an_uplink_outage_during_a_leak_delivers_every_event_after_reconnect(
    rig: Rig,
    start_gateway: Callable[[Site], Gateway],
    broker: Mosquitto,
    timings: Timings,
) -> None:
    uplink = (
        "[uplink.mqtt]\n"
        f'host = "{broker.host}"\n'
        f"port = {broker.port}\n"
        "tls = false\n"
        "ack_timeout_s = 2.0\n"
        "reconnect_min_s = 1\n"
        "reconnect_max_s = 1\n"
    )
    detectors = (
        DetectorSpec("det-1", 1, "generic-cn-kitchen"),
        DetectorSpec("det-2", 2, "generic-cn-kitchen"),
    )
    gateway = start_gateway(Site(detectors, extra_config=uplink))
    site_id = gateway.config.site.id
    centre = ReceivingCentre(broker.host, broker.port, site_id)
    centre.start()
    try:
        assert centre.connected.wait(5), "the receiving centre did not subscribe"
        rig.open_valve(gateway)
        fx = rig.fixture
        step = fx.command(f"gas 1 {LEAK_LEL}").at
        closed = fx.wait_edge("valve", 0, step, 10.0)
        assert closed is not None
        assert centre.wait_until(
            lambda c: any(e["kind"] == "alarm.raised" for e in c.events), 10.0
        ), "the first alarm never reached the centre"

        broker.stop()
        fx.command("gas 2 30")  # the leak spreads while the uplink is down: a low alarm
        fx.command("gas 1 5")  # and clears at det-1 (the latch stays)

        def raised_at_det2() -> bool:
            return any(k == "alarm.raised" and s == "det-2" for k, s, _ in gateway.events())

        assert wait_for(raised_at_det2, 5.0), "det-2's alarm was not stored"
        assert wait_for(lambda: "alarm.cleared" in gateway.kinds(), 5.0)

        # The uplinks process reports its outbox to the safety process's status.
        def waiting() -> bool:
            mqtt = gateway.status()["uplinks"].get("mqtt", {})
            return int(mqtt.get("pending", 0)) >= 1

        assert wait_for(waiting, 5.0), "nothing waited in the outbox"

        back = fx.now()
        broker.start()

        def complete() -> bool:
            return set(str(e["event_id"]) for e in centre.events) >= logged_ids(gateway)

        assert wait_for(complete, DELIVERY_BUDGET_S, 0.1), (
            f"missing: {sorted(logged_ids(gateway) - {str(e['event_id']) for e in centre.events})}"
        )
        timings.record(
            "uplink outage",
            "broker back -> every event delivered",
            ticks_diff(fx.now(), back) / 1e6,
            DELIVERY_BUDGET_S,
        )
        ids = [str(e["event_id"]) for e in centre.events]
        assert len(ids) == len(set(ids)), "an event reached the centre twice"
        kinds = [(e["kind"], e["source"]) for e in centre.events]
        assert ("alarm.raised", "det-2") in kinds and ("alarm.cleared", "det-1") in kinds
        assert fx.edges("valve", closed.at)[1:] == [], "the uplink moved the valve"
    finally:
        centre.stop()
