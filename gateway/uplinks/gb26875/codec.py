"""GB/T 26875.3-2011 frames and application data: encoding, decoding, checksum, stream reassembly.

Frame (GB/T 26875.3, all multi-byte numbers little-endian)::

    @@ | serial 2 | version 2 | time 6 | source 6 | destination 6 | length 2 | command 1 |
    application data (length bytes, <= 1024) | checksum 1 | ##

``time`` is (second, minute, hour, day, month, year - 2000) in the centre's local time; the
checksum is the sum of bytes 3..27 (serial .. command) and the application data, mod 256.

Application data: type flag (1 B), object count (1 B), then the objects. Up-link objects are each
followed by a 6 B time stamp; the down-link requests this gateway understands carry their own
small payloads (read status: 1 reserved byte; clock sync: the 6 B time; duty check: 1 B minutes).

Decoding never lets an exception other than ``FrameError`` escape: a frame from the network is
bad input, and bad input gets a clear error and changes nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import IntEnum

START = b"@@"
END = b"##"
HEADER_LEN = 27  # "@@" .. command byte
OVERHEAD = HEADER_LEN + 3  # + checksum + "##"
MAX_DATA_LEN = 1024
MAX_ADDRESS = (1 << 48) - 1
MAX_PART_ADDRESS = (1 << 32) - 1
DESCRIPTION_LEN = 31
TIME_LEN = 6
VERSION = (1, 1)

# Part status bits (type 2)
PART_NORMAL = 1 << 0  # 1 normal operation, 0 test
PART_ALARM = 1 << 1
PART_FAULT = 1 << 2
PART_MASKED = 1 << 3
PART_SUPERVISE = 1 << 4
PART_OPEN = 1 << 5  # "started": for a valve, open
PART_FEEDBACK = 1 << 6
PART_DELAY = 1 << 7
PART_POWER_FAULT = 1 << 8

# Transmission-device status bits (type 21)
DEVICE_NORMAL = 1 << 0  # 1 normal monitoring, 0 test
DEVICE_ALARM = 1 << 1
DEVICE_FAULT = 1 << 2
DEVICE_MAINS_FAULT = 1 << 3
DEVICE_BACKUP_FAULT = 1 << 4
DEVICE_CHANNEL_FAULT = 1 << 5
DEVICE_LINE_FAULT = 1 << 6

# Transmission-device operation bits (type 24). From the standard's table as recalled here;
# not verified against the printed text.
OPERATION_RESET = 1 << 0
OPERATION_SILENCE = 1 << 1
OPERATION_MANUAL_ALARM = 1 << 2
OPERATION_ALARM_CLEARED = 1 << 3
OPERATION_SELF_TEST = 1 << 4
OPERATION_DUTY_ANSWER = 1 << 5
OPERATION_TEST = 1 << 6

# Part types
PART_TYPE_GAS_DETECTOR = 10
PART_TYPE_POINT_GAS_DETECTOR = 11
PART_TYPE_VALVE_ACTUATOR = 101
PART_TYPE_SOLENOID_VALVE = 106
PART_TYPE_ALARM_DEVICE = 121

ANALOG_GAS_CONCENTRATION = 6  # int16 in 0.1 %LEL


class FrameError(ValueError):
    """A frame or application data that must not be used; the message says what is wrong."""


class Command(IntEnum):
    CONTROL = 1
    SEND_DATA = 2
    CONFIRM = 3
    REQUEST = 4
    REPLY = 5
    DENY = 6


class DataType(IntEnum):
    PART_STATUS = 2
    ANALOG_VALUE = 3
    DEVICE_STATUS = 21
    DEVICE_OPERATION = 24
    READ_DEVICE_STATUS = 81
    CLOCK_SYNC = 90
    DUTY_CHECK = 91


def _check_int(name: str, value: int, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise FrameError(f"{name} {value!r}: must be a whole number from {lo} to {hi}")
    return value


@dataclass(frozen=True, slots=True)
class GbTime:
    """The 6-byte time of the standard. Fields are kept as sent; ``to_datetime`` checks them."""

    second: int
    minute: int
    hour: int
    day: int
    month: int
    year: int  # full year, 2000..2255

    def __post_init__(self) -> None:
        for name in ("second", "minute", "hour", "day", "month"):
            _check_int(f"time {name}", getattr(self, name), 0, 255)
        _check_int("time year", self.year, 2000, 2255)

    @staticmethod
    def from_datetime(dt: datetime) -> GbTime:
        return GbTime(dt.second, dt.minute, dt.hour, dt.day, dt.month, dt.year)

    @staticmethod
    def from_utc(utc: float, utc_offset_h: float) -> GbTime:
        """``utc`` (seconds since the epoch) as local time ``utc_offset_h`` hours east of UTC."""
        tz = timezone(timedelta(hours=utc_offset_h))
        return GbTime.from_datetime(datetime.fromtimestamp(utc, tz))

    def to_datetime(self) -> datetime:
        """A naive datetime; FrameError if the fields are not a real date and time."""
        try:
            return datetime(self.year, self.month, self.day, self.hour, self.minute, self.second)
        except ValueError as e:
            raise FrameError(
                f"time {self.encode().hex(' ')}: not a valid date and time: {e}"
            ) from e

    def to_utc(self, utc_offset_h: float) -> float:
        """Seconds since the epoch, reading this time as ``utc_offset_h`` hours east of UTC."""
        tz = timezone(timedelta(hours=utc_offset_h))
        return self.to_datetime().replace(tzinfo=tz).timestamp()

    def encode(self) -> bytes:
        return bytes((self.second, self.minute, self.hour, self.day, self.month, self.year - 2000))

    @staticmethod
    def decode(raw: bytes) -> GbTime:
        if len(raw) != TIME_LEN:
            raise FrameError(f"time field has {len(raw)} bytes: must be {TIME_LEN}")
        return GbTime(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] + 2000)

    def __str__(self) -> str:
        return (
            f"{self.year:04d}-{self.month:02d}-{self.day:02d} "
            f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        )


ZERO_TIME = GbTime(0, 0, 0, 0, 0, 2000)


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One GB/T 26875.3 frame. ``data`` is the raw application data (b"" for a heartbeat or a
    bare confirm); ``decode_app_data(frame.data)`` gives its objects."""

    serial: int
    command: int
    source: int
    destination: int
    time: GbTime
    data: bytes = b""
    version: tuple[int, int] = VERSION

    def __post_init__(self) -> None:
        _check_int("serial number", self.serial, 0, 0xFFFF)
        _check_int("command", self.command, 0, 255)
        _check_int("source address", self.source, 0, MAX_ADDRESS)
        _check_int("destination address", self.destination, 0, MAX_ADDRESS)
        _check_int("version main", self.version[0], 0, 255)
        _check_int("version user", self.version[1], 0, 255)
        if len(self.data) > MAX_DATA_LEN:
            raise FrameError(
                f"application data of {len(self.data)} bytes: must be at most {MAX_DATA_LEN}"
            )

    def describe(self) -> str:
        """A one-line summary for logs."""
        try:
            name = Command(self.command).name.lower()
        except ValueError:
            name = f"command-{self.command}"
        kind = f" type={self.data[0]}" if self.data else ""
        return f"{name} serial={self.serial}{kind} len={len(self.data)}"


