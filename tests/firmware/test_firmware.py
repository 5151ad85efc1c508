"""The HIL fixture firmware's logic under CPython: what it puts on the wire must be what the
gateway's own profile decoder reads, its Modbus framing and replies must be what a real slave
sends, and a bad command must change nothing.

The firmware modules (firmware/fixture, the fake ``machine`` of firmware/host) are MicroPython
code type-checked with the MicroPython stubs by pyright; here they are loaded as plain modules.
The same logic runs under the real MicroPython VM in ``test_firmware_wasm.py``.
"""

from __future__ import annotations

import importlib
import math
import os
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.core.model import Level
from gateway.profiles import Profile, default_profiles_dir, load_profiles
from gateway.rtu import t35
from gateway.sim.emulator import crc16_modbus, with_crc

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
PROFILES = load_profiles(default_profiles_dir())


def fw(name: str) -> ModuleType:
    """A firmware module, imported from firmware/ (and firmware/host for ``machine``)."""
    for path in (FIRMWARE / "host", FIRMWARE):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module(name)


detectors = fw("fixture.detectors")
crc = fw("fixture.crc")
rtu = fw("fixture.rtu")
lines = fw("fixture.lines")
machine = fw("machine")


def registers(det: Any, image: Any = None) -> list[int]:
    data = bytes(det.image if image is None else image)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def expected_level(lel: float) -> Level:
    return Level.HIGH if lel >= 50.0 else Level.LOW if lel >= 20.0 else Level.NORMAL


def step_of(profile: Profile) -> float:
    """How far a decoded value may be from the set one: half a count for an integer type; a
    float32's rounding otherwise."""
    return profile.scale / 2 + 1e-9 if profile.value_type != "float32" else 1e-4


# -- one source of truth -----------------------------------------------------------------------


def test_generated_profile_module_is_current() -> None:
    sys.path.insert(0, str(FIRMWARE / "tools"))
    try:
        gen = importlib.import_module("gen_profiles")
    finally:
        sys.path.remove(str(FIRMWARE / "tools"))
    current = (FIRMWARE / "fixture" / "profiles_data.py").read_text(encoding="utf-8")
    assert current == gen.render(PROFILES), "run firmware/tools/gen_profiles.py"
    assert sorted(fw("fixture.profiles_data").PROFILES) == sorted(PROFILES)


@pytest.mark.parametrize("name", sorted(PROFILES))
@settings(max_examples=60, deadline=None)
@given(lel=st.floats(min_value=-4.0, max_value=100.0, allow_nan=False))
def test_what_the_fixture_encodes_the_gateway_decodes(name: str, lel: float) -> None:
    profile = PROFILES[name]
    det = detectors.Detector(1, name)
    det.set_gas(lel)
    assert (det.block_start, det.block_count) == profile.block
    decoded = profile.decode(registers(det))
    assert decoded.fault is None
    assert decoded.lel is not None and abs(decoded.lel - lel) <= step_of(profile)
    assert decoded.own_alarm == expected_level(lel)
    # The gateway's emulator writes the same registers for the same detector state (the
    # float32 value aside, whose last bit may round differently from a float64 division).
    want = profile.encode(lel, expected_level(lel), False)
    start = profile.block[0]
    got = registers(det)
    for address, value in want.items():
        if profile.value_type == "float32" and address in (
            profile.value_register,
            profile.value_register + 1,
        ):
            continue
        assert got[address - start] == value, (address, got, want)


@pytest.mark.parametrize("name", sorted(PROFILES))
@given(code=st.integers(min_value=1, max_value=65535), lel=st.sampled_from([0.0, 25.0, 60.0]))
@settings(max_examples=40, deadline=None)
def test_a_fault_code_is_a_detector_fault_for_the_gateway(name: str, code: int, lel: float) -> None:
    # A raw status code that means "low" or "high alarm" there is not a fault code.
    assume(not (name == "generic-cn-kitchen" and code in (1, 2)))
    profile = PROFILES[name]
    det = detectors.Detector(3, name)
    det.set_gas(lel)
    det.set_fault(code)
    decoded = profile.decode(registers(det))
    assert decoded.fault is not None, (code, registers(det))
    det.set_fault(0)
    assert profile.decode(registers(det)).fault is None


def test_out_of_range_values_clamp_like_the_gateway_emulator() -> None:
    det = detectors.Detector(1, "generic-cn-kitchen")
    det.set_gas(5000.0)
    assert registers(det)[0] == 32767
    assert PROFILES["generic-cn-kitchen"].decode(registers(det)).lel == pytest.approx(3276.7)


