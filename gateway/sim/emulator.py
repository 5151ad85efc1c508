"""A Modbus RTU slave emulator: several gas detectors on one RS-485 bus, served on a pty.

The simulated kitchen, the tests and the benchmark use it in place of real detectors. Each
``EmulatedDetector`` speaks one ``Profile`` (the register map comes from ``Profile.encode``) and
can be told to misbehave the way field devices do: sensor fault, garbage values, silence, slow
turnaround, bad CRC, another slave id, a short reply, a reply that stops half-way.

Wire-time pacing (Modbus RTU): a pty delivers the master's request instantly, so a naive
emulator makes every master look ~25 % faster than a real line. ``BusEmulator`` therefore treats a
request as complete only after its own wire time plus t3.5 of silence, waits its turnaround, and
releases each reply byte no earlier than it would have finished arriving on a real line. The last
reply byte reaches the master no earlier than::

    frame_wire_time(request) + t35 + turnaround + reply_delay + frame_wire_time(reply)

after the request's first byte arrived. ``frame_wire_time`` and ``t35`` are exported so that the
benchmark measures the gateway against exactly this physical floor.

As on a real bus: a request with a bad CRC, a request to an address with no detector, and a
broadcast read get no reply; a silent gap of t3.5 ends a frame, so the emulator re-synchronises
after garbage and joins a request whose bytes arrive split across reads.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from gateway.core.model import Level
from gateway.log import warn
from gateway.profiles import Profile, StatusRule
from gateway.rtu import char_time, check_line, t35
from gateway.sim.pty import (
    PtyPair,
    close_pty,
    open_raw_pty,
    park_line,
    point_link,
    remove_link,
)

MAX_READ_REGISTERS = 125  # Modbus limit for FC03/FC04
EXCHANGE_HISTORY = 10_000  # exchanges kept for the benchmark; older ones are dropped

# Modbus exception codes
ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03


# ---------------------------------------------------------------------------------------------
# CRC-16/Modbus (poly 0x8005 reflected = 0xA001, init 0xFFFF, sent low byte first)
# ---------------------------------------------------------------------------------------------

# How often an idle emulator re-checks that its pty is parked (see BusEmulator._park_line).
PARK_EVERY_S = 0.2


def _crc_table() -> tuple[int, ...]:
    table: list[int] = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_modbus(data: bytes) -> int:
    """CRC-16/Modbus of ``data`` as an integer (the frame carries it low byte first)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """``frame`` with its CRC appended, low byte first, ready for the wire."""
    return frame + crc16_modbus(frame).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """True when ``frame`` (address .. CRC) is at least 4 bytes and its CRC matches."""
    if len(frame) < 4:
        return False
    return crc16_modbus(frame[:-2]) == int.from_bytes(frame[-2:], "little")


# ---------------------------------------------------------------------------------------------
# Line timing
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------

_COUNTED_FAULTS = ("corrupt_crc", "wrong_id", "short_reply", "stop_mid_frame")
MISBEHAVIOURS = ("fault", "garbage", "silent", "reply_delay_s", *_COUNTED_FAULTS)


