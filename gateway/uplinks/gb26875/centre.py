"""A GB/T 26875.3 test centre: a TCP server that takes a site's frames, confirms them and shows
what it got. Used by the tests (fault injection) and by technicians to check a site before it
goes live (``gasguard gb-centre``).

It decodes every frame and its application data, answers send-data frames with a confirm
(echoing the serial number), and can be told to deny, drop (stay silent) or corrupt (a confirm
with a broken checksum) frames, to check that the site re-sends and re-queues. It can send the
down-link requests a real centre sends (read device status, clock sync, duty check) and
returns the site's answer.

It never opens anything on the site: it only talks GB/T 26875.3 to whoever connects.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.uplinks.gb26875.codec import (
    PART_ALARM,
    PART_FAULT,
    PART_FEEDBACK,
    PART_NORMAL,
    PART_OPEN,
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
    decode_app_data,
    encode_frame,
)

DEFAULT_PORT = 26875
ANSWERS = ("confirm", "deny", "drop", "corrupt")


@dataclass(frozen=True, slots=True)
class Received:
    """One frame the centre got: when (monotonic), from which connection, the frame, its decoded
    application data (None for an empty frame or one that does not decode: see ``error``), and
    how the centre answered."""

    at: float
    peer: str
    frame: Frame
    data: AppData | None
    error: str | None
    answer: str

    @property
    def is_heartbeat(self) -> bool:
        return self.frame.command == Command.SEND_DATA and not self.frame.data


@dataclass
class _Client:
    sock: socket.socket
    peer: str
    reader: FrameReader = field(default_factory=FrameReader)
    lock: threading.Lock = field(default_factory=threading.Lock)


class GbCentre:
    """The test centre. ``port=0`` picks a free port (see ``.port`` after ``start``).

    Fault knobs (thread-safe): ``answer_mode`` for every frame ("confirm", "deny", "drop",
    "corrupt"); ``deny_next(n)``, ``drop_next(n)``, ``corrupt_next(n)`` for the next n data
    frames (send-data frames with application data; heartbeats are left alone)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        address: int = 0,
        utc_offset_h: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
        on_frame: Callable[[Received], None] | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.address = address
        self.utc_offset_h = utc_offset_h
        self._clock = clock
        self._on_frame = on_frame
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._received: list[Received] = []
        self._answers: dict[int, Frame] = {}
        self._errors: list[str] = []
        self._clients: list[_Client] = []
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._serial = itertools.count(1)
        self.answer_mode = "confirm"
        self._deny = 0
        self._drop = 0
        self._corrupt = 0
        self.connections = 0

    # -- life cycle -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        """Listen and accept in a thread. Re-startable after ``stop`` (same port)."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((self.host, self._port))
            server.listen(8)
        except OSError:
            server.close()
            raise
        self._port = server.getsockname()[1]
        self._server = server
        self._stop.clear()
        t = threading.Thread(target=self._accept, name="gb-centre-accept", daemon=True)
        self._threads = [t]
        t.start()

    def stop(self) -> None:
        """Close the listening socket and every connection (the centre goes away)."""
        self._stop.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
        self.disconnect_clients()
        for t in self._threads:
            t.join(2.0)
        self._threads = []
        self._server = None

    def disconnect_clients(self) -> None:
        """Drop every connection (the site must reconnect)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.sock.close()

    def __enter__(self) -> GbCentre:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault knobs ------------------------------------------------------------------------------

    def deny_next(self, n: int) -> None:
        with self._lock:
            self._deny += n

    def drop_next(self, n: int) -> None:
        with self._lock:
            self._drop += n

    def corrupt_next(self, n: int) -> None:
        with self._lock:
            self._corrupt += n

    # -- what it got ------------------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def errors(self) -> list[str]:
        """Frames that did not decode, and garbage between frames."""
        with self._lock:
            return list(self._errors)

    def data_frames(self) -> list[Received]:
        """Send-data frames with application data, in arrival order (re-sends included)."""
        return [r for r in self.received if r.frame.command == Command.SEND_DATA and r.frame.data]

    def confirmed(self) -> list[Received]:
        """Data frames the centre confirmed, each serial once (a confirmed re-send of an
        already confirmed serial is not counted twice), in arrival order."""
        out = []
        seen: set[tuple[str, int]] = set()
        for r in self.data_frames():
            key = (r.peer, r.frame.serial)
            if r.answer == "confirm" and key not in seen:
                seen.add(key)
                out.append(r)
        return out

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        """Wait until ``predicate(received)`` is true; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                received = list(self._received)
            # Asked outside the lock: a predicate may call confirmed() or received.
            if predicate(received):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                if len(self._received) == len(received):
                    self._changed.wait(min(left, 0.1))

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._clients:
                    return True
            time.sleep(0.01)
        return False

    # -- down-link --------------------------------------------------------------------------------

    def request(
        self,
        command: Command,
        data: bytes,
        timeout: float = 5.0,
        *,
        raw: bytes | None = None,
        site: int | None = None,
    ) -> Frame | None:
        """Send a frame to the most recent client and wait for the answer that echoes its
        serial (None if none within ``timeout``). The frame goes to ``site`` (default: the
        source address of the last frame received). ``raw`` sends those bytes instead (garbage
        tests); the serial waited for is then the one in ``raw`` if it is a frame."""
        with self._lock:
            if not self._clients:
                raise RuntimeError("gb-centre: no site connected")
            client = self._clients[-1]
        serial = next(self._serial) & 0xFFFF
        if raw is None:
            frame = Frame(
                serial,
                command,
                self.address,
                self._site_address() if site is None else site,
                GbTime.from_utc(time.time(), self.utc_offset_h),
                data,
            )
            raw = encode_frame(frame)
        elif len(raw) >= 4 and raw[:2] == b"@@":
            serial = raw[2] | raw[3] << 8
        with client.lock:
            client.sock.sendall(raw)
        deadline = time.monotonic() + timeout
        with self._changed:
            while serial not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.1))
            return self._answers.pop(serial)

    def _site_address(self) -> int:
        with self._lock:
            for r in reversed(self._received):
                return r.frame.source
        return 0

    def read_status(self, timeout: float = 5.0, *, site: int | None = None) -> Frame | None:
        """Type 81: ask the site for its transmission-device status (answer: command 5)."""
        return self.request(Command.REQUEST, app_data(ReadDeviceStatus()), timeout, site=site)

    def clock_sync(
        self, when: datetime | None = None, timeout: float = 5.0, *, site: int | None = None
    ) -> Frame | None:
        """Command 1, type 90: send the site a time (default: now, in the centre's zone)."""
        t = GbTime.from_datetime(when) if when else GbTime.from_utc(time.time(), self.utc_offset_h)
        return self.request(Command.CONTROL, app_data(ClockSync(t)), timeout, site=site)

    def duty_check(
        self, timeout_min: int = 10, timeout: float = 5.0, *, site: int | None = None
    ) -> Frame | None:
        """Type 91 (查岗): ask whether someone is on duty; the site confirms receipt."""
        return self.request(Command.CONTROL, app_data(DutyCheck(timeout_min)), timeout, site=site)

    # -- threads ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        server = self._server
        assert server is not None
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([server], [], [], 0.1)
                if not readable:
                    continue
                sock, addr = server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, f"{addr[0]}:{addr[1]}")
            with self._lock:
                self._clients.append(client)
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, client: _Client) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([client.sock], [], [], 0.1)
                if not readable:
                    continue
                chunk = client.sock.recv(4096)
                if not chunk:
                    return
                for result in client.reader.feed(chunk):
                    if isinstance(result, FrameError):
                        with self._changed:
                            self._errors.append(str(result))
                            self._changed.notify_all()
                        continue
                    self._on_frame_in(client, result)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            with contextlib.suppress(OSError):
                client.sock.close()

    def _choose_answer(self, frame: Frame) -> str:
        with self._lock:
            if self.answer_mode != "confirm":
                return self.answer_mode
            if not frame.data:
                return "confirm"
            for name in ("_deny", "_drop", "_corrupt"):
                if getattr(self, name) > 0:
                    setattr(self, name, getattr(self, name) - 1)
                    return name[1:]
        return "confirm"

    def _on_frame_in(self, client: _Client, frame: Frame) -> None:
        if frame.command in (Command.CONFIRM, Command.DENY, Command.REPLY):
            with self._changed:
                self._answers[frame.serial] = frame
                self._changed.notify_all()
            return
        data: AppData | None = None
        err: str | None = None
        if frame.data:
            try:
                data = decode_app_data(frame.data)
            except FrameError as e:
                err = str(e)
        answer = self._choose_answer(frame)
        if frame.command != Command.SEND_DATA and answer == "confirm":
            answer = "deny"  # a site sends data, nothing else
        if answer != "drop":
            reply = encode_frame(
                Frame(
                    frame.serial,
                    Command.CONFIRM if answer in ("confirm", "corrupt") else Command.DENY,
                    self.address,
                    frame.source,
                    GbTime.from_utc(time.time(), self.utc_offset_h),
                )
            )
            if answer == "corrupt":
                reply = reply[:-3] + bytes(((reply[-3] + 0x55) & 0xFF,)) + reply[-2:]
            with client.lock, contextlib.suppress(OSError):
                client.sock.sendall(reply)
        got = Received(self._clock(), client.peer, frame, data, err, answer)
        with self._changed:
            self._received.append(got)
            self._changed.notify_all()
        if self._on_frame is not None:
            self._on_frame(got)


