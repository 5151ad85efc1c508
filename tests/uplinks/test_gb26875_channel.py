"""The GB/T 26875.3 channel against the real test centre over loopback TCP, fed by the real
durable outbox: what goes up for each event, send/confirm with retries, deny and corruption,
the centre going away and coming back, heartbeats, and the down-link (status, clock, duty
check; everything else denied)."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.model import Event
from gateway.store.events import StoredEvent
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.gb26875.centre import GbCentre, add_parser, describe_received
from gateway.uplinks.gb26875.channel import Gb26875Channel, event_app_data
from gateway.uplinks.gb26875.codec import (
    DEVICE_ALARM,
    DEVICE_BACKUP_FAULT,
    DEVICE_FAULT,
    DEVICE_MAINS_FAULT,
    DEVICE_NORMAL,
    OPERATION_RESET,
    PART_ALARM,
    PART_FAULT,
    PART_FEEDBACK,
    PART_NORMAL,
    PART_OPEN,
    AnalogValue,
    Command,
    DataType,
    DeviceOperation,
    DeviceStatus,
    Frame,
    GbTime,
    PartStatus,
    app_data,
    decode_app_data,
    encode_frame,
)
from gateway.uplinks.gb26875.config import Gb26875Config, parse_gb26875_config
from gateway.uplinks.outbox import Outbox, OutboxItem
from gateway.validate import Checker

DEVICE = 0x0379
CENTRE = 0x015B38


def site_status(alarms: bool = False, simulated: bool = False) -> dict[str, Any]:
    return {
        "site": {"id": "NC-TEST-1", "name": "Test Noodle House", "address": "1 Road"},
        "simulated": simulated,
        "detectors": [
            {"name": "wok-1", "lel": 1.0, "level": "normal", "fault": None},
            {"name": "wok-2", "lel": 1.0, "level": "normal", "fault": None},
        ],
        "valves": [
            {"name": "main-inlet", "commanded": "closed", "confirmed": True, "failed": False}
        ],
        "alarms": ["wok-1: high alarm"] if alarms else [],
        "faults": [],
    }


class Site:
    """The context a channel gets, with what it recorded."""

    def __init__(self) -> None:
        self.status_doc = site_status()
        self.recorded: list[Event] = []
        self.ctx = UplinkContext(
            "NC-TEST-1",
            "Test Noodle House",
            "1 Road",
            lambda: self.status_doc,
            self.recorded.append,
        )

    def kinds(self) -> list[str]:
        return [e.kind for e in self.recorded]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def config(port: int, **overrides: Any) -> Gb26875Config:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "device_address": DEVICE,
        "centre_address": CENTRE,
        "confirm_timeout_s": 0.3,
        "retries": 3,
        "heartbeat_s": 30.0,
        "heartbeat_bad_s": 5.0,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.2,
        "connect_timeout_s": 1.0,
        "idle_poll_s": 0.02,
    }
    values.update(overrides)
    return Gb26875Config(**values)


class Events:
    """Stores events into the outbox as the recorder would (seq order, durable)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.seq = 0

    def add(self, kind: str, source: str, utc: float | None = None, **details: Any) -> int:
        self.seq += 1
        utc = time.time() if utc is None else utc
        self.outbox.add(StoredEvent(self.seq, utc, kind, source, details))
        return self.seq


@pytest.fixture
def centre() -> Iterator[GbCentre]:
    c = GbCentre(address=CENTRE)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", "NC-TEST-1", ["gb26875"])
    yield box
    box.close()


@pytest.fixture
def site() -> Site:
    return Site()


@pytest.fixture
def start_channel(outbox: Outbox, site: Site) -> Iterator[Callable[..., Gb26875Channel]]:
    made: list[Gb26875Channel] = []

    def make(cfg: Gb26875Config, **kwargs: Any) -> Gb26875Channel:
        ch = Gb26875Channel(cfg, outbox, site.ctx, **kwargs)
        made.append(ch)
        ch.start()
        return ch

    yield make
    for ch in made:
        ch.stop()


def objects(centre: GbCentre) -> list[object]:
    """Every object of every confirmed data frame, in order, each frame once."""
    out: list[object] = []
    for r in centre.confirmed():
        assert r.data is not None, describe_received(r)
        out.extend(r.data.objects)
    return out


# -- what goes up -------------------------------------------------------------------------------