def test_detector_rejects_unknown_profile_and_bad_address() -> None:
    with pytest.raises(ValueError, match="profile 'nope' is not known: one of generic-cn"):
        detectors.Detector(1, "nope")
    with pytest.raises(ValueError, match="address 0 is not allowed: 1-247"):
        detectors.Detector(0, "generic-cn-kitchen")


def test_ramp_moves_linearly_and_ends_at_the_target() -> None:
    det = detectors.Detector(1, "generic-cn-kitchen")
    det.start_ramp(40.0, 1_000_000, 0)
    det.step(0)
    det.step(500_000)
    assert det.lel == pytest.approx(20.0)
    det.step(510_000)  # before the next ramp step: unchanged
    assert det.lel == pytest.approx(20.0)
    det.step(1_000_000)
    assert det.lel == 40.0 and not det.ramping
    assert registers(det)[0] == 400


# -- CRC and timing -----------------------------------------------------------------------------


@given(st.binary(min_size=0, max_size=64))
def test_crc_matches_the_gateway(data: bytes) -> None:
    buf = bytearray(data) + bytearray(2)
    assert crc.crc16(buf, len(data)) == crc16_modbus(data)
    framed = bytearray(with_crc(data))
    assert crc.crc_ok(framed, len(framed)) == (len(framed) >= 4)


@pytest.mark.parametrize("baud", [1200, 4800, 9600, 19200, 38400, 115200])
@pytest.mark.parametrize("parity", ["N", "E"])
def test_t35_matches_the_gateway(baud: int, parity: str) -> None:
    assert rtu.t35_us(baud, parity, 1) == pytest.approx(t35(baud, parity, 1) * 1e6, abs=1)


# -- the RTU slave, on the fake machine's in-memory wire -----------------------------------------


class Port:
    """The RTU port as ``fixture.hal.RtuPort`` presents it, on a ``MemoryWire``."""

    def __init__(self) -> None:
        self.wire: Any = machine.MemoryWire()

    def any(self) -> int:
        return int(self.wire.any())

    def readinto(self, buf: bytearray) -> int:
        return int(self.wire.readinto(buf))

    def send(self, view: memoryview) -> None:
        self.wire.write(view)


@pytest.fixture
def slave() -> Iterator[tuple[Any, Port, list[Any]]]:
    port = Port()
    dets: list[Any] = []
    s = rtu.RtuSlave(port, dets)
    s.configure(9600, "N", 1)
    yield s, port, dets


def serve(s: Any, port: Port, frame: bytes, t0: int = 1000) -> bytes:
    """Feed ``frame`` at ``t0`` us, let t3.5 pass, return what the slave sent."""
    port.wire.feed(frame)
    s.poll(t0)
    s.poll(t0 + s.t35 - 1)
    assert port.wire.tx_len == 0, "replied before t3.5 of silence"
    s.poll(t0 + s.t35)
    return bytes(port.wire.take_tx())


def read(address: int, start: int, count: int, function: int = 3) -> bytes:
    return with_crc(struct.pack(">BBHH", address, function, start, count))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_reply_to_a_block_read_is_what_the_gateway_expects(
    slave: tuple[Any, Port, list[Any]], name: str
) -> None:
    s, port, dets = slave
    profile = PROFILES[name]
    det = detectors.Detector(5, name)
    det.set_gas(33.0)
    dets.append(det)
    start, count = profile.block
    reply = serve(s, port, read(5, start, count, profile.function_code))
    assert reply[:3] == bytes([5, profile.function_code, 2 * count])
    assert crc16_modbus(reply[:-2]) == int.from_bytes(reply[-2:], "little")
    regs = [int.from_bytes(reply[3 + 2 * i : 5 + 2 * i], "big") for i in range(count)]
    decoded = profile.decode(regs)
    assert decoded.lel == pytest.approx(33.0, abs=step_of(profile))
    assert decoded.own_alarm == Level.LOW and decoded.fault is None
    assert (det.requests, det.replies, s.replies) == (1, 1, 1)


def test_exceptions_silence_and_foreign_frames(slave: tuple[Any, Port, list[Any]]) -> None:
    s, port, dets = slave
    dets.append(detectors.Detector(1, "generic-cn-kitchen"))
    assert serve(s, port, read(1, 0, 3))[1:3] == b"\x83\x02"  # past the block
    assert serve(s, port, read(1, 0, 0))[1:3] == b"\x83\x03"  # count 0
    assert serve(s, port, read(1, 0, 2, function=4))[1:3] == b"\x84\x01"  # profile uses FC03
    assert serve(s, port, read(2, 0, 2)) == b""  # nobody at address 2
    assert serve(s, port, read(0, 0, 2)) == b""  # broadcast
    garbled = bytearray(read(1, 0, 2))
    garbled[3] ^= 1
    assert serve(s, port, bytes(garbled)) == b""
    dets[0].silent = True
    assert serve(s, port, read(1, 0, 2)) == b""
    assert (s.foreign, s.bad_frames, dets[0].requests) == (2, 1, 4)


