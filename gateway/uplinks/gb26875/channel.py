"""The GB/T 26875.3-2011 channel: a TCP client that forwards the outbox to a fire
remote-monitoring centre and answers the centre's few allowed requests.

What goes up (one outbox event becomes one or two frames, command 2 "send data"):

* detector events (``alarm.*``, ``fault.*`` of a detector): part status (type 2, part type
  10/11, bit1 alarm, bit2 fault) and, when the event has a concentration, an analog value
  (type 3, analog type 6, int16 in 0.1 %LEL);
* valve events (``valve.*``, valve faults): part status, part type 106 (bit5 open,
  bit6 feedback confirms the position, bit2 fault);
* site events (``operator.*``, ``controller.started``, ``config.*``, ``store.recovered``): the
  gateway's own state (type 21) and, for operator actions, an operation record (type 24);
* uplink events (``uplink.*``, ``sms.*``) and kinds this channel does not know: nothing; they
  are acknowledged in the outbox for this channel at once.

Send/confirm: one frame at a time, the centre's confirm must echo its serial number within
``confirm_timeout_s`` (<= 10 s); a deny, a corrupt answer or silence causes a re-send with the
same serial, ``retries`` times (default 3). Then the event goes back to the queue (the outbox
keeps it un-acked): after silence the connection is dropped and re-made with back-off; after
denies the channel waits the back-off and tries again. An event is acknowledged in the outbox
only when every one of its frames is confirmed (at least once delivery; the centre may see a
re-sent frame twice). Heartbeat: an empty send-data frame after ``heartbeat_s`` without traffic
(30 s), every ``heartbeat_bad_s`` (5 s) while the link is bad.

Down-link (only these, and only from the configured centre on the connection this channel
opened; frames whose addresses are not the centre's and this gateway's are ignored):

* read device status (type 81): answered (command 5) with type 21 from ``ctx.status()``;
* clock sync (command 1, type 90): recorded as ``uplink.clock_sync`` and confirmed. The system
  clock is set only if ``allow_clock_set`` is true: the event log's times are evidence, NTP
  normally owns the clock, and this frame is not authenticated beyond the TCP connection, so by
  default a wrong or forged centre time must not be able to rewrite when things happened;
* duty check (type 91, 查岗): recorded as ``uplink.duty_check`` (the controller prompts the
  staff; their answer, an ``operator.duty_answer`` event, goes up as type 24) and confirmed.

Everything else from the centre is denied (command 6) or, if it cannot even be parsed, ignored
with a log line. Nothing a centre sends can reach a valve or the configuration: the channel
holds only the outbox and the read-only ``UplinkContext``.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.core.model import Event
from gateway.log import error, log, warn
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.gb26875.codec import (
    ANALOG_GAS_CONCENTRATION,
    DEVICE_ALARM,
    DEVICE_BACKUP_FAULT,
    DEVICE_FAULT,
    DEVICE_MAINS_FAULT,
    DEVICE_NORMAL,
    OPERATION_DUTY_ANSWER,
    OPERATION_RESET,
    OPERATION_SILENCE,
    PART_ALARM,
    PART_FAULT,
    PART_FEEDBACK,
    PART_NORMAL,
    PART_OPEN,
    PART_TYPE_SOLENOID_VALVE,
    AnalogValue,
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
    app_data,
    decode_app_data,
    encode_frame,
    gas_value,
)
from gateway.uplinks.gb26875.config import Gb26875Config
from gateway.uplinks.outbox import Outbox, OutboxError, OutboxItem

CHANNEL = "gb26875"
RECV_SIZE = 4096
VALVE_ADDRESS_BASE = 1000  # default part address of valve n: 1000 + n (detectors: n)
OUTBOX_RETRY_S = 1.0  # after an outbox (disk) error
CLOCK_SET_MIN_OFFSET_S = 1.0  # a smaller difference is not worth moving the clock for
SITE_KINDS = (
    "controller.started",
    "config.applied",
    "config.rejected",
    "store.recovered",
    "operator.reset",
    "operator.reset_refused",
    "operator.silence",
    "operator.duty_answer",
    "power.mains_failed",
    "power.restored",
    "power.battery_low",
    "power.battery_ok",
    "fan.started",
    "fan.run_on",
    "fan.stopped",
    "fan.failed",
)
# Faults of things that are not parts the centre knows (no detector, no valve): reported as the
# transmission device's status, with its fault bit.
SITE_FAULTS = ("fan", "store")
OPERATION_FLAGS = {
    "operator.reset": OPERATION_RESET,
    "operator.silence": OPERATION_SILENCE,
    "operator.duty_answer": OPERATION_DUTY_ANSWER,
}


class LinkLost(Exception):
    """The TCP connection to the centre is unusable (closed, reset, or silent after retries)."""


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What ``gasguard status`` and doctor show for this channel."""

    channel: str
    centre: str
    connected: bool
    link_bad: bool
    last_error: str | None
    pending: int
    sent_frames: int
    confirmed_frames: int
    denied_frames: int
    resent_frames: int
    connects: int
    last_confirm_utc: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_system_clock(utc: float) -> None:
    """Set CLOCK_REALTIME (needs CAP_SYS_TIME). Only called with ``allow_clock_set``."""
    time.clock_settime(time.CLOCK_REALTIME, utc)