def checksum(header_tail: bytes, data: bytes) -> int:
    """Sum of bytes 3..27 of the frame (serial .. command) and the application data, mod 256."""
    return (sum(header_tail) + sum(data)) & 0xFF


def encode_frame(frame: Frame) -> bytes:
    """The frame's bytes on the wire."""
    tail = (
        struct.pack("<H", frame.serial)
        + bytes(frame.version)
        + frame.time.encode()
        + frame.source.to_bytes(6, "little")
        + frame.destination.to_bytes(6, "little")
        + struct.pack("<H", len(frame.data))
        + bytes((frame.command,))
    )
    return START + tail + frame.data + bytes((checksum(tail, frame.data),)) + END


def _decode_complete(raw: bytes) -> Frame:
    """Decode exactly one frame whose length field has been checked against ``len(raw)``."""
    length = struct.unpack_from("<H", raw, 24)[0]
    tail = raw[2:HEADER_LEN]
    data = raw[HEADER_LEN : HEADER_LEN + length]
    got = raw[HEADER_LEN + length]
    want = checksum(tail, data)
    if got != want:
        raise FrameError(f"frame checksum 0x{got:02x}: computed 0x{want:02x} (corrupted frame)")
    end = raw[HEADER_LEN + length + 1 : HEADER_LEN + length + 3]
    if end != END:
        raise FrameError(f"frame end {end.hex(' ')}: must be 23 23 ('##')")
    return Frame(
        serial=struct.unpack_from("<H", raw, 2)[0],
        command=raw[26],
        source=int.from_bytes(raw[12:18], "little"),
        destination=int.from_bytes(raw[18:24], "little"),
        time=GbTime.decode(raw[6:12]),
        data=bytes(data),
        version=(raw[4], raw[5]),
    )


