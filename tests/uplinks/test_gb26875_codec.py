"""GB/T 26875.3 frame and application-data codec: the worked example of GB/T 26875.3 byte for
byte, every kind of bad frame, GB18030 descriptions, and property checks (random bytes never
crash the decoder; encode -> decode round-trips)."""

from __future__ import annotations

import contextlib
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.uplinks.gb26875.codec import (
    DESCRIPTION_LEN,
    DEVICE_MAINS_FAULT,
    MAX_DATA_LEN,
    AnalogValue,
    AppData,
    ClockSync,
    Command,
    DataType,
    DeviceOperation,
    DeviceStatus,
    DutyCheck,
    Frame,
    FrameError,
    FrameReader,
    GbTime,
    PartStatus,
    ReadDeviceStatus,
    app_data,
    checksum,
    decode_app_data,
    decode_description,
    decode_frame,
    encode_description,
    encode_frame,
    gas_value,
    max_objects,
)

# The standard's worked example: a transmission device reports mains failure, 2012-09-26 09:58:02.
WORKED = bytes.fromhex(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 79 03 00 00 00 00 38 5B 01 00 00 00 09 00 02 "
    "15 01 08 02 3A 09 1A 09 0C 42 23 23"
)


def worked_frame() -> Frame:
    return Frame(
        serial=1,
        command=Command.SEND_DATA,
        source=0x0379,
        destination=0x015B38,
        time=GbTime(32, 58, 9, 26, 9, 2012),
        data=app_data(DeviceStatus(DEVICE_MAINS_FAULT, GbTime(2, 58, 9, 26, 9, 2012))),
    )


def test_worked_example_encodes_byte_for_byte() -> None:
    assert encode_frame(worked_frame()) == WORKED


def test_worked_example_decodes_to_its_fields() -> None:
    frame = decode_frame(WORKED)
    assert frame == worked_frame()
    assert frame.version == (1, 1)
    unit = decode_app_data(frame.data)
    assert unit.type_flag == DataType.DEVICE_STATUS
    (obj,) = unit.objects
    assert isinstance(obj, DeviceStatus)
    assert obj.status == DEVICE_MAINS_FAULT
    assert str(obj.at) == "2012-09-26 09:58:02"


def test_checksum_is_sum_of_bytes_3_to_27_and_data_mod_256() -> None:
    assert checksum(WORKED[2:27], WORKED[27:36]) == 0x42
    assert sum(WORKED[2:36]) % 256 == WORKED[36]


def corrupt(raw: bytes, index: int, value: int) -> bytes:
    return raw[:index] + bytes((value,)) + raw[index + 1 :]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (corrupt(WORKED, 36, 0x41), "checksum 0x41: computed 0x42"),
        (corrupt(WORKED, 30, 0x09), "checksum"),  # a data byte changed
        (corrupt(WORKED, 0, 0x41), "frame start 41 40"),
        (corrupt(WORKED, 38, 0x24), "frame end 23 24"),
        (WORKED[:-1], "truncated"),
        (WORKED[:20], "truncated"),
        (b"", "frame start (none)"),
        (WORKED + b"\x00", "1 bytes too many"),
        (WORKED[:24] + struct.pack("<H", 1025) + WORKED[26:], "length 1025: must be at most 1024"),
        (WORKED[:24] + struct.pack("<H", 8) + WORKED[26:], "1 bytes too many"),
        (WORKED[:24] + struct.pack("<H", 10) + WORKED[26:], "truncated"),
    ],
)
def test_bad_frames_are_rejected_with_a_clear_error(raw: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=re.escape(message)):
        decode_frame(raw)


def test_reader_reassembles_frames_split_anywhere_and_skips_garbage() -> None:
    second = encode_frame(
        Frame(2, Command.SEND_DATA, 0x0379, 0x015B38, GbTime(1, 2, 3, 4, 5, 2024), b"")
    )
    stream = b"\x00junk" + WORKED + corrupt(WORKED, 36, 0x00) + second
    for cut in range(1, len(stream)):
        reader = FrameReader()
        out = list(reader.feed(stream[:cut])) + list(reader.feed(stream[cut:]))
        frames = [o for o in out if isinstance(o, Frame)]
        errors = [o for o in out if isinstance(o, FrameError)]
        assert [f.serial for f in frames] == [1, 2], cut
        assert any("checksum" in str(e) for e in errors), cut
        assert any("skipped" in str(e) for e in errors), cut
        assert reader.buffered == 0