# ---------------------------------------------------------------------------------------------
# Events to application data (pure: testable without a socket)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Parts:
    """Names, current state and part addresses of the site's detectors and valves, taken from
    one status snapshot (empty if the status is not available)."""

    detectors: dict[str, dict[str, Any]]
    valves: dict[str, dict[str, Any]]
    detector_index: dict[str, int]
    valve_index: dict[str, int]
    simulated: bool
    status: dict[str, Any] | None

    @staticmethod
    def of(status: dict[str, Any] | None) -> _Parts:
        dets: dict[str, dict[str, Any]] = {}
        valves: dict[str, dict[str, Any]] = {}
        if status is not None:
            for d in status.get("detectors", []) or []:
                if isinstance(d, dict) and isinstance(d.get("name"), str):
                    dets[d["name"]] = d
            for v in status.get("valves", []) or []:
                if isinstance(v, dict) and isinstance(v.get("name"), str):
                    valves[v["name"]] = v
        return _Parts(
            dets,
            valves,
            {name: i + 1 for i, name in enumerate(dets)},
            {name: i + 1 for i, name in enumerate(valves)},
            bool(status.get("simulated")) if status is not None else False,
            status,
        )


def _is_valve_event(item: OutboxItem, parts: _Parts) -> bool:
    if item.kind.startswith("valve."):
        return True
    if item.kind.startswith("fault.") and item.details.get("fault") == "valve":
        return True
    return item.source in parts.valves and item.source not in parts.detectors


def _is_site_event(item: OutboxItem) -> bool:
    if item.kind in SITE_KINDS:
        return True
    return item.kind.startswith("fault.") and item.details.get("fault") in SITE_FAULTS


def _is_detector_event(item: OutboxItem, parts: _Parts) -> bool:
    return item.kind.startswith(("alarm.", "fault.")) and item.source != "site"


def part_address(cfg: Gb26875Config, parts: _Parts, name: str, valve: bool) -> int:
    """The configured part address, else the part's 1-based position in the status (valves
    from 1001), else a stable CRC-32 of its name (a part removed from the config)."""
    if name in cfg.part_addresses:
        return cfg.part_addresses[name]
    index = (parts.valve_index if valve else parts.detector_index).get(name)
    if index is not None:
        return VALVE_ADDRESS_BASE + index if valve else index
    return zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF


def _description(cfg: Gb26875Config, name: str, valve: bool) -> str:
    if name in cfg.descriptions:
        return cfg.descriptions[name]
    return ("燃气紧急切断阀 " if valve else "厨房燃气探测器 ") + name


def _event_time(utc: float, offset_h: float) -> GbTime:
    """The event's time as the frame's 6 bytes; an impossible one (before 2000, not a number)
    becomes now rather than keeping the event from going up."""
    try:
        return GbTime.from_utc(utc, offset_h)
    except (FrameError, OverflowError, OSError, ValueError, TypeError):
        return GbTime.from_utc(time.time(), offset_h)