def _length_of(raw: bytes) -> int:
    length = int(struct.unpack_from("<H", raw, 24)[0])
    if length > MAX_DATA_LEN:
        raise FrameError(f"application data length {length}: must be at most {MAX_DATA_LEN}")
    return length


def decode_frame(raw: bytes) -> Frame:
    """Decode one complete frame. Raises FrameError (and nothing else) for a bad start or end,
    a length over 1024 or not matching the bytes given, a truncated frame or a bad checksum."""
    try:
        raw = bytes(raw)
    except (TypeError, ValueError) as e:
        raise FrameError(f"frame must be bytes: {e}") from e
    if raw[:2] != START:
        raise FrameError(f"frame start {raw[:2].hex(' ') or '(none)'}: must be 40 40 ('@@')")
    if len(raw) < OVERHEAD:
        raise FrameError(f"frame of {len(raw)} bytes is truncated: a frame has at least {OVERHEAD}")
    length = _length_of(raw)
    if len(raw) < OVERHEAD + length:
        raise FrameError(
            f"frame of {len(raw)} bytes is truncated: its length field says "
            f"{OVERHEAD + length} ({length} bytes of application data)"
        )
    if len(raw) > OVERHEAD + length:
        raise FrameError(
            f"frame of {len(raw)} bytes: its length field says {OVERHEAD + length} "
            f"({len(raw) - OVERHEAD - length} bytes too many)"
        )
    return _decode_complete(raw)


class FrameReader:
    """Reassembles frames from a byte stream (TCP delivers arbitrary pieces).

    ``feed(chunk)`` yields a ``Frame`` for every good frame and a ``FrameError`` for every bad
    one, then keeps what may be the start of the next frame. After a bad frame it resynchronises
    on the next ``@@``. Bytes before a ``@@`` are reported once as a FrameError (garbage)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> Iterator[Frame | FrameError]:
        self._buf += chunk
        buf = self._buf
        while buf:
            start = buf.find(START)
            if start < 0:
                # Keep a trailing "@" that may be the first half of the next start.
                keep = 1 if buf[-1:] == b"@" else 0
                dropped = len(buf) - keep
                if dropped:
                    del buf[:dropped]
                    yield FrameError(f"{dropped} bytes outside any frame skipped")
                return
            if start:
                del buf[:start]
                yield FrameError(f"{start} bytes before a frame start skipped")
            if len(buf) < HEADER_LEN:
                return
            try:
                length = _length_of(bytes(buf[:HEADER_LEN]))
            except FrameError as e:
                del buf[:2]  # resynchronise on the next "@@"
                yield e
                continue
            if len(buf) < OVERHEAD + length:
                return
            raw = bytes(buf[: OVERHEAD + length])
            try:
                frame = _decode_complete(raw)
            except FrameError as e:
                del buf[:2]
                yield e
                continue
            del buf[: OVERHEAD + length]
            yield frame

    @property
    def buffered(self) -> int:
        """Bytes waiting for the rest of a frame."""
        return len(self._buf)


# ---------------------------------------------------------------------------------------------
# Application data
# ---------------------------------------------------------------------------------------------


def encode_description(text: str) -> bytes:
    """``text`` as GB18030 in exactly 31 bytes: cut at a character boundary, padded with
    spaces (0x20) as the standard's worked example is; NUL padding is still decoded."""
    out = b""
    for ch in text:
        try:
            enc = ch.encode("gb18030")
        except UnicodeEncodeError:
            enc = b"?"
        if len(out) + len(enc) > DESCRIPTION_LEN:
            break
        out += enc
    return out.ljust(DESCRIPTION_LEN, b" ")


def decode_description(raw: bytes) -> str:
    """A 31-byte GB18030 description as text (NUL/space padding removed, bad bytes shown as
    U+FFFD so a bad description can never make a frame unreadable)."""
    return raw.rstrip(b"\x00 ").decode("gb18030", errors="replace")