@dataclass(eq=False)
class EmulatedDetector:
    """One emulated gas detector at ``address`` speaking ``profile``.

    Fields may be set from a control thread while the emulator runs (each is read once per
    request). ``lel`` is the gas concentration in %LEL; the detector's own status register shows
    a low/high alarm from ``own_low_lel`` / ``own_high_lel`` (20 / 50 %LEL by default).
    Misbehaviour: ``fault`` (the detector reports a sensor fault), ``garbage`` (NaN value for a
    float profile, an impossible status code otherwise), ``silent`` (no reply at all),
    ``reply_delay_s`` (extra turnaround). The counted faults ``corrupt_crc``, ``wrong_id``,
    ``short_reply`` (a well-formed reply one register short) and ``stop_mid_frame`` apply to the
    next N replies. ``requests_seen`` / ``replies_sent`` count valid requests to this address and
    replies (or partial replies) put on the wire.
    """

    address: int
    profile: Profile
    lel: float = 0.0
    fault: bool = False
    garbage: bool = False
    silent: bool = False
    reply_delay_s: float = 0.0
    corrupt_crc: int = 0
    wrong_id: int = 0
    short_reply: int = 0
    stop_mid_frame: int = 0
    own_low_lel: float = 20.0
    own_high_lel: float = 50.0
    requests_seen: int = 0
    replies_sent: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.address, bool) or not 1 <= self.address <= 247:
            raise ValueError(f"detector address {self.address!r} is not allowed: 1-247")

    def own_alarm(self) -> Level:
        """The alarm level the detector itself reports for its current ``lel``."""
        if self.lel >= self.own_high_lel:
            return Level.HIGH
        if self.lel >= self.own_low_lel:
            return Level.LOW
        return Level.NORMAL

    def registers(self) -> dict[int, int]:
        """The detector's whole register map now (``profile.block``); unused registers are 0."""
        regs = self.profile.encode(self.lel, self.own_alarm(), self.fault)
        if self.garbage:
            regs.update(_garbage_registers(self.profile))
        start, count = self.profile.block
        return {a: regs.get(a, 0) & 0xFFFF for a in range(start, start + count)}

    def take(self, fault: str) -> bool:
        """Consume one of the counted faults (e.g. ``"corrupt_crc"``); True if it was pending."""
        if fault not in _COUNTED_FAULTS:
            raise ValueError(f"fault {fault!r} is not allowed: one of {', '.join(_COUNTED_FAULTS)}")
        with self._lock:
            pending: int = getattr(self, fault)
            if pending > 0:
                setattr(self, fault, pending - 1)
                return True
            return False

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)


def _garbage_registers(profile: Profile) -> dict[int, int]:
    """Registers that make a reply undecodable: NaN for a float value, otherwise an impossible
    status code (or, with no status register, an absurd value)."""
    if profile.value_type == "float32":
        raw = struct.pack(">f", math.nan)
        words = [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]
        if profile.word_order == "little":
            words.reverse()
        return {profile.value_register + i: w for i, w in enumerate(words)}
    if profile.status:
        return {rule.register: _impossible_code(rule) for rule in profile.status}
    width = 2 if profile.value_type.endswith("32") else 1
    words = [0x8000] + [0] * (width - 1)
    if profile.word_order == "little":
        words.reverse()
    return {profile.value_register + i: w for i, w in enumerate(words)}


def _impossible_code(rule: StatusRule) -> int:
    if rule.kind == "code":
        listed = set(rule.normal) | set(rule.low_alarm) | set(rule.high_alarm) | set(rule.fault)
        return next(c for c in range(0xFFFF, -1, -1) if c not in listed)
    return 0xFFFF