# A power event says what its bit is now, whatever the status snapshot (taken a moment
# earlier or later) says: (bit, set).
POWER_BITS = {
    "power.mains_failed": (DEVICE_MAINS_FAULT, True),
    "power.restored": (DEVICE_MAINS_FAULT, False),
    "power.battery_low": (DEVICE_BACKUP_FAULT, True),
    "power.battery_ok": (DEVICE_BACKUP_FAULT, False),
}


def device_status_bits(status: dict[str, Any] | None, event_kind: str | None = None) -> int:
    """Type 21 status byte from the controller's status (and the event being reported, for a
    power event). Without a status (controller not answering) the fault bit is set: we cannot
    say all is well."""
    if status is None:
        bits = DEVICE_NORMAL | DEVICE_FAULT
    else:
        bits = 0 if status.get("simulated") else DEVICE_NORMAL
        if status.get("alarms"):
            bits |= DEVICE_ALARM
        if status.get("faults"):
            bits |= DEVICE_FAULT
        power = status.get("power") or {}
        if isinstance(power, dict):
            if power.get("mains") == "failed":
                bits |= DEVICE_MAINS_FAULT
            if power.get("battery") == "low":
                bits |= DEVICE_BACKUP_FAULT
    if event_kind in POWER_BITS:
        bit, on = POWER_BITS[event_kind]
        bits = (bits | bit | DEVICE_FAULT) if on else (bits & ~bit)
    return bits


def event_app_data(
    item: OutboxItem, cfg: Gb26875Config, status: dict[str, Any] | None
) -> list[bytes]:
    """The application data (one entry per frame) that reports ``item`` to the centre; []
    for events this channel does not forward. ``status`` is the controller's current status,
    used for the part list and for the state the event itself does not tell."""
    parts = _Parts.of(status)
    at = _event_time(item.utc, cfg.utc_offset_h)
    normal = 0 if parts.simulated else PART_NORMAL  # bit0: 1 normal, 0 test (simulated site)
    if _is_site_event(item):
        out = []
        flags = OPERATION_FLAGS.get(item.kind)
        if flags is not None:
            out.append(app_data(DeviceOperation(flags, 0, at)))
        out.append(app_data(DeviceStatus(device_status_bits(status, item.kind), at)))
        return out
    if _is_valve_event(item, parts):
        name = item.source
        current = parts.valves.get(name, {})
        kind = item.kind
        if kind in ("valve.closing", "valve.closed"):
            is_open = False
        elif kind == "valve.opened":
            is_open = True
        else:
            is_open = current.get("commanded") == "open"
        bits = normal | (PART_OPEN if is_open else 0)
        if kind in ("valve.closed", "valve.opened", "valve.closing"):
            if item.details.get("confirmed") is True:
                bits |= PART_FEEDBACK
        elif current.get("confirmed") is True:
            bits |= PART_FEEDBACK
        if kind in ("valve.failed", "fault.raised"):
            failed = True
        elif kind == "fault.cleared":
            failed = False
        else:
            failed = current.get("failed") is True
        if failed:
            bits |= PART_FAULT
        return [
            app_data(
                PartStatus(
                    cfg.system_type,
                    cfg.system_address,
                    PART_TYPE_SOLENOID_VALVE,
                    part_address(cfg, parts, name, valve=True),
                    bits,
                    _description(cfg, name, valve=True),
                    at,
                )
            )
        ]
    if _is_detector_event(item, parts):
        name = item.source
        current = parts.detectors.get(name, {})
        kind = item.kind
        if kind == "alarm.raised":
            alarm = True
        elif kind == "alarm.cleared":
            alarm = False
        else:
            alarm = current.get("level") in ("low", "high")
        if kind == "fault.raised":
            fault = True
        elif kind == "fault.cleared":
            fault = False
        else:
            fault = current.get("fault") is not None
        bits = normal | (PART_ALARM if alarm else 0) | (PART_FAULT if fault else 0)
        address = part_address(cfg, parts, name, valve=False)
        out = [
            app_data(
                PartStatus(
                    cfg.system_type,
                    cfg.system_address,
                    cfg.detector_part_type,
                    address,
                    bits,
                    _description(cfg, name, valve=False),
                    at,
                )
            )
        ]
        lel = item.details.get("lel")
        if (
            kind.startswith("alarm.")
            and isinstance(lel, int | float)
            and not isinstance(lel, bool)
            and math.isfinite(lel)
        ):
            out.append(
                app_data(
                    AnalogValue(
                        cfg.system_type,
                        cfg.system_address,
                        cfg.detector_part_type,
                        address,
                        ANALOG_GAS_CONCENTRATION,
                        gas_value(float(lel)),
                        at,
                    )
                )
            )
        return out
    return []