def test_reader_resyncs_after_an_impossible_length() -> None:
    bad = WORKED[:24] + struct.pack("<H", 5000) + WORKED[26:]
    out = list(FrameReader().feed(bad + WORKED))
    assert [o.serial for o in out if isinstance(o, Frame)] == [1]
    assert any("at most 1024" in str(o) for o in out if isinstance(o, FrameError))


def test_part_status_with_chinese_description_round_trips() -> None:
    at = GbTime(5, 4, 3, 2, 1, 2025)
    part = PartStatus(1, 1, 11, 7, 0b11, "厨房燃气探测器 wok-1", at)
    raw = app_data(part)
    assert len(raw) == 2 + 46
    assert raw[:2] == bytes((2, 1))
    assert raw[9:11] == b"\x03\x00"  # status LE
    assert raw[11:42] == encode_description("厨房燃气探测器 wok-1")
    assert raw[11:25] == "厨房燃气探测器".encode("gb18030")
    assert decode_app_data(raw).objects == (part,)


def test_description_is_cut_at_a_character_boundary() -> None:
    text = "燃" * 20  # 40 bytes in GB18030
    raw = encode_description(text)
    assert len(raw) == DESCRIPTION_LEN
    assert decode_description(raw) == "燃" * 15  # 30 bytes; the 16th would not fit
    assert decode_description(b"\xff" * DESCRIPTION_LEN)  # bad bytes do not raise


def test_analog_value_is_signed_tenths_of_lel() -> None:
    at = GbTime(0, 0, 12, 1, 6, 2025)
    value = AnalogValue(1, 1, 11, 7, 6, gas_value(23.46), at)
    raw = app_data(value)
    assert raw[:2] == bytes((3, 1))
    assert struct.unpack_from("<h", raw, 2 + 8)[0] == 235
    assert decode_app_data(raw).objects == (value,)
    assert gas_value(-1.0) == -10
    assert gas_value(1e9) == 32767


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "needs a type flag and a count"),
        (bytes((77, 1, 0)), "data type 77"),
        (bytes((21, 0)), "object count of 0"),
        (bytes((21, 2)) + bytes(7), "7 bytes for 2 objects"),
        (bytes((21, 1)) + bytes(8), "8 bytes for 1 objects"),
        (bytes((2, 1)) + bytes(45), "must be 46"),
        (bytes((90, 1)) + bytes(3), "data type 90"),
    ],
)
def test_bad_application_data_is_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_app_data(raw)


def test_down_link_requests_decode_with_or_without_time_stamps() -> None:
    assert decode_app_data(bytes((81, 1, 0))).objects == (ReadDeviceStatus(0),)
    assert decode_app_data(bytes((81, 1))).objects == (ReadDeviceStatus(0),)
    t = GbTime(1, 2, 3, 4, 5, 2025)
    assert decode_app_data(bytes((90, 1)) + t.encode()).objects == (ClockSync(t),)
    assert decode_app_data(bytes((91, 1, 10)) + t.encode()).objects == (DutyCheck(10),)


def test_objects_and_frames_refuse_out_of_range_fields() -> None:
    at = GbTime(0, 0, 0, 1, 1, 2025)
    with pytest.raises(FrameError, match="part address"):
        PartStatus(1, 1, 11, 1 << 32, 0, "x", at)
    with pytest.raises(FrameError, match="analog value"):
        AnalogValue(1, 1, 11, 1, 6, 40000, at)
    with pytest.raises(FrameError, match="serial number 65536"):
        Frame(65536, 2, 0, 0, at)
    with pytest.raises(FrameError, match="at most 1024"):
        Frame(1, 2, 0, 0, at, bytes(1025))
    with pytest.raises(FrameError, match="objects of type 2"):
        AppData(2, tuple(PartStatus(1, 1, 11, i, 0, "", at) for i in range(23)))
    with pytest.raises(FrameError, match="not a valid date"):
        GbTime(0, 0, 0, 31, 2, 2025).to_datetime()


def test_a_full_frame_of_part_status_fits_in_1024_bytes() -> None:
    at = GbTime(0, 0, 0, 1, 1, 2025)
    n = max_objects(DataType.PART_STATUS)
    data = app_data(*(PartStatus(1, 1, 11, i, 1, "探测器", at) for i in range(n)))
    assert len(data) <= MAX_DATA_LEN
    frame = decode_frame(encode_frame(Frame(9, Command.SEND_DATA, 1, 2, at, data)))
    assert len(decode_app_data(frame.data).objects) == n