@dataclass(frozen=True, slots=True)
class PartStatus:
    """Type 2: the operating state of one part (a detector, a valve)."""

    system_type: int
    system_address: int
    part_type: int
    part_address: int
    status: int
    description: str
    at: GbTime

    SIZE = 40 + TIME_LEN

    def __post_init__(self) -> None:
        _check_int("system type", self.system_type, 0, 255)
        _check_int("system address", self.system_address, 0, 255)
        _check_int("part type", self.part_type, 0, 255)
        _check_int("part address", self.part_address, 0, MAX_PART_ADDRESS)
        _check_int("part status", self.status, 0, 0xFFFF)

    def encode(self) -> bytes:
        return (
            bytes((self.system_type, self.system_address, self.part_type))
            + struct.pack("<IH", self.part_address, self.status)
            + encode_description(self.description)
            + self.at.encode()
        )

    @staticmethod
    def decode(raw: bytes) -> PartStatus:
        address, status = struct.unpack_from("<IH", raw, 3)
        return PartStatus(
            raw[0],
            raw[1],
            raw[2],
            address,
            status,
            decode_description(raw[9:40]),
            GbTime.decode(raw[40:46]),
        )


@dataclass(frozen=True, slots=True)
class AnalogValue:
    """Type 3: one analog value of a part. For analog type 6 (gas) ``value`` is 0.1 %LEL."""

    system_type: int
    system_address: int
    part_type: int
    part_address: int
    analog_type: int
    value: int
    at: GbTime

    SIZE = 10 + TIME_LEN

    def __post_init__(self) -> None:
        _check_int("system type", self.system_type, 0, 255)
        _check_int("system address", self.system_address, 0, 255)
        _check_int("part type", self.part_type, 0, 255)
        _check_int("part address", self.part_address, 0, MAX_PART_ADDRESS)
        _check_int("analog type", self.analog_type, 0, 255)
        _check_int("analog value", self.value, -32768, 32767)

    def encode(self) -> bytes:
        return (
            bytes((self.system_type, self.system_address, self.part_type))
            + struct.pack("<IBh", self.part_address, self.analog_type, self.value)
            + self.at.encode()
        )

    @staticmethod
    def decode(raw: bytes) -> AnalogValue:
        address, analog_type, value = struct.unpack_from("<IBh", raw, 3)
        return AnalogValue(
            raw[0], raw[1], raw[2], address, analog_type, value, GbTime.decode(raw[10:16])
        )


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Type 21: the state of the transmission device (this gateway)."""

    status: int
    at: GbTime

    SIZE = 1 + TIME_LEN

    def __post_init__(self) -> None:
        _check_int("device status", self.status, 0, 255)

    def encode(self) -> bytes:
        return bytes((self.status,)) + self.at.encode()

    @staticmethod
    def decode(raw: bytes) -> DeviceStatus:
        return DeviceStatus(raw[0], GbTime.decode(raw[1:7]))


@dataclass(frozen=True, slots=True)
class DeviceOperation:
    """Type 24: an operation on the transmission device (reset, silence, duty-check answer)."""

    flags: int
    operator: int
    at: GbTime

    SIZE = 2 + TIME_LEN

    def __post_init__(self) -> None:
        _check_int("operation flags", self.flags, 0, 255)
        _check_int("operator number", self.operator, 0, 255)

    def encode(self) -> bytes:
        return bytes((self.flags, self.operator)) + self.at.encode()

    @staticmethod
    def decode(raw: bytes) -> DeviceOperation:
        return DeviceOperation(raw[0], raw[1], GbTime.decode(raw[2:8]))


@dataclass(frozen=True, slots=True)
class ReadDeviceStatus:
    """Type 81 (down-link): the centre asks for the transmission device's state."""

    reserved: int = 0

    SIZE = 1

    def __post_init__(self) -> None:
        _check_int("reserved byte", self.reserved, 0, 255)

    def encode(self) -> bytes:
        return bytes((self.reserved,))

    @staticmethod
    def decode(raw: bytes) -> ReadDeviceStatus:
        return ReadDeviceStatus(raw[0])


@dataclass(frozen=True, slots=True)
class ClockSync:
    """Type 90 (down-link, command 1): the centre's time for the transmission device."""

    time: GbTime

    SIZE = TIME_LEN

    def encode(self) -> bytes:
        return self.time.encode()

    @staticmethod
    def decode(raw: bytes) -> ClockSync:
        return ClockSync(GbTime.decode(raw[:TIME_LEN]))


@dataclass(frozen=True, slots=True)
class DutyCheck:
    """Type 91 (down-link): 查岗, the centre checks that someone is on duty on site and expects
    an answer within ``timeout_min`` minutes."""

    timeout_min: int = 0

    SIZE = 1

    def __post_init__(self) -> None:
        _check_int("duty-check timeout", self.timeout_min, 0, 255)

    def encode(self) -> bytes:
        return bytes((self.timeout_min,))

    @staticmethod
    def decode(raw: bytes) -> DutyCheck:
        return DutyCheck(raw[0])