# ---------------------------------------------------------------------------------------------
# The bus
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One frame the master put on the bus and the reply to it, in ``time.monotonic()`` seconds.

    ``request_at`` is when its first byte was read from the line; ``reply_end_at`` when the
    last reply byte was released, just before its write (None: no reply): the master cannot
    have had it earlier, so a gap measured from it may read up to one write's latency long.
    ``address`` is None for a garbled frame. ``reply_start_at`` is when the first reply byte
    was released (None: no reply).
    """

    request_at: float
    request: bytes
    address: int | None
    reply_end_at: float | None
    reply: bytes
    reply_start_at: float | None = None


class SeenOnLine(Protocol):
    """What ``request_silences`` needs of an exchange (``Exchange`` or the benchmark's copy)."""

    @property
    def request_at(self) -> float: ...
    @property
    def reply_start_at(self) -> float | None: ...
    @property
    def reply_end_at(self) -> float | None: ...


def request_silences(history: Iterable[SeenOnLine]) -> list[float]:
    """For each request in ``history``, seconds between the end of the last reply that began
    before it and the request's first byte (negative: the master talked over that reply). The
    first request, and requests before any reply, have none."""
    exchanges = list(history)
    replies = sorted(
        (x.reply_start_at if x.reply_start_at is not None else x.reply_end_at, x.reply_end_at)
        for x in exchanges
        if x.reply_end_at is not None
    )
    silences: list[float] = []
    i = 0
    line_free_at: float | None = None
    for x in sorted(exchanges, key=lambda e: e.request_at):
        while i < len(replies) and replies[i][0] < x.request_at:
            end = replies[i][1]
            line_free_at = end if line_free_at is None else max(line_free_at, end)
            i += 1
        if line_free_at is not None:
            silences.append(x.request_at - line_free_at)
    return silences


class BusEmulator:
    """Serves one RS-485 bus of ``detectors`` on ``port``, the file descriptor of a pty master
    (or any byte stream standing for the line).

    ``turnaround_s`` (1 ms by default) is the slaves' processing time after the request's t3.5;
    a detector's ``reply_delay_s`` comes on top. Use ``on_pty()`` to get an emulator that owns
    its pty (and optionally a stable symlink for ``unplug()`` / ``replug()``).
    """

    def __init__(
        self,
        port: int,
        baud: int,
        parity: str,
        stop_bits: int,
        detectors: Iterable[EmulatedDetector],
        turnaround_s: float = 0.001,
    ) -> None:
        check_line(baud, parity, stop_bits)
        if not math.isfinite(turnaround_s) or turnaround_s < 0:
            raise ValueError(f"turnaround_s {turnaround_s!r} is not allowed: 0 or more seconds")
        self.baud = baud
        self.parity = parity
        self.stop_bits = stop_bits
        self.turnaround_s = turnaround_s
        self.detectors: dict[int, EmulatedDetector] = {}
        for det in detectors:
            if det.address in self.detectors:
                raise ValueError(f"detector address {det.address} is used twice on this bus")
            self.detectors[det.address] = det
        self._fd = port
        self._char_s = char_time(baud, parity, stop_bits)
        self._t35_s = t35(baud, parity, stop_bits)
        self._pty: PtyPair | None = None
        self._link: Path | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake: tuple[int, int] | None = None
        self._history: deque[Exchange] = deque(maxlen=EXCHANGE_HISTORY)
        self._history_lock = threading.Lock()
        # Receive state, touched only by the serving thread.
        self._rx = bytearray()
        self._rx_first = 0.0
        self._rx_wire_end = 0.0
        self._frames: deque[tuple[bytes, float, float]] = deque()

    # -- construction on a pty ---------------------------------------------------------------

    @classmethod
    def on_pty(
        cls,
        baud: int,
        parity: str,
        stop_bits: int,
        detectors: Iterable[EmulatedDetector],
        turnaround_s: float = 0.001,
        link: Path | str | None = None,
    ) -> tuple[BusEmulator, str]:
        """A new (not yet started) emulator on its own raw pty, and the device path the gateway
        opens: ``link`` (made a symlink to the pty) when given, else the pty's slave path."""
        pair = open_raw_pty()
        try:
            emulator = cls(pair.master_fd, baud, parity, stop_bits, detectors, turnaround_s)
            emulator._pty = pair
            if link is not None:
                emulator._link = Path(link)
                point_link(emulator._link, pair.slave_path)
        except BaseException:
            close_pty(pair)
            raise
        return emulator, emulator.path

    @property
    def path(self) -> str:
        """The device path the gateway should open (the link if there is one)."""
        if self._link is not None:
            return str(self._link)
        if self._pty is None:
            raise RuntimeError("this emulator serves a caller's file descriptor, not its own pty")
        return self._pty.slave_path

    @property
    def slave_path(self) -> str | None:
        """The current pty slave device (``/dev/pts/N``), None when unplugged or not a pty."""
        return self._pty.slave_path if self._pty is not None else None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("emulator already running")
        self._stopping.clear()
        self._wake = os.pipe()
        self._rx.clear()
        self._frames.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(self._fd, self._wake[0]), name="bus-emulator", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; an emulator made by ``on_pty`` also closes its pty and removes its link
        (it cannot be started again)."""
        self._halt()
        if self._pty is not None:
            close_pty(self._pty)
            self._pty = None
        if self._link is not None:
            remove_link(self._link)

    def unplug(self) -> None:
        """Pull the USB adapter: stop serving, close the pty, remove the link."""
        if self._link is None:
            raise RuntimeError("unplug() needs an emulator made by on_pty(link=...)")
        self._halt()
        remove_link(self._link)
        if self._pty is not None:
            close_pty(self._pty)
            self._pty = None

    def replug(self) -> str:
        """Plug it back: a new pty, the link re-pointed at it, serving again. Returns the new
        slave path."""
        if self._link is None:
            raise RuntimeError("replug() needs an emulator made by on_pty(link=...)")
        if self._pty is not None:
            raise RuntimeError("replug() without unplug(): the adapter is still plugged in")
        pair = open_raw_pty()
        self._pty = pair
        self._fd = pair.master_fd
        point_link(self._link, pair.slave_path)
        self.start()
        return pair.slave_path

    def _halt(self) -> None:
        thread, wake = self._thread, self._wake
        self._stopping.set()
        if wake is not None:
            with contextlib.suppress(OSError):
                os.write(wake[1], b"x")
        if thread is not None:
            thread.join(timeout=5.0)
        if wake is not None:
            for fd in wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._thread = None
        self._wake = None

    def __enter__(self) -> BusEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the benchmark reads ------------------------------------------------------------

    def exchanges(self) -> list[Exchange]:
        """Every frame seen (up to the last ``EXCHANGE_HISTORY``), oldest first."""
        with self._history_lock:
            return list(self._history)

    def clear_history(self) -> None:
        with self._history_lock:
            self._history.clear()

    def gaps(self) -> list[float]:
        """For each request, the silence the master left since the end of the last reply that
        had begun before it, in seconds (negative: it talked over a reply). A reply that began
        only after the request had started (a slave answering late, into the master's next
        request) is the slave's collision and not counted against the master."""
        return request_silences(self.exchanges())

    def min_gap_s(self) -> float | None:
        """The shortest gap in ``gaps()``; None before two exchanges with a reply between."""
        gaps = self.gaps()
        return min(gaps) if gaps else None

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, fd: int, wake_r: int) -> None:
        last_error = ""
        while not self._stopping.is_set():
            try:
                if self._frames:
                    frame, first_at, ended_at = self._frames.popleft()
                    self._handle(fd, wake_r, frame, first_at, ended_at)
                elif self._rx:
                    frame_end = self._rx_wire_end + self._t35_s
                    remaining = frame_end - time.monotonic()
                    if remaining <= 0:
                        self._end_frame(frame_end)
                    else:
                        self._absorb(fd, wake_r, remaining)
                else:
                    self._park_line()
                    self._absorb(fd, wake_r, PARK_EVERY_S)
            except Exception as e:  # an emulator bug must not end the simulated bus silently
                text = f"{type(e).__name__}: {e}"
                if text != last_error:
                    warn("emulator.error", error=text)
                    last_error = text
                self._rx.clear()
                time.sleep(0.01)

    def _park_line(self) -> None:
        if self._pty is not None:
            park_line(self._pty, self.baud, self.parity)

    def _end_frame(self, ended_at: float) -> None:
        self._frames.append((bytes(self._rx), self._rx_first, ended_at))
        self._rx.clear()

    def _absorb(self, fd: int, wake_r: int, timeout: float | None) -> None:
        """Wait up to ``timeout`` for input and add it to the frame being received."""
        ready, _, _ = select.select([fd, wake_r], [], [], timeout)
        if wake_r in ready or fd not in ready:
            return
        try:
            chunk = os.read(fd, 4096)
        except OSError as e:
            # EIO: nobody has the other side open; wait instead of spinning.
            if e.errno != errno.EIO:
                raise
            self._stopping.wait(0.01)
            return
        now = time.monotonic()
        if not chunk:
            self._stopping.wait(0.01)
            return
        if self._rx and now >= self._rx_wire_end + self._t35_s:
            # t3.5 of silence passed before these bytes: the frame before them is complete.
            self._end_frame(self._rx_wire_end + self._t35_s)
        if not self._rx:
            self._rx_first = now
            self._rx_wire_end = now
        # A pty hands over the whole chunk at once; on a wire it would still be arriving.
        self._rx_wire_end = max(self._rx_wire_end, now) + len(chunk) * self._char_s
        self._rx += chunk

    def _handle(self, fd: int, wake_r: int, frame: bytes, first_at: float, ended_at: float) -> None:
        if not crc_ok(frame):
            self._record(Exchange(first_at, frame, None, None, b""))
            return
        address = frame[0]
        det = self.detectors.get(address)
        if det is None:  # no such slave (or broadcast): nobody answers
            self._record(Exchange(first_at, frame, address, None, b""))
            return
        det._count("requests_seen")
        if det.silent:
            self._record(Exchange(first_at, frame, address, None, b""))
            return
        reply = self._answer(det, frame)
        start_at = ended_at + self.turnaround_s + max(0.0, det.reply_delay_s)
        sent = self._send_paced(fd, wake_r, reply, start_at)
        if sent is None:
            return
        det._count("replies_sent")
        reply_start, reply_end = sent
        self._record(Exchange(first_at, frame, address, reply_end, reply, reply_start))

    def _answer(self, det: EmulatedDetector, frame: bytes) -> bytes:
        address, function = frame[0], frame[1]
        body = self._body(det, frame)
        if body is None:
            body = bytes([address, function | 0x80, self._exception_code(det, frame)])
        if det.take("wrong_id"):
            body = bytes([address % 247 + 1]) + body[1:]
        reply = with_crc(body)
        if det.take("corrupt_crc"):
            reply = reply[:-2] + bytes([reply[-2] ^ 0xFF, reply[-1] ^ 0x5A])
        if det.take("stop_mid_frame"):
            reply = reply[: len(reply) // 2]
        return reply

    def _exception_code(self, det: EmulatedDetector, frame: bytes) -> int:
        function = frame[1]
        if function not in (3, 4) or function != det.profile.function_code:
            return ILLEGAL_FUNCTION
        if len(frame) != 8:
            return ILLEGAL_DATA_VALUE
        _, count = struct.unpack(">HH", frame[2:6])
        if not 1 <= count <= MAX_READ_REGISTERS:
            return ILLEGAL_DATA_VALUE
        return ILLEGAL_DATA_ADDRESS

    def _body(self, det: EmulatedDetector, frame: bytes) -> bytes | None:
        """The reply without CRC, or None when the request earns an exception reply."""
        function = frame[1]
        if function not in (3, 4) or function != det.profile.function_code or len(frame) != 8:
            return None
        start, count = struct.unpack(">HH", frame[2:6])
        if not 1 <= count <= MAX_READ_REGISTERS:
            return None
        block_start, block_count = det.profile.block
        if start < block_start or start + count > block_start + block_count:
            return None
        regs = det.registers()
        if det.take("short_reply"):
            count -= 1
        data = b"".join(regs[a].to_bytes(2, "big") for a in range(start, start + count))
        return bytes([frame[0], function, len(data)]) + data

    def _send_paced(
        self, fd: int, wake_r: int, reply: bytes, start_at: float
    ) -> tuple[float, float] | None:
        """Write ``reply`` so that byte i is released when it would have finished arriving on a
        real line (``start_at + (i + 1) * char time``). Returns the moments just before the
        writes that released the first and the last byte (the master cannot have had them
        earlier: a reaction time measured from here is never flattering), None when stopped
        first."""
        sent = 0
        first: float | None = None
        released = time.monotonic()
        while sent < len(reply):
            if self._stopping.is_set():
                return None
            now = time.monotonic()
            due = min(len(reply), max(0, math.floor((now - start_at) / self._char_s)))
            if due > sent:
                released = now
                if first is None:
                    first = now
                self._write(fd, reply[sent:due])
                sent = due
                continue
            next_at = start_at + (sent + 1) * self._char_s
            # Listen while waiting: a master that talks over the reply is recorded, not lost.
            self._absorb(fd, wake_r, max(0.0, next_at - time.monotonic()))
        return (released if first is None else first), released

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _record(self, exchange: Exchange) -> None:
        with self._history_lock:
            self._history.append(exchange)
