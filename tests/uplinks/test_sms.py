"""SMS fallback: UCS-2 encoding and segmentation, the AT-command driver against the modem
emulator on a real pty (no SIM, no network, no prompt, refused sends), and the SMS channel on
the real outbox: texted when no centre acknowledged in time or every IP link is down, not
texted when a centre has it, bounded retries. End to end: a GB/T 26875.3 centre that never
confirms -> the alarm is texted."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.model import Event
from gateway.store.events import StoredEvent
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.gb26875.centre import GbCentre
from gateway.uplinks.gb26875.channel import Gb26875Channel
from gateway.uplinks.gb26875.config import Gb26875Config
from gateway.uplinks.outbox import Outbox
from gateway.uplinks.sms.channel import SmsChannel
from gateway.uplinks.sms.config import SmsConfig, parse_sms_config
from gateway.uplinks.sms.emulator import ModemEmulator
from gateway.uplinks.sms.modem import (
    CommandError,
    Modem,
    ModemError,
    NoNetworkError,
    NoPromptError,
    NoSimError,
    check_number,
    from_ucs2_hex,
    segments,
    ucs2_hex,
)
from gateway.validate import Checker

MANAGER = "+8613800138000"
BRIGADE = "13900139000"


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- encoding ------------------------------------------------------------------------------------


def test_ucs2_hex_for_numbers_and_chinese_text() -> None:
    assert ucs2_hex("+86") == "002B00380036"
    assert ucs2_hex("燃气") == "71C36C14"
    assert from_ucs2_hex("71C36C14") == "燃气"
    with pytest.raises(ValueError, match="not UCS-2 hex"):
        from_ucs2_hex("D83D")  # half a surrogate pair


def test_short_text_is_one_sms_and_long_text_is_numbered_parts_of_70() -> None:
    assert segments("燃" * 70) == ["燃" * 70]
    parts = segments("燃" * 150)
    assert [p[:5] for p in parts] == ["(1/3)", "(2/3)", "(3/3)"]
    assert all(len(p) <= 70 for p in parts)
    assert "".join(p[5:] for p in parts) == "燃" * 150


def test_a_surrogate_pair_is_never_split() -> None:
    text = "😀" * 50  # 100 UTF-16 units
    parts = segments(text)
    assert all(len(p.encode("utf-16-be")) // 2 <= 70 for p in parts)
    assert "".join(p[5:] for p in parts) == text


def test_phone_numbers_are_checked() -> None:
    assert check_number(MANAGER) == MANAGER
    for bad in ("", "+", "138-0013", "+86 138", "1" * 21):
        with pytest.raises(ValueError, match="phone number"):
            check_number(bad)


# -- the driver against the emulator -------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[ModemEmulator]:
    em = ModemEmulator()
    em.start()
    yield em
    em.stop()


@pytest.fixture
def modem(emulator: ModemEmulator) -> Iterator[Modem]:
    m = Modem(emulator.path, command_timeout_s=1.0, prompt_timeout_s=0.5, send_timeout_s=2.0)
    m.open()
    yield m
    m.close()


def test_check_then_send_chinese_sms(emulator: ModemEmulator, modem: Modem) -> None:
    assert modem.command("AT") == []  # works with the echo still on
    status = modem.check()
    assert status.registration == "registered, home network"
    assert status.dbm == -73
    refs = modem.send_sms(MANAGER, "【燃气报警】面馆：探测器wok-1高限报警")
    assert len(refs) == 1
    (sms,) = emulator.messages()
    assert sms.number == MANAGER
    assert sms.text == "【燃气报警】面馆：探测器wok-1高限报警"
    assert sms.number_raw == ucs2_hex(MANAGER)
    sent = emulator.commands
    for cmd in ("AT+CPIN?", "AT+CREG?", "AT+CEREG?", "AT+CSQ", "AT+CMGF=1"):
        assert cmd in sent
    assert sent[-3:] == ['AT+CSCS="UCS2"', "AT+CSMP=17,167,0,8", f'AT+CMGS="{ucs2_hex(MANAGER)}"']


def test_long_text_goes_as_several_sms(emulator: ModemEmulator, modem: Modem) -> None:
    refs = modem.send_sms(BRIGADE, "气" * 100)
    assert len(refs) == 2 and refs[0] != refs[1]
    texts = [m.text for m in emulator.messages()]
    assert [t[:5] for t in texts] == ["(1/2)", "(2/2)"]
    assert "".join(t[5:] for t in texts) == "气" * 100


@pytest.mark.parametrize(
    ("setting", "value", "error", "message"),
    [
        ("sim", "absent", NoSimError, "no SIM card (SIM not inserted)"),
        ("sim", "pin", NoSimError, "'SIM PIN'"),
        ("registration", 2, NoNetworkError, "stat 2 (not registered, searching)"),
        ("registration", 3, NoNetworkError, "registration denied"),
    ],
)
def test_check_names_what_is_wrong(
    emulator: ModemEmulator, modem: Modem, setting: str, value: Any, error: type, message: str
) -> None:
    setattr(emulator, setting, value)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        modem.check()


def test_no_prompt_and_refused_sends_are_clear_errors(
    emulator: ModemEmulator, modem: Modem
) -> None:
    emulator.prompt = False
    with pytest.raises(NoPromptError, match=r"no '> ' prompt within 0\.5 s"):
        modem.send_sms(MANAGER, "测试")
    emulator.prompt = True
    emulator.fail_sends = 1
    with pytest.raises(CommandError, match=r"\+CMS ERROR: 500"):
        modem.send_sms(MANAGER, "测试")
    assert modem.send_sms(MANAGER, "测试")  # the modem is usable again
    assert [m.text for m in emulator.messages()] == ["测试"]


def test_a_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModemError, match="cannot open the port"):
        Modem(str(tmp_path / "ttyUSB9")).open()


# -- the channel ---------------------------------------------------------------------------------


class Site:
    def __init__(self) -> None:
        self.recorded: list[Event] = []
        self.ctx = UplinkContext(
            "NC-TEST-1", "东湖面馆", "南昌市东湖区示例路1号", lambda: {}, self.recorded.append
        )

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.recorded if e.kind == kind]


@pytest.fixture
def site() -> Site:
    return Site()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", "NC-TEST-1", ["gb26875", "sms"])
    yield box
    box.close()


def sms_config(port: str, **overrides: Any) -> SmsConfig:
    values: dict[str, Any] = {
        "port": port,
        "numbers": (MANAGER, BRIGADE),
        "unacked_after_s": 0.3,
        "attempts": 3,
        "retry_delay_s": 0.05,
        "command_timeout_s": 1.0,
        "prompt_timeout_s": 0.3,
        "send_timeout_s": 2.0,
        "poll_s": 0.02,
    }
    values.update(overrides)
    return SmsConfig(**values)


@pytest.fixture
def start_sms(outbox: Outbox, site: Site) -> Iterator[Callable[..., SmsChannel]]:
    made: list[SmsChannel] = []

    def make(cfg: SmsConfig, **kwargs: Any) -> SmsChannel:
        ch = SmsChannel(cfg, outbox, site.ctx, **kwargs)
        made.append(ch)
        ch.start()
        return ch

    yield make
    for ch in made:
        ch.stop()


class Events:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.seq = 0

    def add(self, kind: str, source: str, utc: float | None = None, **details: Any) -> int:
        self.seq += 1
        utc = time.time() if utc is None else utc
        self.outbox.add(StoredEvent(self.seq, utc, kind, source, details))
        return self.seq


def test_unacknowledged_alarm_is_texted_to_every_number(
    emulator: ModemEmulator, outbox: Outbox, site: Site, start_sms: Callable[..., SmsChannel]
) -> None:
    channel = start_sms(sms_config(emulator.path))
    utc = 1735689600.0 - 10.0  # 2025-01-01 07:59:50 in China
    seq = Events(outbox).add("alarm.raised", "wok-1", utc, level="high", lel=51.26, zone="hot")
    assert wait_for(lambda: len(emulator.messages()) == 2), channel.state
    by_number = {m.number: m.text for m in emulator.messages()}
    assert set(by_number) == {MANAGER, BRIGADE}
    text = by_number[MANAGER]
    assert text == (
        f"【燃气报警】东湖面馆 wok-1高限报警51.3%LEL 01-01 07:59 南昌市东湖区示例路1号 "
        f"#NC-TEST-1-{seq}"
    )
    assert len(text) <= 70, "one SMS each"
    assert wait_for(lambda: len(site.of_kind("sms.sent")) == 1)
    sent = site.of_kind("sms.sent")[0].details
    assert sent["numbers"] == [MANAGER, BRIGADE]
    assert "not acknowledged within 0.3 s by gb26875" in sent["reason"]
    assert wait_for(lambda: outbox.pending("sms") == 0)
    assert outbox.pending("gb26875") == 1, "the centre still gets it when it comes back"
    assert channel.state.texted == 1 and channel.state.modem_ok


def test_alarm_a_centre_acknowledged_is_not_texted(
    emulator: ModemEmulator, outbox: Outbox, site: Site, start_sms: Callable[..., SmsChannel]
) -> None:
    start_sms(sms_config(emulator.path, unacked_after_s=1.0))
    events = Events(outbox)
    seq = events.add("alarm.raised", "wok-1", level="low", lel=22.0)
    outbox.ack("gb26875", seq)
    events.add("controller.started", "site")
    events.add("fault.raised", "wok-2", fault="comm")  # not a kind that is texted
    assert wait_for(lambda: outbox.pending("sms") == 0)
    time.sleep(1.2)  # past unacked_after_s: still nothing
    assert emulator.messages() == []
    assert site.of_kind("sms.sent") == []


def test_every_ip_link_down_texts_at_once(
    emulator: ModemEmulator, outbox: Outbox, site: Site, start_sms: Callable[..., SmsChannel]
) -> None:
    links = {"gb26875": True, "mqtt": False}
    start_sms(
        sms_config(emulator.path, unacked_after_s=600.0),
        ip_links=[lambda: links["gb26875"], lambda: links["mqtt"]],
    )
    Events(outbox).add("alarm.raised", "wok-2", level="high", lel=60.0)
    time.sleep(0.5)
    assert emulator.messages() == [], "one IP link is up: wait for its acknowledgement"
    assert outbox.pending("sms") == 1
    links["gb26875"] = False
    assert wait_for(lambda: len(emulator.messages()) == 2)
    assert wait_for(lambda: len(site.of_kind("sms.sent")) == 1)
    assert site.of_kind("sms.sent")[0].details["reason"] == "every IP channel down"


def test_no_sim_gives_up_after_the_attempts_and_records_why(
    emulator: ModemEmulator, outbox: Outbox, site: Site, start_sms: Callable[..., SmsChannel]
) -> None:
    emulator.sim = "absent"
    channel = start_sms(sms_config(emulator.path))
    Events(outbox).add("alarm.raised", "wok-1", level="high", lel=70.0)
    assert wait_for(lambda: len(site.of_kind("sms.failed")) == 1)
    failed = site.of_kind("sms.failed")[0].details
    assert failed["numbers"] == [MANAGER, BRIGADE]
    assert "no SIM card (SIM not inserted)" in failed["error"]
    assert emulator.commands.count("AT+CPIN?") >= 3, "bounded: one check per attempt"
    assert emulator.messages() == []
    assert wait_for(lambda: outbox.pending("sms") == 0)
    assert not channel.state.modem_ok
    assert "SIM" in (channel.state.last_error or "")


def test_no_network_and_no_prompt_are_recorded(
    emulator: ModemEmulator, outbox: Outbox, site: Site, start_sms: Callable[..., SmsChannel]
) -> None:
    emulator.registration = 0
    start_sms(sms_config(emulator.path, attempts=2))
    events = Events(outbox)
    events.add("alarm.raised", "wok-1", level="high", lel=70.0)
    assert wait_for(lambda: len(site.of_kind("sms.failed")) == 1)
    assert "not registered on a network" in site.of_kind("sms.failed")[0].details["error"]
    emulator.registration = 1
    emulator.prompt = False
    events.add("valve.failed", "main-inlet", text="valve reports open while commanded closed")
    assert wait_for(lambda: len(site.of_kind("sms.failed")) == 2)
    assert "no '> ' prompt" in site.of_kind("sms.failed")[1].details["error"]


def test_a_refused_send_is_retried_only_to_the_numbers_still_missing(
    emulator: ModemEmulator, outbox: Outbox, site: Site, start_sms: Callable[..., SmsChannel]
) -> None:
    emulator.fail_sends = 1  # the first message (to the manager) is refused once
    start_sms(sms_config(emulator.path))
    Events(outbox).add("alarm.raised", "wok-2", level="low", lel=25.0)
    assert wait_for(lambda: len(site.of_kind("sms.sent")) == 1)
    numbers = [m.number for m in emulator.messages()]
    assert numbers == [MANAGER, BRIGADE], "each number got the alarm once"
    assert emulator.commands.count(f'AT+CMGS="{ucs2_hex(MANAGER)}"') == 2
    assert emulator.commands.count(f'AT+CMGS="{ucs2_hex(BRIGADE)}"') == 1
    assert site.of_kind("sms.failed") == []


def test_centre_that_never_confirms_leads_to_an_sms(
    emulator: ModemEmulator, outbox: Outbox, site: Site, start_sms: Callable[..., SmsChannel]
) -> None:
    centre = GbCentre(address=1)
    centre.answer_mode = "drop"
    centre.start()
    gb = Gb26875Channel(
        Gb26875Config(
            host="127.0.0.1",
            port=centre.port,
            device_address=2,
            centre_address=1,
            confirm_timeout_s=0.2,
            retries=1,
            backoff_min_s=0.05,
            backoff_max_s=0.1,
        ),
        outbox,
        site.ctx,
    )
    gb.start()
    try:
        start_sms(sms_config(emulator.path, unacked_after_s=1.0))
        Events(outbox).add("alarm.raised", "wok-1", level="high", lel=80.0)
        assert centre.wait_for(lambda rs: any(r.frame.data for r in rs), 5)
        assert wait_for(lambda: len(emulator.messages()) == 2, 8)
        assert all("wok-1" in m.text for m in emulator.messages())
        assert wait_for(lambda: len(site.of_kind("sms.sent")) == 1)
        reason = site.of_kind("sms.sent")[0].details["reason"]
        assert reason == "not acknowledged within 1 s by gb26875"
        assert not gb.link_up
        assert outbox.pending("gb26875") == 1, "never confirmed: still queued for the centre"
        assert centre.confirmed() == []
    finally:
        gb.stop()
        centre.stop()


# -- config --------------------------------------------------------------------------------------


def test_sms_config_defaults_and_errors() -> None:
    c = Checker("site.toml")
    cfg = parse_sms_config({"port": "/dev/ttyUSB2", "numbers": [MANAGER]}, c, "uplink.sms")
    assert c.problems == []
    assert (cfg.unacked_after_s, cfg.attempts, cfg.send_timeout_s) == (60.0, 3, 60.0)
    assert cfg.kinds == ("alarm.raised", "valve.failed")
    c = Checker("site.toml")
    parse_sms_config(
        {
            "port": "",
            "numbers": ["12", MANAGER, MANAGER],
            "baud": 12345,
            "unacked_after_s": -1,
            "kinds": ["alarm"],
            "watch": "gb26875",
            "attemps": 2,
        },
        c,
        "uplink.sms",
    )
    problems = {(p.key, str(p.value)) for p in c.problems}
    assert ("uplink.sms.port", "") in problems
    assert ("uplink.sms.numbers", "12") in problems
    assert any(k == "uplink.sms.numbers" and "13800138000" in v for k, v in problems)
    assert {p.key for p in c.problems} == {
        "uplink.sms.port",
        "uplink.sms.numbers",
        "uplink.sms.baud",
        "uplink.sms.unacked_after_s",
        "uplink.sms.kinds",
        "uplink.sms.watch",
        "uplink.sms.attemps",
    }