def test_two_frames_with_a_t35_gap_are_two_frames(slave: tuple[Any, Port, list[Any]]) -> None:
    s, port, dets = slave
    dets.append(detectors.Detector(1, "generic-cn-kitchen"))
    port.wire.feed(b"\x01\x03\x00")  # a master that gave up half-way
    s.poll(0)
    s.poll(s.t35 + 10)  # silence: that fragment is a (bad) frame of its own
    port.wire.feed(read(1, 0, 2))
    s.poll(s.t35 + 20)
    s.poll(2 * s.t35 + 30)
    assert s.bad_frames == 1
    reply = bytes(port.wire.take_tx())
    assert reply[:3] == b"\x01\x03\x04"
    assert crc16_modbus(reply[:-2]) == int.from_bytes(reply[-2:], "little")
    assert s.replies == 1


def test_corrupt_noise_and_delay(slave: tuple[Any, Port, list[Any]]) -> None:
    s, port, dets = slave
    det = detectors.Detector(1, "generic-cn-kitchen")
    dets.append(det)
    det.corrupt = 1
    bad = serve(s, port, read(1, 0, 2))
    good = serve(s, port, read(1, 0, 2))
    assert crc16_modbus(bad[:-2]) != int.from_bytes(bad[-2:], "little")
    assert crc16_modbus(good[:-2]) == int.from_bytes(good[-2:], "little")
    s.set_noise(1000, 7)  # every reply
    assert crc16_modbus((r := serve(s, port, read(1, 0, 2)))[:-2]) != int.from_bytes(
        r[-2:], "little"
    )
    s.set_noise(0, 7)
    det.delay_us = 5000
    port.wire.feed(read(1, 0, 2))
    s.poll(0)
    s.poll(s.t35)
    assert port.wire.tx_len == 0, "a delayed reply went out early"
    s.poll(s.t35 + 4999)
    assert port.wire.tx_len == 0
    s.poll(s.t35 + 5000)
    assert port.wire.tx_len == 9
    with pytest.raises(ValueError, match="noise 1001 is not allowed: 0-1000"):
        s.set_noise(1001, 1)
    with pytest.raises(ValueError, match="parity 'X' is not allowed"):
        s.configure(9600, "X", 1)


def test_noise_sequence_is_the_documented_one() -> None:
    s = rtu.RtuSlave(Port(), [])
    s.set_noise(10, 0xACE1)
    hits = [i for i in range(200) if s._noise_hit()]
    assert hits[:2] == [37, 57]  # replies 38 and 58, as the HIL suite's NOISE_SEED says


# -- lines ----------------------------------------------------------------------------------------


def test_edge_log_counts_what_it_cannot_hold() -> None:
    log = lines.EdgeLog(4)
    for i in range(5):
        log.record(0, i % 2, i)
    assert log.lost == 2  # a ring of 4 holds 3
    got = []
    while log.pending():
        got.append(log.pop())
    assert got == [(0, 0, 0), (0, 1, 1), (0, 0, 2)]


def test_valve_body_follows_the_drive_after_its_delay_or_sticks() -> None:
    body = lines.ValveBody(delay_us=100_000)
    assert body.closed and body.contact_level() == 1
    assert not body.step(50_000, 1, 0)  # energised 50 ms ago: still travelling
    assert body.step(100_000, 1, 0) and not body.closed and body.contact_level() == 0
    body.set_mode(lines.STUCK_OPEN)
    assert not body.step(500_000, 0, 200_000)
    assert body.contact_level() == 0
    body.set_mode(lines.STUCK_CLOSED)
    assert body.step(500_001, 1, 200_000) and body.contact_level() == 1
    body.closed_level = 0
    assert body.contact_level() == 0
    with pytest.raises(ValueError, match="valve delay -1 us is not allowed"):
        body.set_follow(-1)


# -- the whole fixture on the fake machine: commands -----------------------------------------------


@pytest.fixture
def fixture() -> Iterator[Any]:
    machine.reset()
    selftest = fw("selftest")
    hal = fw("fixture.hal")
    app = fw("fixture.app")
    fx = app.Fixture(hal.Hal(console=selftest.MemoryConsole()))
    yield fx
    machine.reset()