def test_local_time_uses_the_configured_offset() -> None:
    # 2025-01-01 00:00:00 UTC is 08:00 in China.
    t = GbTime.from_utc(1735689600.0, 8.0)
    assert (t.hour, t.day, t.month, t.year) == (8, 1, 1, 2025)
    assert t.to_utc(8.0) == 1735689600.0


# -- properties --------------------------------------------------------------------------------

times = st.builds(
    GbTime,
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 23),
    st.integers(1, 28),
    st.integers(1, 12),
    st.integers(2000, 2255),
)
byte = st.integers(0, 255)
part_statuses = st.builds(
    PartStatus,
    byte,
    byte,
    byte,
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF),
    st.text(st.characters(codec="gb18030", exclude_characters="\x00 "), max_size=10),
    times,
)
analogs = st.builds(
    AnalogValue,
    byte,
    byte,
    byte,
    st.integers(0, 2**32 - 1),
    byte,
    st.integers(-32768, 32767),
    times,
)
units = st.one_of(
    st.lists(part_statuses, min_size=1, max_size=22).map(lambda o: AppData(2, tuple(o))),
    st.lists(analogs, min_size=1, max_size=63).map(lambda o: AppData(3, tuple(o))),
    st.lists(st.builds(DeviceStatus, byte, times), min_size=1, max_size=146).map(
        lambda o: AppData(21, tuple(o))
    ),
    st.lists(st.builds(DeviceOperation, byte, byte, times), min_size=1, max_size=127).map(
        lambda o: AppData(24, tuple(o))
    ),
)


@given(units)
@settings(max_examples=200, deadline=None)
def test_application_data_round_trips(unit: AppData) -> None:
    raw = bytes((unit.type_flag, len(unit.objects))) + b"".join(o.encode() for o in unit.objects)
    assert len(raw) <= MAX_DATA_LEN
    decoded = decode_app_data(raw)
    assert decoded.type_flag == unit.type_flag
    for got, want in zip(decoded.objects, unit.objects, strict=True):
        if isinstance(want, PartStatus):
            assert isinstance(got, PartStatus)
            assert got.description == want.description[: len(got.description)]
            assert encode_description(got.description) == encode_description(want.description)
            assert (got.part_address, got.status, got.at) == (
                want.part_address,
                want.status,
                want.at,
            )
        else:
            assert got == want


@given(
    st.integers(0, 0xFFFF),
    st.sampled_from(list(Command)),
    st.integers(0, 2**48 - 1),
    st.integers(0, 2**48 - 1),
    times,
    st.binary(max_size=MAX_DATA_LEN),
)
@settings(max_examples=200, deadline=None)
def test_frames_round_trip(
    serial: int, command: Command, src: int, dst: int, at: GbTime, data: bytes
) -> None:
    frame = Frame(serial, command, src, dst, at, data)
    raw = encode_frame(frame)
    assert decode_frame(raw) == frame
    assert [f for f in FrameReader().feed(raw) if isinstance(f, Frame)] == [frame]


@given(st.binary(max_size=2000))
@settings(max_examples=500, deadline=None)
def test_random_bytes_never_crash_the_decoders(raw: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(raw)
    with contextlib.suppress(FrameError):
        decode_app_data(raw)
    out = list(FrameReader().feed(raw))
    assert all(isinstance(o, Frame | FrameError) for o in out)


@given(st.binary(min_size=0, max_size=1100), st.lists(st.integers(0, 1200), max_size=5))
@settings(max_examples=300, deadline=None)
def test_random_frame_shaped_bytes_never_crash(body: bytes, cuts: list[int]) -> None:
    # Right start and a plausible length field, random rest: the hardest case for a decoder.
    raw = b"@@" + body[:22] + struct.pack("<H", len(body[23:]) % 1100) + body[22:]
    with contextlib.suppress(FrameError):
        decode_frame(raw)
    reader = FrameReader()
    pieces = []
    start = 0
    for cut in sorted(c % (len(raw) + 1) for c in cuts):
        pieces.append(raw[start:cut])
        start = cut
    pieces.append(raw[start:])
    for piece in pieces:
        for o in reader.feed(piece):
            assert isinstance(o, Frame | FrameError)


def test_descriptions_are_space_padded_and_either_padding_decodes() -> None:
    """The standard's worked example pads the 31-byte description with spaces (0x20)."""
    raw = encode_description("wok-1")
    assert raw == b"wok-1" + b" " * (DESCRIPTION_LEN - 5)
    assert decode_description(raw) == "wok-1"
    assert decode_description(b"wok-1".ljust(DESCRIPTION_LEN, b"\x00")) == "wok-1"