# ---------------------------------------------------------------------------------------------
# Human-readable lines and the CLI
# ---------------------------------------------------------------------------------------------


def _bits(value: int, names: dict[int, str]) -> str:
    return ",".join(name for bit, name in names.items() if value & bit) or "-"


_PART_BITS = {
    PART_NORMAL: "normal",
    PART_ALARM: "alarm",
    PART_FAULT: "fault",
    PART_OPEN: "open",
    PART_FEEDBACK: "feedback",
}
_DEVICE_BITS = {1: "normal", 2: "alarm", 4: "fault", 8: "mains-fault", 16: "backup-fault"}


def describe_object(obj: object) -> str:
    """One object as a short human-readable text."""
    if isinstance(obj, PartStatus):
        return (
            f"part type={obj.part_type} addr={obj.part_address} "
            f"status={_bits(obj.status, _PART_BITS)} 0x{obj.status:04x} "
            f"'{obj.description}' at {obj.at}"
        )
    if isinstance(obj, AnalogValue):
        unit = " %LEL" if obj.analog_type == 6 else ""
        value = obj.value / 10 if obj.analog_type == 6 else obj.value
        return (
            f"analog type={obj.analog_type} addr={obj.part_address} value={value}{unit} at {obj.at}"
        )
    if isinstance(obj, DeviceStatus):
        return f"device status={_bits(obj.status, _DEVICE_BITS)} 0x{obj.status:02x} at {obj.at}"
    if isinstance(obj, DeviceOperation):
        return f"device operation flags=0x{obj.flags:02x} operator={obj.operator} at {obj.at}"
    return repr(obj)