BAD_COMMANDS = [
    ("", "err : empty command"),
    ("launch", "err launch: unknown command"),
    ("bus 9601 N 1", "err bus: baud 9601 is not allowed"),
    ("bus 9600 X 1", "err bus: parity 'X' is not allowed"),
    ("add 300 generic-cn-kitchen", "err add: address 300 is not allowed: 1-247"),
    ("add 1", "err add: takes <addr> <profile>, got 1"),
    ("gas 2 10", "err gas: address 2 has no detector (have 1)"),
    ("gas 1 nan", "err gas: lel nan is not allowed"),
    ("gas 1 1e9", "err gas: lel 1e9 is not allowed"),
    ("ramp 1 10 -5", "err ramp: ramp time ms -5 is not allowed"),
    ("fault 1 70000", "err fault: fault code 70000 is not allowed: 0-65535"),
    ("silent 1 2", "err silent: silent 2 is not allowed: 0-1"),
    ("noise 5 0", "err noise: noise seed 0 is not allowed: 1-65535"),
    ("valve stuck half", "err valve: stuck 'half' is not allowed: open or closed"),
    ("valve spin 1", "err valve: 'spin' is not allowed"),
    ("press panic 100", "err press: button 'panic' is not allowed: reset or silence"),
]


@pytest.mark.parametrize(("line", "error"), BAD_COMMANDS)
def test_a_bad_command_is_refused_clearly_and_changes_nothing(
    fixture: Any, line: str, error: str
) -> None:
    assert fixture.command("add 1 generic-cn-kitchen", 0).startswith("ok add 1")
    fixture.command("gas 1 12.5", 0)
    before = bytes(fixture.detectors[0].image)
    state = (fixture.slave.t35, fixture.slave.noise_permille, fixture.valve.mode)
    reply = fixture.command(line, 0)
    assert reply.startswith(error), reply
    assert bytes(fixture.detectors[0].image) == before
    assert (fixture.slave.t35, fixture.slave.noise_permille, fixture.valve.mode) == state
    assert len(fixture.detectors) == 1


def test_at_most_eight_detectors(fixture: Any) -> None:
    for address in range(1, 9):
        assert fixture.command(f"add {address} msa-ultima-x", 0).startswith("ok")
    reply = fixture.command("add 9 msa-ultima-x", 0)
    assert reply.startswith("err add: already 8 detectors: the fixture emulates at most 8")
    assert fixture.command("clear", 0).startswith("ok clear")
    assert fixture.detectors == [] and fixture.slave.detectors is fixture.detectors


def test_replies_carry_the_time_and_stats_count(fixture: Any) -> None:
    fixture.command("add 4 generic-cn-kitchen", 0)
    assert fixture.command("gas 4 30", 123456) == "ok gas 4 30.0 t=123456"
    reply = fixture.command("stats", 7)
    assert "frames=0" in reply and "d4=0/0" in reply and reply.endswith("t=7")


# -- the console over a real pty ------------------------------------------------------------------


class Stream:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def read(self, n: int) -> bytes:
        return os.read(self.fd, n)

    def write(self, text: str) -> int:
        return os.write(self.fd, text.encode())


def test_console_assembles_lines_over_a_pty() -> None:
    hal = fw("fixture.hal")
    master, slave_fd = os.openpty()
    try:
        import tty

        tty.setraw(slave_fd)
        console = hal.Console(Stream(master), Stream(master))
        assert console.read_line() is None
        os.write(slave_fd, b"hel")
        time.sleep(0.05)
        assert console.read_line() is None  # half a line: not yet
        os.write(slave_fd, b"lo\r\n\nstats\n" + b"x" * 300 + b"\n\xff\xfe\n")
        time.sleep(0.05)
        got = [console.read_line() for _ in range(5)]
        assert got[:2] == ["hello", "stats"]
        assert got[2] == hal.REJECTED + "line longer than 200 bytes"
        assert got[3] == hal.REJECTED + "line is not UTF-8 text"
        assert got[4] is None
        console.write_line("ok hello t=1")
        assert os.read(slave_fd, 100) == b"ok hello t=1\n"
    finally:
        os.close(master)
        os.close(slave_fd)


def test_selftest_passes_under_cpython(capsys: pytest.CaptureFixture[str]) -> None:
    selftest = fw("selftest")
    assert selftest.main() is True
    out = capsys.readouterr().out
    assert "FAIL" not in out and "SELFTEST OK" in out


def test_float_images_are_ieee754_big_endian_words() -> None:
    det = detectors.Detector(1, "msa-ultima-x")
    det.set_gas(12.5)
    regs = registers(det)
    value = struct.unpack(">f", struct.pack(">HH", regs[6], regs[7]))[0]
    assert math.isclose(value, 12.5)