# ---------------------------------------------------------------------------------------------
# The channel
# ---------------------------------------------------------------------------------------------


class Gb26875Channel:
    """Forwards the outbox's ``gb26875`` queue to one centre over TCP, on its own thread.

    ``clock`` is monotonic time (timeouts, heartbeats, back-off); ``wall`` gives frame times;
    ``set_clock`` is what a clock sync calls when ``cfg.allow_clock_set`` is true (default: set
    CLOCK_REALTIME). ``channel`` is this channel's name in the outbox."""

    def __init__(
        self,
        cfg: Gb26875Config,
        outbox: Outbox,
        ctx: UplinkContext,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall: Callable[[], float] = time.time,
        set_clock: Callable[[float], None] = _set_system_clock,
        channel: str = CHANNEL,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.ctx = ctx
        self.channel = channel
        self._clock = clock
        self._wall = wall
        self._set_clock = set_clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = self._wake_pair()
        self._serial = 0
        self._reader = FrameReader()
        self._sock: socket.socket | None = None
        # Bad until a confirm proves otherwise: a fresh connection is checked at the fast pace.
        self._link_bad = True
        self._hold_until = 0.0
        self._last_exchange = 0.0  # monotonic time of the last frame sent (heartbeat base)
        self._backoff = cfg.backoff_min_s
        self._down_since: float | None = None
        self._down_recorded = False
        # state for status/doctor (written by the channel thread, read anywhere)
        self._connected = False
        self._last_error: str | None = None
        self._pending = 0
        self._sent = 0
        self._confirmed = 0
        self._denied = 0
        self._resent = 0
        self._connects = 0
        self._last_confirm_utc: float | None = None
        outbox.watch(self.wake)

    # -- life cycle -------------------------------------------------------------------------------

    @property
    def centre(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    @staticmethod
    def _wake_pair() -> tuple[socket.socket, socket.socket]:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        return r, w

    def start(self) -> None:
        """Start the channel thread (it connects, and keeps re-connecting, by itself)."""
        if self._thread is not None:
            raise RuntimeError("gb26875 channel already started")
        if self._wake_r.fileno() < 0:  # closed by an earlier stop()
            self._wake_r, self._wake_w = self._wake_pair()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"uplink-{self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the connection. Un-confirmed events stay in the outbox."""
        self._stop.set()
        self.wake()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._thread = None
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    def wake(self) -> None:
        """Make the thread look at the outbox now (called by the outbox after ``add``, on the
        recorder thread: it only writes one byte to a non-blocking socket pair)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\x00")

    @property
    def state(self) -> ChannelState:
        return ChannelState(
            channel=self.channel,
            centre=self.centre,
            connected=self._connected,
            link_bad=self._link_bad,
            last_error=self._last_error,
            pending=self._pending,
            sent_frames=self._sent,
            confirmed_frames=self._confirmed,
            denied_frames=self._denied,
            resent_frames=self._resent,
            connects=self._connects,
            last_confirm_utc=self._last_confirm_utc,
        )

    @property
    def connected(self) -> bool:
        """True while a TCP connection to the centre is up."""
        return self._connected

    @property
    def link_up(self) -> bool:
        """True while connected and the centre's last answer was a confirm: what the SMS
        fallback asks (a connection to a centre that never confirms is not a working link)."""
        return self._connected and not self._link_bad

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        log("gb26875.started", centre=self.centre, device=self.cfg.device_address)
        while not self._stop.is_set():
            try:
                sock = socket.create_connection(
                    (self.cfg.host, self.cfg.port), timeout=self.cfg.connect_timeout_s
                )
            except OSError as e:
                if not self._stop.is_set():
                    self._link_down(f"cannot connect to centre {self.centre}: {e}")
                    self._wait_backoff()
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                self._sock = sock
                self._reader = FrameReader()
                self._link_up()
                self._session()
            except LinkLost as e:
                if not self._stop.is_set():
                    self._link_down(str(e))
            except Exception as e:  # a bug here must not end forwarding: log, reconnect
                if not self._stop.is_set():
                    error("gb26875.channel_error", centre=self.centre, error=repr(e))
                    self._link_down(f"channel error: {e!r}")
            finally:
                self._connected = False
                self._sock = None
                with contextlib.suppress(OSError):
                    sock.close()
            if not self._stop.is_set():
                self._wait_backoff()
        log("gb26875.stopped", centre=self.centre)

    def _wait_backoff(self) -> None:
        self._stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, self.cfg.backoff_max_s)

    def _link_up(self) -> None:
        self._connected = True
        self._connects += 1
        self._last_exchange = self._clock()
        log("gb26875.connected", centre=self.centre)

    def _link_down(self, why: str) -> None:
        """The connection failed or the centre went silent: one ``uplink.down`` event per
        outage (not one per reconnect attempt), and the fast heartbeat from now on."""
        self._connected = False
        self._link_bad = True
        self._last_error = why
        warn("gb26875.link_down", centre=self.centre, error=why)
        if self._down_since is None:
            self._down_since = self._clock()
        if not self._down_recorded:
            self._down_recorded = True
            self._record("uplink.down", {"error": why})

    def _link_good(self) -> None:
        """A confirm arrived: the link works end to end."""
        if self._down_recorded and self._down_since is not None:
            down_s = round(self._clock() - self._down_since, 3)
            self._record("uplink.up", {"down_s": down_s})
            log("gb26875.link_up", centre=self.centre, down_s=down_s)
        self._down_recorded = False
        self._down_since = None
        self._link_bad = False
        self._backoff = self.cfg.backoff_min_s
        self._last_error = None

    def _record(self, kind: str, details: dict[str, Any]) -> None:
        full = {"channel": self.channel, "centre": self.centre, **details}
        try:
            self.ctx.record(Event(kind, self.channel, self._clock(), full))
        except Exception as e:  # recording is best effort here; the log line remains
            error("gb26875.record_failed", kind=kind, error=repr(e))

    def _heartbeat_interval(self) -> float:
        return self.cfg.heartbeat_bad_s if self._link_bad else self.cfg.heartbeat_s

    def _status(self) -> dict[str, Any] | None:
        try:
            status = self.ctx.status()
        except Exception as e:
            warn("gb26875.no_status", error=repr(e))
            return None
        return status if isinstance(status, dict) else None

    def _outbox_failed(self, e: Exception) -> None:
        """The outbox file failed (disk error): keep the link, look again in a second."""
        self._last_error = f"outbox: {e}"
        error("gb26875.outbox_failed", error=str(e))
        self._hold_until = self._clock() + OUTBOX_RETRY_S

    def _session(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            items: list[OutboxItem] = []
            try:
                self._pending = self.outbox.pending(self.channel)
                if self._pending and now >= self._hold_until:
                    items = self.outbox.peek(self.channel, 1)
            except OutboxError as e:
                self._outbox_failed(e)
            if items:
                self._deliver(items[0])
                continue
            next_heartbeat = self._last_exchange + self._heartbeat_interval()
            if now >= next_heartbeat:
                self._exchange(b"")  # raises LinkLost if the centre stays silent
                continue
            wait = next_heartbeat - now
            if self._pending:
                wait = min(wait, max(0.0, self._hold_until - now))
            self._idle(min(wait, self.cfg.idle_poll_s))

    def _deliver(self, item: OutboxItem) -> None:
        try:
            blobs = event_app_data(item, self.cfg, self._status())
        except Exception as e:
            # Cannot be put into a frame (a bug, or details no code expected): re-trying would
            # block everything behind it, so it is recorded (never silently lost) and skipped.
            error("gb26875.unencodable", seq=item.seq, kind=item.kind, error=repr(e))
            self._record(
                "uplink.unencodable", {"seq": item.seq, "kind": item.kind, "error": repr(e)}
            )
            blobs = []
        for data in blobs:
            if not self._exchange(data):
                # Denied every time: back to the queue; try again after the back-off.
                self._hold_until = self._clock() + self._backoff
                self._backoff = min(self._backoff * 2, self.cfg.backoff_max_s)
                warn(
                    "gb26875.requeued",
                    seq=item.seq,
                    kind=item.kind,
                    reason="denied",
                    retry_in_s=round(self._hold_until - self._clock(), 3),
                )
                return
        try:
            self.outbox.ack(self.channel, item.seq)
        except OutboxError as e:
            self._outbox_failed(e)  # it will be sent again: the centre sees it twice at worst
            return
        self._pending = max(0, self._pending - 1)

    def _next_serial(self) -> int:
        self._serial = (self._serial + 1) & 0xFFFF
        return self._serial

    def _exchange(self, data: bytes) -> bool:
        """Send one send-data frame and wait for its confirm, re-sending up to ``retries``
        times. True when confirmed; False when the centre denied the last try; LinkLost when it
        never answered (or the connection broke)."""
        cfg = self.cfg
        frame = Frame(
            self._next_serial(),
            Command.SEND_DATA,
            cfg.device_address,
            cfg.centre_address,
            GbTime.from_utc(self._wall(), cfg.utc_offset_h),
            data,
        )
        raw = encode_frame(frame)
        answer = "none"
        for attempt in range(cfg.retries + 1):
            if attempt:
                self._resent += 1
            self._send(raw)
            self._sent += 1
            self._last_exchange = self._clock()
            answer = self._await_answer(frame.serial, self._clock() + cfg.confirm_timeout_s)
            if answer == "none" and self._stop.is_set():
                raise LinkLost("channel stopping")
            if answer == "confirm":
                self._confirmed += 1
                self._last_confirm_utc = self._wall()
                self._link_good()
                return True
            if answer == "deny":
                self._denied += 1
                self._link_bad = True
                self._last_error = f"centre denied frame serial {frame.serial}"
                warn("gb26875.denied", serial=frame.serial, attempt=attempt + 1)
            else:
                self._link_bad = True
                self._last_error = (
                    f"no confirm for frame serial {frame.serial} within {cfg.confirm_timeout_s:g} s"
                )
                warn("gb26875.no_confirm", serial=frame.serial, attempt=attempt + 1)
        if answer == "deny":
            return False
        raise LinkLost(
            f"no confirm from centre {self.centre} for frame serial {frame.serial} after "
            f"{cfg.retries + 1} tries of {cfg.confirm_timeout_s:g} s"
        )

    def _send(self, raw: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise LinkLost("not connected")
        view = memoryview(raw)
        deadline = self._clock() + self.cfg.confirm_timeout_s
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                n = 0
            except OSError as e:
                raise LinkLost(f"sending to centre {self.centre} failed: {e}") from e
            view = view[n:]
            if view:
                if self._clock() > deadline:
                    raise LinkLost(f"centre {self.centre} does not take data (send blocked)")
                select.select([], [sock], [], 0.05)

    def _await_answer(self, serial: int, deadline: float) -> str:
        """Read until the centre answers ``serial``: "confirm", "deny" or "none" (deadline)."""
        while True:
            left = deadline - self._clock()
            if left <= 0 or self._stop.is_set():
                return "none"
            for frame in self._receive(min(left, 0.1)):
                if frame.command in (Command.CONFIRM, Command.DENY):
                    if frame.serial == serial:
                        return "confirm" if frame.command == Command.CONFIRM else "deny"
                    log("gb26875.stale_answer", serial=frame.serial, waiting_for=serial)
                    continue
                self._on_downlink(frame)

    def _idle(self, timeout: float) -> None:
        for frame in self._receive(timeout, wake=True):
            if frame.command in (Command.CONFIRM, Command.DENY):
                log("gb26875.stale_answer", serial=frame.serial, waiting_for="nothing")
                continue
            self._on_downlink(frame)

    def _receive(self, timeout: float, wake: bool = False) -> list[Frame]:
        """Frames that arrive within ``timeout`` (returns at the first data, or a wake-up)."""
        sock = self._sock
        if sock is None:
            raise LinkLost("not connected")
        watch: list[socket.socket] = [sock, self._wake_r] if wake else [sock]
        readable, _, _ = select.select(watch, [], [], max(0.0, timeout))
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
        if sock not in readable:
            return []
        try:
            chunk = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return []
        except OSError as e:
            raise LinkLost(f"receiving from centre {self.centre} failed: {e}") from e
        if not chunk:
            raise LinkLost(f"centre {self.centre} closed the connection")
        frames = []
        for result in self._reader.feed(chunk):
            if isinstance(result, FrameError):
                warn("gb26875.bad_frame", centre=self.centre, error=str(result))
                continue
            if not self._addressed_to_us(result):
                continue
            frames.append(result)
        return frames

    def _addressed_to_us(self, frame: Frame) -> bool:
        cfg = self.cfg
        if frame.destination != cfg.device_address or (
            cfg.centre_address and frame.source != cfg.centre_address
        ):
            warn(
                "gb26875.foreign_frame",
                source=frame.source,
                destination=frame.destination,
                expected_source=cfg.centre_address or "any",
                expected_destination=cfg.device_address,
                frame=frame.describe(),
            )
            return False
        return True

    # -- down-link --------------------------------------------------------------------------------

    def _answer(self, request: Frame, command: Command, data: bytes = b"") -> None:
        reply = Frame(
            request.serial,
            command,
            self.cfg.device_address,
            request.source,
            GbTime.from_utc(self._wall(), self.cfg.utc_offset_h),
            data,
        )
        self._send(encode_frame(reply))

    def _deny(self, request: Frame, why: str) -> None:
        warn("gb26875.downlink_denied", frame=request.describe(), reason=why)
        self._answer(request, Command.DENY)

    def _on_downlink(self, frame: Frame) -> None:
        """One frame the centre sent on its own. Answers it; never raises FrameError."""
        command = frame.command
        if command == Command.REPLY:
            log("gb26875.unexpected_reply", frame=frame.describe())
            return
        if command == Command.SEND_DATA and not frame.data:
            self._answer(frame, Command.CONFIRM)  # the centre's own heartbeat
            return
        if command not in (Command.CONTROL, Command.REQUEST):
            self._deny(frame, f"command {command} is not accepted from the centre")
            return
        try:
            unit = decode_app_data(frame.data)
        except FrameError as e:
            self._deny(frame, str(e))
            return
        if unit.type_flag == DataType.READ_DEVICE_STATUS:
            data = app_data(
                DeviceStatus(
                    device_status_bits(self._status()),
                    GbTime.from_utc(self._wall(), self.cfg.utc_offset_h),
                )
            )
            self._answer(frame, Command.REPLY, data)
            log("gb26875.status_read", serial=frame.serial)
            return
        if unit.type_flag == DataType.CLOCK_SYNC and command == Command.CONTROL:
            obj = unit.objects[0]
            assert isinstance(obj, ClockSync)
            self._clock_sync(frame, obj)
            return
        if unit.type_flag == DataType.DUTY_CHECK:
            obj = unit.objects[0]
            assert isinstance(obj, DutyCheck)
            self._record(
                "uplink.duty_check",
                {"timeout_min": obj.timeout_min, "serial": frame.serial, "from": frame.source},
            )
            self._answer(frame, Command.CONFIRM)
            log("gb26875.duty_check", timeout_min=obj.timeout_min)
            return
        self._deny(frame, f"data type {unit.type_flag} with command {command} is not accepted")

    def _clock_sync(self, frame: Frame, obj: ClockSync) -> None:
        try:
            centre_utc = obj.time.to_utc(self.cfg.utc_offset_h)
        except FrameError as e:
            self._deny(frame, str(e))
            return
        offset = round(centre_utc - self._wall(), 3)
        details: dict[str, Any] = {
            "centre_time": str(obj.time),
            "offset_s": offset,
            "applied": False,
        }
        if not self.cfg.allow_clock_set:
            details["note"] = "allow_clock_set is false: system clock left alone"
        elif abs(offset) >= CLOCK_SET_MIN_OFFSET_S:
            try:
                self._set_clock(centre_utc)
                details["applied"] = True
            except (OSError, ValueError) as e:
                details["error"] = str(e)
                warn("gb26875.clock_set_failed", error=str(e))
        self._record("uplink.clock_sync", details)
        self._answer(frame, Command.CONFIRM)
        log("gb26875.clock_sync", **details)
