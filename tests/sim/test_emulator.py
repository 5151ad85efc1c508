"""The Modbus RTU detector emulator, spoken to with raw bytes over a real pty."""

from __future__ import annotations

import contextlib
import os
import select
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.core.model import Level
from gateway.profiles import Profile
from gateway.rtu import frame_wire_time, t35
from gateway.sim.emulator import (
    BusEmulator,
    EmulatedDetector,
    crc16_modbus,
    crc_ok,
    with_crc,
)

MakeEmulator = Callable[..., BusEmulator]


# ---------------------------------------------------------------------------------------------
# helpers: the master side, as raw bytes on the pty
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def open_line() -> Iterator[Callable[[str], int]]:
    """Open a device path read/write as a raw fd (the emulator made the pty raw)."""
    fds: list[int] = []

    def opener(path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        fds.append(fd)
        return fd

    yield opener
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def read_reply(fd: int, expect: int, timeout: float = 1.0) -> tuple[bytes, list[float]]:
    """Read up to ``expect`` bytes or until ``timeout``; returns the bytes and, per read, the
    monotonic time it returned (each at or after those bytes arrived)."""
    data = b""
    stamps: list[float] = []
    deadline = time.monotonic() + timeout
    while len(data) < expect:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        data += os.read(fd, expect - len(data))
        stamps.append(time.monotonic())
    return data, stamps


def settled(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """True once ``condition`` holds: the emulator counts and records a reply just after its
    last byte is written, so the reader may get there first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def read_quiet(fd: int, wait: float) -> bytes:
    """Everything that arrives within ``wait`` seconds (used to show that nothing does)."""
    data, _ = read_reply(fd, 1 << 16, wait)
    return data


def read_request(address: int, start: int, count: int, function: int = 3) -> bytes:
    return with_crc(struct.pack(">BBHH", address, function, start, count))


def registers_of(reply: bytes) -> list[int]:
    assert crc_ok(reply)
    n = reply[2]
    return [int.from_bytes(reply[3 + 2 * i : 5 + 2 * i], "big") for i in range(n // 2)]


# ---------------------------------------------------------------------------------------------
# CRC and line timing
# ---------------------------------------------------------------------------------------------


def test_crc_matches_published_vectors() -> None:
    # Read 10 holding registers from slave 1: the textbook frame ends C5 CD.
    assert with_crc(bytes.fromhex("01030000000A")) == bytes.fromhex("01030000000AC5CD")
    # The CRC-16/MODBUS catalogue check value.
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc_ok(bytes.fromhex("01030000000AC5CD"))


def test_crc_detects_every_single_bit_error() -> None:
    frame = with_crc(bytes.fromhex("0103040064000A"))
    for i in range(len(frame) * 8):
        damaged = bytearray(frame)
        damaged[i // 8] ^= 1 << (i % 8)
        assert not crc_ok(bytes(damaged)), f"bit {i} flipped went unnoticed"
    assert not crc_ok(b"\x01\x03\x00")  # too short to be a frame


def test_line_timing_gives_the_physical_floor_in_domain_notes() -> None:
    # One 2-register poll: 8-byte request + 9-byte reply + two t3.5 (Modbus RTU).
    def floor(baud: int, parity: str) -> float:
        wire = frame_wire_time(8, baud, parity, 1) + frame_wire_time(9, baud, parity, 1)
        return wire + 2 * t35(baud, parity, 1)

    assert floor(9600, "N") == pytest.approx(0.0250, abs=5e-5)
    assert floor(9600, "E") == pytest.approx(0.0275, abs=5e-5)
    assert floor(19200, "E") == pytest.approx(0.01375, abs=5e-5)
    # 8N2 is 11 bits a character like 8E1; above 19200 baud t3.5 is a fixed 1.75 ms.
    assert frame_wire_time(10, 9600, "N", 2) == pytest.approx(10 * 11 / 9600)
    assert t35(38400, "E", 1) == pytest.approx(0.00175)
    assert t35(115200, "N", 1) == pytest.approx(0.00175)


def test_line_settings_out_of_range_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="parity 'X'"):
        t35(9600, "X", 1)
    with pytest.raises(ValueError, match="stop_bits 3"):
        frame_wire_time(8, 9600, "N", 3)
    with pytest.raises(ValueError, match="baud 0"):
        t35(0, "N", 1)


def test_emulator_refuses_bad_setup(profiles: dict[str, Profile]) -> None:
    generic = profiles["generic-cn-kitchen"]
    with pytest.raises(ValueError, match="address 0"):
        EmulatedDetector(0, generic)
    with pytest.raises(ValueError, match="address 3 is used twice"):
        BusEmulator(-1, 9600, "N", 1, [EmulatedDetector(3, generic), EmulatedDetector(3, generic)])
    with pytest.raises(ValueError, match="parity 'Q'"):
        BusEmulator.on_pty(9600, "Q", 1, [EmulatedDetector(1, generic)])


# ---------------------------------------------------------------------------------------------
# Replies for each shipped profile
# ---------------------------------------------------------------------------------------------

# (profile, line, lel, the block the profile must read, registers a real unit would hold).
# The register values are worked out by hand from the vendors' maps, not from Profile.encode.
PROFILE_CASES = [
    pytest.param(
        "generic-cn-kitchen",
        (9600, "N", 1),
        12.3,
        (0, 2),
        [123, 0],  # int16 x 0.1 %LEL; status code 0 = normal
        id="generic-9600-8N1",
    ),
    pytest.param(
        "honeywell-sensepoint-xcd",
        (19200, "E", 1),
        12.5,
        (2, 9),
        # float32 12.5 = 0x41480000 big-endian words; fault code 0; status bits 0; units 5
        [0x4148, 0x0000, 0, 0, 0, 0, 0, 0, 5],
        id="honeywell-19200-8E1-float32",
    ),
    pytest.param(
        "msa-ultima-x",
        (19200, "E", 1),
        30.0,
        (201, 8),
        # 30 %LEL is above the unit's own 20 %LEL low alarm: status bit 1; float32 30.0 = 0x41F0
        [0x0002, 0, 0, 0, 0, 0, 0x41F0, 0x0000],
        id="msa-19200-8E1-float32",
    ),
]


@pytest.mark.parametrize(("name", "line", "lel", "block", "expected"), PROFILE_CASES)
def test_read_request_gets_the_profile_registers(
    profiles: dict[str, Profile],
    bus_emulator: MakeEmulator,
    open_line: Callable[[str], int],
    name: str,
    line: tuple[int, str, int],
    lel: float,
    block: tuple[int, int],
    expected: list[int],
) -> None:
    profile = profiles[name]
    assert profile.block == block
    emulator = bus_emulator([EmulatedDetector(1, profile, lel=lel)], *line)
    fd = open_line(emulator.path)
    start, count = block
    os.write(fd, read_request(1, start, count))
    reply, _ = read_reply(fd, 5 + 2 * count)
    data = b"".join(v.to_bytes(2, "big") for v in expected)
    assert reply == with_crc(bytes([1, 3, 2 * count]) + data)
    decoded = profile.decode(registers_of(reply))
    assert decoded.lel == pytest.approx(lel)
    assert decoded.fault is None


def test_own_thresholds_set_the_detectors_status(
    profiles: dict[str, Profile], bus_emulator: MakeEmulator, open_line: Callable[[str], int]
) -> None:
    generic = profiles["generic-cn-kitchen"]
    det = EmulatedDetector(7, generic, lel=10.0, own_low_lel=5.0, own_high_lel=9.0)
    emulator = bus_emulator([det])
    fd = open_line(emulator.path)
    os.write(fd, read_request(7, 0, 2))
    reply, _ = read_reply(fd, 9)
    assert registers_of(reply) == [100, 2]  # status code 2: the unit's own high alarm
    assert generic.decode(registers_of(reply)).own_alarm == Level.HIGH


# ---------------------------------------------------------------------------------------------
# Exceptions, silence, framing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_frame", "code"),
    [
        pytest.param(read_request(1, 0, 2, function=4), 1, id="FC04-to-an-FC03-unit"),
        pytest.param(with_crc(bytes.fromhex("0106000000FF")), 1, id="write-FC06"),
        pytest.param(read_request(1, 1, 2), 2, id="past-the-map"),
        pytest.param(read_request(1, 40, 1), 2, id="outside-the-map"),
        pytest.param(read_request(1, 0, 0), 3, id="zero-registers"),
    ],
)
def test_bad_requests_get_exception_replies(
    profiles: dict[str, Profile],
    bus_emulator: MakeEmulator,
    open_line: Callable[[str], int],
    request_frame: bytes,
    code: int,
) -> None:
    det = EmulatedDetector(1, profiles["generic-cn-kitchen"], lel=5.0)
    emulator = bus_emulator([det])
    fd = open_line(emulator.path)
    os.write(fd, request_frame)
    reply, _ = read_reply(fd, 5)
    assert reply == with_crc(bytes([1, request_frame[1] | 0x80, code]))
    assert settled(lambda: det.replies_sent == 1)
    assert det.requests_seen == 1


def test_unknown_address_and_bad_crc_get_no_reply(
    profiles: dict[str, Profile], bus_emulator: MakeEmulator, open_line: Callable[[str], int]
) -> None:
    det = EmulatedDetector(1, profiles["generic-cn-kitchen"], lel=5.0)
    emulator = bus_emulator([det])
    fd = open_line(emulator.path)
    os.write(fd, read_request(9, 0, 2))
    assert read_quiet(fd, 0.15) == b""
    bad = bytearray(read_request(1, 0, 2))
    bad[-1] ^= 0x01
    os.write(fd, bytes(bad))
    assert read_quiet(fd, 0.15) == b""
    assert det.requests_seen == 0
    # The line is still in sync: the next good request is answered.
    os.write(fd, read_request(1, 0, 2))
    reply, _ = read_reply(fd, 9)
    assert registers_of(reply) == [50, 0]
    assert settled(lambda: [e.address for e in emulator.exchanges()] == [9, None, 1])


def test_resynchronises_after_garbage_and_joins_split_requests(
    profiles: dict[str, Profile], bus_emulator: MakeEmulator, open_line: Callable[[str], int]
) -> None:
    emulator = bus_emulator([EmulatedDetector(1, profiles["generic-cn-kitchen"], lel=7.0)])
    fd = open_line(emulator.path)
    # Garbage glued to a request (no t3.5 between) is one bad frame: no reply, as on a wire.
    os.write(fd, b"\x55\xaa\x13" + read_request(1, 0, 2))
    assert read_quiet(fd, 0.15) == b""
    # Garbage, then t3.5 of silence, then a request that arrives in two pieces.
    os.write(fd, b"\xff\x00\x42")
    time.sleep(0.05)
    request = read_request(1, 0, 2)
    os.write(fd, request[:3])
    time.sleep(0.001)
    os.write(fd, request[3:])
    reply, _ = read_reply(fd, 9)
    assert registers_of(reply) == [70, 0]
    assert read_quiet(fd, 0.05) == b""  # exactly one reply


# ---------------------------------------------------------------------------------------------
# Pacing: a reply never arrives before it could on a real line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "turnaround", "reply_delay"),
    [
        pytest.param((9600, "N", 1), 0.001, 0.0, id="9600-8N1"),
        pytest.param((19200, "E", 1), 0.002, 0.015, id="19200-8E1-slow-unit"),
    ],
)
def test_reply_does_not_arrive_before_the_physical_floor(
    profiles: dict[str, Profile],
    bus_emulator: MakeEmulator,
    open_line: Callable[[str], int],
    line: tuple[int, str, int],
    turnaround: float,
    reply_delay: float,
) -> None:
    det = EmulatedDetector(1, profiles["generic-cn-kitchen"], lel=1.0, reply_delay_s=reply_delay)
    emulator = bus_emulator([det], *line, turnaround_s=turnaround)
    fd = open_line(emulator.path)
    request = read_request(1, 0, 2)
    before_first = frame_wire_time(8, *line) + t35(*line) + turnaround + reply_delay
    floor = before_first + frame_wire_time(9, *line)
    for _ in range(3):
        written_at = time.monotonic()
        os.write(fd, request)
        reply, stamps = read_reply(fd, 9)
        assert len(reply) == 9
        # Each stamp is taken after its bytes arrived, so these bounds can only err late.
        assert stamps[0] - written_at >= before_first + frame_wire_time(1, *line)
        assert stamps[-1] - written_at >= floor
        assert stamps[-1] - written_at < floor + 0.5
        time.sleep(0.02)


def test_exchanges_record_the_gap_the_master_leaves(
    profiles: dict[str, Profile], bus_emulator: MakeEmulator, open_line: Callable[[str], int]
) -> None:
    emulator = bus_emulator([EmulatedDetector(1, profiles["generic-cn-kitchen"])])
    fd = open_line(emulator.path)
    for _ in range(3):
        os.write(fd, read_request(1, 0, 2))
        reply, _ = read_reply(fd, 9)
        assert len(reply) == 9
        time.sleep(0.03)
    assert settled(lambda: len(emulator.exchanges()) == 3)
    gaps = emulator.gaps()
    assert len(gaps) == 2
    assert all(0.03 <= g < 1.0 for g in gaps)
    assert emulator.min_gap_s() == min(gaps)
    for exchange in emulator.exchanges():
        assert exchange.reply_end_at is not None
        assert exchange.reply_end_at > exchange.request_at


# ---------------------------------------------------------------------------------------------
# Misbehaving detectors
# ---------------------------------------------------------------------------------------------


def test_counted_faults_spoil_exactly_the_next_replies(
    profiles: dict[str, Profile], bus_emulator: MakeEmulator, open_line: Callable[[str], int]
) -> None:
    det = EmulatedDetector(4, profiles["generic-cn-kitchen"], lel=3.0)
    emulator = bus_emulator([det])
    fd = open_line(emulator.path)
    request = read_request(4, 0, 2)
    good = with_crc(bytes([4, 3, 4, 0, 30, 0, 0]))

    def poll() -> bytes:
        os.write(fd, request)
        reply, _ = read_reply(fd, 9, timeout=0.3)
        return reply

    det.corrupt_crc = 2
    for _ in range(2):
        reply = poll()
        assert len(reply) == 9 and reply[:-2] == good[:-2] and not crc_ok(reply)
    assert poll() == good

    det.wrong_id = 1
    reply = poll()
    assert crc_ok(reply) and reply[0] != 4 and reply[1:-2] == good[1:-2]
    assert poll() == good

    det.short_reply = 1
    reply = poll()  # well formed, one register short
    assert reply == with_crc(bytes([4, 3, 2, 0, 30]))
    assert poll() == good

    det.stop_mid_frame = 1
    reply = poll()
    assert 0 < len(reply) < 9 and good.startswith(reply)
    assert poll() == good

    det.silent = True
    assert poll() == b""
    det.silent = False
    assert poll() == good
    assert settled(lambda: det.replies_sent == 10)  # all but the silent one put bytes out
    assert det.requests_seen == 11


def test_fault_and_garbage_decode_as_detector_faults(
    profiles: dict[str, Profile], bus_emulator: MakeEmulator, open_line: Callable[[str], int]
) -> None:
    generic = profiles["generic-cn-kitchen"]
    honeywell = profiles["honeywell-sensepoint-xcd"]
    faulty = EmulatedDetector(1, generic, lel=2.0, fault=True)
    garbled = EmulatedDetector(2, generic, lel=2.0, garbage=True)
    emulator = bus_emulator([faulty, garbled])
    fd = open_line(emulator.path)
    for address in (1, 2):
        os.write(fd, read_request(address, 0, 2))
        reply, _ = read_reply(fd, 9)
        decoded = generic.decode(registers_of(reply))
        assert decoded.fault is not None, f"address {address} decoded without a fault"

    nan_unit = EmulatedDetector(1, honeywell, lel=2.0, garbage=True)
    float_emulator = bus_emulator([nan_unit], 19200, "E", 1)
    fd = open_line(float_emulator.path)
    os.write(fd, read_request(1, 2, 9))
    reply, _ = read_reply(fd, 23)
    decoded = honeywell.decode(registers_of(reply))
    assert decoded.lel is None
    assert decoded.fault is not None and "not a number" in decoded.fault


def test_detector_fields_can_change_while_serving(
    profiles: dict[str, Profile], bus_emulator: MakeEmulator, open_line: Callable[[str], int]
) -> None:
    det = EmulatedDetector(1, profiles["generic-cn-kitchen"], lel=1.0)
    emulator = bus_emulator([det])
    fd = open_line(emulator.path)
    seen = []
    for lel in (1.0, 22.0, 60.0):
        det.lel = lel
        os.write(fd, read_request(1, 0, 2))
        reply, _ = read_reply(fd, 9)
        seen.append(registers_of(reply))
    assert seen == [[10, 0], [220, 1], [600, 2]]


# ---------------------------------------------------------------------------------------------
# Pulling and re-plugging the adapter
# ---------------------------------------------------------------------------------------------


def test_unplug_and_replug_move_the_stable_link(
    profiles: dict[str, Profile],
    bus_emulator: MakeEmulator,
    open_line: Callable[[str], int],
    tmp_path: Path,
) -> None:
    link = tmp_path / "ttyUSB0"
    emulator = bus_emulator(
        [EmulatedDetector(1, profiles["generic-cn-kitchen"], lel=4.0)], link=link
    )
    first = emulator.slave_path
    assert first is not None and os.path.realpath(link) == first
    old_fd = open_line(str(link))

    emulator.unplug()
    assert not os.path.lexists(link)
    assert emulator.slave_path is None
    with pytest.raises(OSError):  # the old device is hung up
        os.write(old_fd, read_request(1, 0, 2))
        os.read(old_fd, 1)

    second = emulator.replug()
    assert os.path.realpath(link) == second
    fd = open_line(str(link))
    os.write(fd, read_request(1, 0, 2))
    reply, _ = read_reply(fd, 9)
    assert registers_of(reply) == [40, 0]