InfoObject = (
    PartStatus
    | AnalogValue
    | DeviceStatus
    | DeviceOperation
    | ReadDeviceStatus
    | ClockSync
    | DutyCheck
)

_OBJECTS: dict[int, type[InfoObject]] = {
    DataType.PART_STATUS: PartStatus,
    DataType.ANALOG_VALUE: AnalogValue,
    DataType.DEVICE_STATUS: DeviceStatus,
    DataType.DEVICE_OPERATION: DeviceOperation,
    DataType.READ_DEVICE_STATUS: ReadDeviceStatus,
    DataType.CLOCK_SYNC: ClockSync,
    DataType.DUTY_CHECK: DutyCheck,
}
_TYPES: dict[type[InfoObject], int] = {cls: flag for flag, cls in _OBJECTS.items()}


def max_objects(type_flag: int) -> int:
    """How many objects of ``type_flag`` fit in one frame (count byte <= 255, data <= 1024)."""
    return min(255, (MAX_DATA_LEN - 2) // _OBJECTS[type_flag].SIZE)


@dataclass(frozen=True, slots=True)
class AppData:
    """The application data unit: one type flag and its objects (all of that type)."""

    type_flag: int
    objects: tuple[InfoObject, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        cls = _OBJECTS.get(self.type_flag)
        if cls is None:
            known = ", ".join(str(int(t)) for t in _OBJECTS)
            raise FrameError(f"data type {self.type_flag}: this gateway knows {known}")
        if not 1 <= len(self.objects) <= max_objects(self.type_flag):
            raise FrameError(
                f"{len(self.objects)} objects of type {self.type_flag}: must be 1 to "
                f"{max_objects(self.type_flag)} in one frame"
            )
        for obj in self.objects:
            if not isinstance(obj, cls):
                raise FrameError(f"object {obj!r} in data of type {self.type_flag}")


def encode_app_data(unit: AppData) -> bytes:
    return bytes((unit.type_flag, len(unit.objects))) + b"".join(o.encode() for o in unit.objects)


def decode_app_data(raw: bytes) -> AppData:
    """Decode application data. FrameError (only) for an unknown type, a count of 0, or a
    length that does not match the count (truncated or trailing bytes)."""
    if len(raw) < 2:
        raise FrameError(f"application data of {len(raw)} bytes: needs a type flag and a count")
    type_flag, count = raw[0], raw[1]
    cls = _OBJECTS.get(type_flag)
    if cls is None:
        known = ", ".join(str(int(t)) for t in _OBJECTS)
        raise FrameError(f"data type {type_flag}: this gateway knows {known}")
    if count == 0:
        raise FrameError(f"data type {type_flag} with an object count of 0")
    size = cls.SIZE
    body = raw[2:]
    if type_flag == DataType.READ_DEVICE_STATUS and not body:
        return AppData(type_flag, tuple(ReadDeviceStatus() for _ in range(count)))
    if type_flag in (DataType.READ_DEVICE_STATUS, DataType.DUTY_CHECK, DataType.CLOCK_SYNC):
        # Down-link requests: centres differ on trailing time stamps; read the first object's
        # own bytes and accept either the bare objects or objects each with a time stamp.
        if len(body) not in (count * size, count * (size + TIME_LEN)):
            raise FrameError(
                f"data type {type_flag}: {len(body)} bytes for {count} objects "
                f"(must be {count * size} or {count * (size + TIME_LEN)})"
            )
        stride = len(body) // count
    else:
        if len(body) != count * size:
            raise FrameError(
                f"data type {type_flag}: {len(body)} bytes for {count} objects of {size} bytes "
                f"(must be {count * size})"
            )
        stride = size
    objects: list[InfoObject] = []
    for i in range(count):
        chunk = body[i * stride : (i + 1) * stride]
        try:
            objects.append(cls.decode(chunk))
        except (FrameError, ValueError, struct.error, IndexError) as e:
            raise FrameError(f"data type {type_flag}, object {i + 1}: {e}") from e
    return AppData(type_flag, tuple(objects))


def app_data(*objects: InfoObject) -> bytes:
    """Encode objects (all of one type) as application data."""
    if not objects:
        raise FrameError("application data needs at least one object")
    return encode_app_data(AppData(_TYPES[type(objects[0])], tuple(objects)))


def gas_value(lel: float) -> int:
    """%LEL as the int16 of analog type 6 (0.1 %LEL), clamped to the int16 range."""
    tenths = round(lel * 10)
    return max(-32768, min(32767, tenths))