def describe_received(r: Received) -> str:
    """One line for a technician: who sent what, and how the centre answered."""
    head = f"{r.peer} src={r.frame.source} {r.frame.describe()} -> {r.answer}"
    if r.is_heartbeat:
        return head + " (heartbeat)"
    if r.error:
        return head + f" BAD DATA: {r.error}"
    if r.data is None:
        return head
    try:
        name = DataType(r.data.type_flag).name.lower()
    except ValueError:
        name = str(r.data.type_flag)
    return head + f" {name}: " + "; ".join(describe_object(o) for o in r.data.objects)


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """``gasguard gb-centre``: run a GB/T 26875.3 test centre and print every frame."""
    p = sub.add_parser(
        "gb-centre",
        help="run a GB/T 26875.3 test centre (prints every frame a site sends, confirms it)",
        description=(
            "A GB/T 26875.3 test centre for commissioning: point the site's [uplink.gb26875] "
            "host/port here, raise a test alarm, and check every frame arrives and decodes."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--address", type=int, default=0, help="this centre's 6-byte address")
    p.add_argument("--answer", choices=ANSWERS, default="confirm", help="answer to every frame")
    p.add_argument("--duration", type=float, default=0.0, help="stop after N s (0: Ctrl-C)")
    p.add_argument("--read-status", action="store_true", help="ask each new site for its status")
    p.add_argument("--clock-sync", action="store_true", help="send a clock sync to each new site")
    p.add_argument("--duty-check", action="store_true", help="send a duty check to each new site")
    p.set_defaults(func=run_centre)


def run_centre(args: argparse.Namespace) -> int:
    """The ``gb-centre`` command: exit status 0, or 2 for an unusable port or address."""
    if not 1 <= args.port <= 65535:
        print(f"gb-centre: --port {args.port}: must be from 1 to 65535")
        return 2
    if not 0 <= args.address < 1 << 48:
        print(f"gb-centre: --address {args.address}: must be from 0 to {(1 << 48) - 1}")
        return 2
    centre = GbCentre(
        args.host, args.port, address=args.address, on_frame=lambda r: print(describe_received(r))
    )
    centre.answer_mode = args.answer
    try:
        centre.start()
    except OSError as e:
        print(f"gb-centre: cannot listen on {args.host}:{args.port}: {e}")
        return 2
    print(f"gb-centre: listening on {args.host}:{centre.port}, answering '{args.answer}'")
    end = time.monotonic() + args.duration if args.duration > 0 else None
    seen = 0
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
            if centre.connections > seen and centre.received:
                seen = centre.connections
                _probe(centre, args)
    except KeyboardInterrupt:
        pass
    finally:
        centre.stop()
        frames = centre.data_frames()
        print(
            f"gb-centre: {len(frames)} data frames, {len(centre.errors)} bad, "
            f"{centre.connections} connections"
        )
    return 0


def _probe(centre: GbCentre, args: argparse.Namespace) -> None:
    asks: list[tuple[str, Callable[[], Frame | None]]] = []
    if args.read_status:
        asks.append(("read status", centre.read_status))
    if args.clock_sync:
        asks.append(("clock sync", centre.clock_sync))
    if args.duty_check:
        asks.append(("duty check", centre.duty_check))
    for name, ask in asks:
        try:
            answer = ask()
        except (RuntimeError, OSError) as e:
            print(f"gb-centre: {name}: {e}")
            continue
        if answer is None:
            print(f"gb-centre: {name}: no answer within 5 s")
            continue
        text = answer.describe()
        if answer.data:
            with contextlib.suppress(FrameError):
                unit = decode_app_data(answer.data)
                text += " " + "; ".join(describe_object(o) for o in unit.objects)
        print(f"gb-centre: {name}: {text}")