def test_alarm_goes_up_as_part_status_and_gas_concentration(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    start_channel(config(centre.port))
    events = Events(outbox)
    utc = 1735689600.0  # 2025-01-01 08:00:00 in China
    events.add("alarm.raised", "wok-1", utc, level="high", lel=51.26, zone="hot-kitchen")
    assert wait_for(lambda: outbox.pending("gb26875") == 0), centre.received
    part, analog = objects(centre)
    assert isinstance(part, PartStatus)
    assert part.part_type == 11
    assert part.part_address == 1
    assert part.status == PART_NORMAL | PART_ALARM
    assert part.description == "厨房燃气探测器 wok-1"
    assert str(part.at) == "2025-01-01 08:00:00"
    assert isinstance(analog, AnalogValue)
    assert (analog.analog_type, analog.value, analog.part_address) == (6, 513, 1)
    frame = centre.confirmed()[0].frame
    assert (frame.source, frame.destination, frame.command) == (DEVICE, CENTRE, Command.SEND_DATA)


def test_faults_valves_and_operator_actions_are_mapped(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    site.status_doc = site_status(alarms=True)
    start_channel(config(centre.port, part_addresses={"wok-2": 42}))
    events = Events(outbox)
    events.add("fault.raised", "wok-2", fault="comm", silent_s=10.2)
    events.add("valve.closed", "main-inlet", confirmed=True, after_s=0.4)
    events.add("valve.opened", "main-inlet", confirmed=True)
    events.add("uplink.down", "mqtt", error="broker away")  # not for this centre
    events.add("operator.reset", "site", operator="reset-button")
    assert wait_for(lambda: outbox.pending("gb26875") == 0), centre.received
    fault, closed, opened, op, device = objects(centre)
    assert isinstance(fault, PartStatus)
    assert (fault.part_address, fault.status) == (42, PART_NORMAL | PART_FAULT)
    assert "analog" not in [type(o).__name__.lower() for o in objects(centre)]
    assert isinstance(closed, PartStatus) and isinstance(opened, PartStatus)
    assert (closed.part_type, closed.part_address) == (106, 1001)
    assert closed.status == PART_NORMAL | PART_FEEDBACK
    assert opened.status == PART_NORMAL | PART_OPEN | PART_FEEDBACK
    assert closed.description == "燃气紧急切断阀 main-inlet"
    assert isinstance(op, DeviceOperation) and op.flags == OPERATION_RESET
    assert isinstance(device, DeviceStatus) and device.status == DEVICE_NORMAL | DEVICE_ALARM


def test_a_simulated_site_reports_test_mode_not_normal() -> None:
    cfg = config(1)
    item = OutboxItem(1, time.time(), "alarm.raised", "wok-1", {"lel": 30.0}, "NC-TEST-1-1")
    data = event_app_data(item, cfg, site_status(simulated=True))
    part = decode_app_data(data[0]).objects[0]
    assert isinstance(part, PartStatus)
    assert part.status == PART_ALARM  # bit0 = 0: test, so nobody dispatches for a demo
    # Without a status the device reports a fault: it cannot say all is well.
    site_item = OutboxItem(2, time.time(), "controller.started", "site", {}, "NC-TEST-1-2")
    (unit,) = event_app_data(site_item, cfg, None)
    device = decode_app_data(unit).objects[0]
    assert isinstance(device, DeviceStatus)
    assert device.status == DEVICE_NORMAL | DEVICE_FAULT


def test_power_events_set_the_devices_mains_and_backup_fault_bits() -> None:
    cfg = config(1)
    status = site_status()

    def device_status(kind: str) -> int:
        item = OutboxItem(5, time.time(), kind, "power", {}, "NC-TEST-1-5")
        device = decode_app_data(event_app_data(item, cfg, status)[-1]).objects[0]
        assert isinstance(device, DeviceStatus)
        return device.status

    # The event says what its bit is now, whatever the status snapshot says.
    assert device_status("power.mains_failed") == DEVICE_NORMAL | DEVICE_FAULT | DEVICE_MAINS_FAULT
    assert device_status("power.battery_low") == DEVICE_NORMAL | DEVICE_FAULT | DEVICE_BACKUP_FAULT
    assert device_status("power.restored") == DEVICE_NORMAL
    # And the status, for every other site event while the power is still out.
    status["power"] = {"mains": "failed", "battery": "low"}
    status["faults"] = ["power: mains failed"]
    bits = device_status("operator.silence")
    assert bits & DEVICE_MAINS_FAULT and bits & DEVICE_BACKUP_FAULT and bits & DEVICE_FAULT


def test_a_fan_fault_goes_up_as_the_devices_fault_not_as_a_gas_detector() -> None:
    cfg = config(1)
    status = site_status()
    status["faults"] = ["hood: fan fault (not running when it should)"]
    for kind, details in (
        ("fan.failed", {"text": "no run feedback"}),
        ("fault.cleared", {"fault": "fan"}),
    ):
        item = OutboxItem(6, time.time(), kind, "hood", details, "NC-TEST-1-6")
        objs = [decode_app_data(u).objects[0] for u in event_app_data(item, cfg, status)]
        assert [type(o) for o in objs] == [DeviceStatus], kind
    store = OutboxItem(7, time.time(), "fault.raised", "store", {"fault": "store"}, "NC-TEST-1-7")
    objs = [decode_app_data(u).objects[0] for u in event_app_data(store, cfg, status)]
    assert [type(o) for o in objs] == [DeviceStatus]


def test_an_event_with_an_impossible_time_still_goes_up_with_the_time_now() -> None:
    item = OutboxItem(3, 0.0, "alarm.raised", "wok-1", {"lel": 30.0}, "NC-TEST-1-3")  # 1970
    (part_data, _) = event_app_data(item, config(1), site_status())
    part = decode_app_data(part_data).objects[0]
    assert isinstance(part, PartStatus)
    assert part.at.year >= 2025


def test_a_stopped_channel_can_be_started_again(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    channel = start_channel(config(centre.port))
    assert centre.wait_connected(5)
    channel.stop()
    assert not channel.state.connected
    events = Events(outbox)
    events.add("alarm.raised", "wok-1", level="high", lel=52.0)
    channel.start()
    assert wait_for(lambda: outbox.pending("gb26875") == 0)
    assert "uplink.down" not in site.kinds(), "a stop is not an outage"


# -- send/confirm under faults ------------------------------------------------------------------


def test_denied_frame_is_resent_three_times_then_requeued_then_delivered(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    centre.deny_next(4)  # the first try and all 3 retries
    channel = start_channel(config(centre.port, backoff_min_s=2.0, backoff_max_s=2.0))
    Events(outbox).add("fault.raised", "wok-1", fault="sensor", text="E03")
    assert wait_for(lambda: channel.state.denied_frames == 4)
    denied = [r for r in centre.data_frames() if r.answer == "deny"]
    assert len(denied) == 4
    assert len({r.frame.serial for r in denied}) == 1, "a retry re-sends the same frame"
    assert outbox.pending("gb26875") == 1, "denied 4 times: back to the queue, not acked"
    assert "denied" in (channel.state.last_error or "")
    assert wait_for(lambda: outbox.pending("gb26875") == 0)
    assert len(centre.confirmed()) == 1
    assert centre.confirmed()[0].frame.data == denied[0].frame.data
    assert channel.state.last_error is None


def test_corrupt_confirms_cause_retries_then_a_reconnect_then_delivery(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    centre.corrupt_next(4)
    channel = start_channel(config(centre.port))
    Events(outbox).add("alarm.raised", "wok-2", level="low", lel=21.0)
    assert wait_for(lambda: outbox.pending("gb26875") == 0, 8), centre.received
    corrupted = [r for r in centre.data_frames() if r.answer == "corrupt"]
    assert len(corrupted) == 4
    assert len({r.frame.serial for r in corrupted}) == 1
    assert centre.connections == 2, "no valid confirm after 3 retries: the link is re-made"
    assert site.kinds() == ["uplink.down", "uplink.up"]
    assert "no confirm" in site.recorded[0].details["error"]
    assert channel.state.connected
    assert channel.state.resent_frames >= 3


def test_centre_away_and_back_gets_everything_in_order(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    channel = start_channel(config(centre.port))
    assert centre.wait_connected(5)
    centre.stop()
    assert wait_for(lambda: "uplink.down" in site.kinds())
    events = Events(outbox)
    for i in range(12):
        events.add("alarm.raised", "wok-1" if i % 2 else "wok-2", level="low", lel=20.0 + i)
    time.sleep(0.3)
    assert not channel.state.connected
    assert outbox.pending("gb26875") == 12
    centre.start()  # same port
    assert wait_for(lambda: outbox.pending("gb26875") == 0, 10)
    values = [o.value for o in objects(centre) if isinstance(o, AnalogValue)]
    assert values == [200 + 10 * i for i in range(12)]
    assert site.kinds() == ["uplink.down", "uplink.up"]
    assert site.recorded[1].details["down_s"] > 0


def test_heartbeat_when_idle_and_faster_while_the_link_is_bad(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    start_channel(config(centre.port, heartbeat_s=0.2, heartbeat_bad_s=0.2))
    assert centre.wait_for(lambda rs: sum(r.is_heartbeat for r in rs) >= 3, 5)
    assert all(r.answer == "confirm" for r in centre.received if r.is_heartbeat)


def test_silent_centre_gets_the_fast_heartbeat_until_it_confirms(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    centre.answer_mode = "drop"
    channel = start_channel(
        config(centre.port, heartbeat_s=30.0, heartbeat_bad_s=0.1, confirm_timeout_s=0.1, retries=1)
    )
    # Never confirmed: heartbeats at the 0.1 s pace (not 30 s), each silence a reconnect.
    assert centre.wait_for(lambda rs: sum(r.is_heartbeat for r in rs) >= 6, 5)
    assert channel.state.link_bad
    assert not channel.link_up, "connected to a centre that never confirms is not a link"
    assert centre.connections >= 2
    assert site.kinds() == ["uplink.down"], "one uplink.down per outage, not per attempt"
    centre.answer_mode = "confirm"
    assert wait_for(lambda: channel.link_up)
    assert wait_for(lambda: site.kinds() == ["uplink.down", "uplink.up"])
    beats = sum(r.is_heartbeat for r in centre.received)
    time.sleep(0.5)
    assert sum(r.is_heartbeat for r in centre.received) == beats, "good link: back to 30 s"


# -- down-link -----------------------------------------------------------------------------------


def test_centre_reads_the_device_status(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    site.status_doc = site_status(alarms=True)
    start_channel(config(centre.port))
    assert centre.wait_connected(5)
    answer = centre.read_status(site=DEVICE)
    assert answer is not None
    assert answer.command == Command.REPLY
    (device,) = decode_app_data(answer.data).objects
    assert isinstance(device, DeviceStatus)
    assert device.status == DEVICE_NORMAL | DEVICE_ALARM


def test_clock_sync_is_recorded_and_confirmed_but_does_not_set_the_clock(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    set_to: list[float] = []
    start_channel(config(centre.port), set_clock=set_to.append)
    assert centre.wait_connected(5)
    answer = centre.request(
        Command.CONTROL, app_data_clock(GbTime(0, 0, 8, 1, 1, 2030)), site=DEVICE
    )
    assert answer is not None and answer.command == Command.CONFIRM
    assert wait_for(lambda: "uplink.clock_sync" in site.kinds())
    details = site.recorded[-1].details
    assert details["applied"] is False
    assert details["centre_time"] == "2030-01-01 08:00:00"
    expected = GbTime(0, 0, 8, 1, 1, 2030).to_utc(8.0) - time.time()
    assert abs(details["offset_s"] - expected) < 60
    assert set_to == []


def test_clock_sync_sets_the_clock_only_when_allowed(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    set_to: list[float] = []
    start_channel(config(centre.port, allow_clock_set=True), set_clock=set_to.append)
    assert centre.wait_connected(5)
    answer = centre.request(
        Command.CONTROL, app_data_clock(GbTime(0, 0, 8, 1, 1, 2030)), site=DEVICE
    )
    assert answer is not None and answer.command == Command.CONFIRM
    assert set_to == [GbTime(0, 0, 8, 1, 1, 2030).to_utc(8.0)]
    assert wait_for(lambda: "uplink.clock_sync" in site.kinds())
    assert site.recorded[-1].details["applied"] is True
    # An impossible date is denied and changes nothing.
    bad = centre.request(Command.CONTROL, app_data_clock(GbTime(0, 0, 8, 31, 2, 2030)), site=DEVICE)
    assert bad is not None and bad.command == Command.DENY
    assert len(set_to) == 1


def app_data_clock(t: GbTime) -> bytes:
    return bytes((DataType.CLOCK_SYNC, 1)) + t.encode()


def test_duty_check_is_recorded_for_the_staff_and_confirmed(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    start_channel(config(centre.port))
    assert centre.wait_connected(5)
    beat = centre.request(Command.SEND_DATA, b"", site=DEVICE)  # the centre's own heartbeat
    assert beat is not None and beat.command == Command.CONFIRM
    answer = centre.duty_check(10, site=DEVICE)
    assert answer is not None and answer.command == Command.CONFIRM
    assert wait_for(lambda: "uplink.duty_check" in site.kinds())
    assert site.recorded[-1].details["timeout_min"] == 10


def test_anything_else_from_the_centre_is_denied_and_changes_nothing(
    centre: GbCentre, outbox: Outbox, site: Site, start_channel: Callable[..., Gb26875Channel]
) -> None:
    start_channel(config(centre.port))
    assert centre.wait_connected(5)
    at = GbTime(0, 0, 8, 1, 1, 2025)
    open_valve = app_data(PartStatus(1, 1, 106, 1001, PART_NORMAL | PART_OPEN, "open it", at))
    for command, data in [
        (Command.SEND_DATA, open_valve),  # "the valve is open now"
        (Command.CONTROL, open_valve),  # "open the valve"
        (Command.CONTROL, bytes((77, 1, 0))),  # an unknown type
        (Command.REQUEST, bytes((61, 1, 0))),  # a read this gateway does not offer
        (Command.CONTROL, bytes((90, 1, 1))),  # a truncated clock sync
        (9, b""),  # an unknown command
    ]:
        answer = centre.request(command, data, site=DEVICE)  # type: ignore[arg-type]
        assert answer is not None, (command, data)
        assert answer.command == Command.DENY, (command, data)
    assert site.recorded == []
    # Garbage and a frame for another device get no answer; the channel keeps working.
    assert centre.request(Command.REQUEST, b"", timeout=0.5, raw=b"\x00\xff garbage @@@") is None
    other = encode_frame(Frame(77, Command.REQUEST, CENTRE, DEVICE + 1, at, bytes((81, 1, 0))))
    assert centre.request(Command.REQUEST, b"", timeout=0.5, raw=other) is None
    Events(outbox).add("alarm.raised", "wok-1", level="high", lel=60.0)
    assert wait_for(lambda: outbox.pending("gb26875") == 0)


# -- config --------------------------------------------------------------------------------------


def test_config_is_parsed_with_safe_defaults() -> None:
    c = Checker("site.toml")
    cfg = parse_gb26875_config(
        {"host": "119.example.cn", "port": 9000, "device_address": 889, "part_addresses": {"a": 3}},
        c,
        "uplink.gb26875",
    )
    assert c.problems == []
    assert (cfg.confirm_timeout_s, cfg.retries, cfg.heartbeat_s, cfg.heartbeat_bad_s) == (
        10.0,
        3,
        30.0,
        5.0,
    )
    assert cfg.allow_clock_set is False
    assert cfg.part_addresses == {"a": 3}


def test_bad_config_names_every_problem() -> None:
    c = Checker("site.toml")
    parse_gb26875_config(
        {
            "host": "bad host!",
            "port": 70000,
            "device_address": -1,
            "confirm_timeout_s": 30,
            "detector_part_type": 12,
            "part_addresses": {"a": 1, "b": 1},
            "descriptions": {"a": "燃" * 16},
            "heartbeet_s": 5,
        },
        c,
        "uplink.gb26875",
    )
    keys = {p.key for p in c.problems}
    assert keys == {
        "uplink.gb26875.host",
        "uplink.gb26875.port",
        "uplink.gb26875.device_address",
        "uplink.gb26875.confirm_timeout_s",
        "uplink.gb26875.detector_part_type",
        "uplink.gb26875.part_addresses.b",
        "uplink.gb26875.descriptions.a",
        "uplink.gb26875.heartbeet_s",
    }
    text = "\n".join(str(p) for p in c.problems)
    assert "a number from 0.05 to 10" in text
    assert "at most 31 bytes in GB18030 (this is 32)" in text


# -- the gb-centre command -----------------------------------------------------------------------


def centre_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gasguard")
    add_parser(parser.add_subparsers())
    return parser.parse_args(["gb-centre", *argv])


def test_gb_centre_command_shows_what_a_site_sends(
    outbox: Outbox,
    site: Site,
    start_channel: Callable[..., Gb26875Channel],
    capsys: pytest.CaptureFixture[str],
) -> None:
    site.status_doc = site_status(alarms=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = centre_args(
        "--port", str(port), "--address", str(CENTRE), "--duration", "2", "--read-status"
    )
    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(args.func(args)))
    runner.start()
    start_channel(config(port))
    Events(outbox).add("alarm.raised", "wok-1", level="high", lel=51.26)
    assert wait_for(lambda: outbox.pending("gb26875") == 0)
    runner.join(10)
    assert status == [0]
    out = capsys.readouterr().out
    assert f"listening on 127.0.0.1:{port}" in out
    assert (
        "part_status: part type=11 addr=1 status=normal,alarm 0x0003 '厨房燃气探测器 wok-1'" in out
    )
    assert "analog_value: analog type=6 addr=1 value=51.3 %LEL" in out
    assert "read status: reply" in out and "device status=normal,alarm" in out
    assert "2 data frames, 0 bad" in out


def test_gb_centre_command_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    args = centre_args("--port", "70000")
    assert args.func(args) == 2
    assert "--port 70000: must be from 1 to 65535" in capsys.readouterr().out
