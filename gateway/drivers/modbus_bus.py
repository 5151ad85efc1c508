"""The Modbus RTU poller: one owner thread per RS-485 port, reading every detector on it.

``DetectorBus`` opens the port with pyserial, shares it between one ``minimalmodbus.Instrument``
per detector (minimalmodbus checks every reply's CRC, slave id, function code and byte count, and
waits t3.5 after the previous reply, keyed by port name), reads each detector's
``Profile.block`` once per period and hands the result to ``deliver``:

* a ``Reading`` (decoded by the profile, stamped with ``clock()`` when the reply arrived), or
* a ``CommFailure`` when the poll produced no valid reply after ``bus.retries`` extra attempts
  (timeout, CRC, wrong slave id, short reply, exception reply, serial error). Never a stale or
  partial value: silence is a fault, not a value.

Nothing here decides alarm or fault; the safety core does. Safety-relevant behaviour:

* Fixed-deadline schedule: cycle k is due at ``origin + k * period_s``. A cycle that ends after
  the next deadline starts the next one at once; one that ends more than a whole period late
  skips the deadlines it missed (counted in ``overruns``). Never a burst of catch-up cycles, and
  never a cycle before its deadline.
* Healthy detectors first, one attempt each. Retries, and detectors that keep failing, come after
  them, and each attempt is made only if a whole reply timeout still fits before the next
  deadline: on a busy bus a silent detector does not cost the healthy ones their cycles. A
  failing detector is retried ``bus.retries`` times on its first 2 failed polls; after that it
  is backed off: tried only every 2, 4, 8 ... cycles (at least every ~2 s), once. Where its
  timeout never fits it is still tried every ``MAX_BACKOFF_S`` (a late cycle, never a dropped
  one) so that it recovers as soon. Cycles it is skipped deliver nothing: the core raises the
  comm fault from the age of the last valid reply.
* Confirm at once: a reading that reaches a higher alarm level than the one before (the low or
  high set point, or the detector's own alarm status) is followed at once by another poll of
  that detector, up to ``confirm_count - 1`` times while it stays there, before the cycle goes
  on. The safety core then has its
  confirming readings one frame later instead of one cycle later; the cycle grows by at most
  ``confirm_count - 1`` polls per alarming detector (``gateway.busload`` counts them).
* t3.5 after every frame on the line: before each request the poller waits until the line has
  been silent for t3.5 (plus ``gap_ms``) since the last byte seen, so a late reply that arrives
  after the master gave up is never talked over.
* A port that disappears (USB adapter pulled) is closed; every detector on it gets a
  ``CommFailure`` once per cycle while it is gone; reopening is tried at most once a second and
  the bus recovers by itself.
* The thread never dies silently: every poll and every cycle is guarded, errors are logged.
* Valve first: between a reply and ``deliver`` there is no logging and no lock. Log lines go
  through a queue to a separate thread, so a stuck stdout cannot stall the poll loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import select
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import minimalmodbus
import serial
import serial.rs485

from gateway.config import BusConfig, DetectorConfig
from gateway.core.model import CommFailure, Level, Reading
from gateway.log import log
from gateway.rtu import read_exchange_time, silent_attempt_time

REOPEN_INTERVAL_S = 1.0  # a lost port is reopened at most this often
BACKOFF_AFTER_FAILURES = 2  # failed polls in a row before a detector is backed off
MAX_BACKOFF_S = 2.0  # a backed-off detector is still tried at least this often
WRITE_TIMEOUT_S = 1.0  # a request write that blocks this long means the port is broken
ERROR_TEXT_MAX = 240
RECENT_CYCLES = 64

PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
STOP_BITS = {1: serial.STOPBITS_ONE, 2: serial.STOPBITS_TWO}

Delivery = Reading | CommFailure


# ---------------------------------------------------------------------------------------------
# Logging off the poll path
# ---------------------------------------------------------------------------------------------

_log_queue: queue.SimpleQueue[tuple[str, int, dict[str, Any]]] = queue.SimpleQueue()
_log_thread: threading.Thread | None = None
_log_thread_lock = threading.Lock()


def _log_pump() -> None:
    while True:
        event, level, fields = _log_queue.get()
        # A broken log stream must not end the pump.
        with contextlib.suppress(Exception):
            log(event, level, **fields)


def _ensure_log_pump() -> None:
    global _log_thread
    with _log_thread_lock:
        if _log_thread is None or not _log_thread.is_alive():
            _log_thread = threading.Thread(target=_log_pump, name="bus-log", daemon=True)
            _log_thread.start()


def _note(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Queue one log line for the log thread; never blocks the caller."""
    _log_queue.put((event, level, fields))


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Stats
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusStats:
    """A snapshot of one bus for ``gasguard status``, the doctor and the benchmark.

    Times are ``clock()`` seconds. Cycle k was due at ``origin + k * period_s``;
    ``recent_cycles`` holds (k, start) of the last cycles. ``overruns`` counts deadlines skipped
    because a cycle ran past them. ``consecutive_failures`` counts each detector's
    ``CommFailure`` deliveries since its last valid reply; ``backed_off`` lists detectors polled
    less often because they keep failing. ``stray_bytes`` counts bytes heard on the line outside
    any reply the poller waited for (late replies, noise); each made it hold back its next request.
    """

    bus: str
    port: str
    period_s: float
    running: bool = False
    port_open: bool = False
    cycles: int = 0
    overruns: int = 0
    origin: float | None = None
    last_cycle_start: float | None = None
    last_cycle_end: float | None = None
    last_cycle_s: float | None = None
    consecutive_failures: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    backed_off: tuple[str, ...] = ()
    recent_cycles: tuple[tuple[int, float], ...] = ()
    stray_bytes: int = 0


# ---------------------------------------------------------------------------------------------
# The bus
# ---------------------------------------------------------------------------------------------


class _PortLost(Exception):
    """The serial port itself failed (adapter pulled, device gone): not one detector's fault."""


@dataclass(slots=True)
class _DetectorState:
    config: DetectorConfig
    instrument: Any = None
    poll_failures: int = 0  # failed polls in a row: drives the backoff
    comm_failures: int = 0  # CommFailures delivered in a row (port gone included)
    next_try_cycle: int = 0
    last_try_at: float | None = None  # clock() of the last request sent to it
    answered_last: bool = False  # its last failed attempt got a (bad) answer, not silence
    failing_logged: bool = False
    level: Level = Level.NORMAL  # the alarm level of its last reading (set points, status)


class DetectorBus:
    """Polls every detector on one RS-485 bus from its own thread.

    ``deliver`` receives every ``Reading`` and ``CommFailure`` from the bus thread and must not
    block (the controller passes ``queue.SimpleQueue().put``). ``clock`` stamps deliveries and
    drives the schedule; it must advance in real seconds (``time.monotonic`` by default).
    The port need not exist at ``start()``: until it does, every detector gets a CommFailure
    each cycle.
    """

    def __init__(
        self,
        bus: BusConfig,
        detectors: Sequence[DetectorConfig],
        period_s: float,
        deliver: Callable[[Reading | CommFailure], None],
        clock: Callable[[], float] = time.monotonic,
        confirm_count: int = 1,
    ) -> None:
        _check_bus(bus)
        if isinstance(confirm_count, bool) or not isinstance(confirm_count, int) or not (
            1 <= confirm_count <= 5
        ):
            raise ValueError(
                f"bus {bus.name!r}: confirm_count {confirm_count!r} is not allowed: 1 to 5 "
                "(1: no confirming polls at once)"
            )
        if not math.isfinite(period_s) or period_s <= 0:
            raise ValueError(f"bus {bus.name!r}: period_s {period_s!r} is not allowed: > 0 s")
        if not detectors:
            raise ValueError(f"bus {bus.name!r}: no detectors to poll (at least one is needed)")
        names: set[str] = set()
        addresses: dict[int, str] = {}
        for d in detectors:
            if d.bus != bus.name:
                raise ValueError(f"detector {d.name!r} is on bus {d.bus!r}, not on {bus.name!r}")
            if d.name in names:
                raise ValueError(f"bus {bus.name!r}: detector name {d.name!r} is used twice")
            if d.address in addresses:
                raise ValueError(
                    f"bus {bus.name!r}: detector {d.name!r} address {d.address} is already "
                    f"used by {addresses[d.address]!r}"
                )
            names.add(d.name)
            addresses[d.address] = d.name
            _check_timeout(bus, d)
        self.bus = bus
        self.period_s = period_s
        self._deliver_cb = deliver
        self._clock = clock
        self._states = [_DetectorState(d) for d in detectors]
        self._confirm_extra = confirm_count - 1
        # Silence before a request, as minimalmodbus charges it (11-bit characters, >= 1.75 ms),
        # plus the configured extra gap.
        self._t35_s = max(3.5 * 11 / bus.baud, 0.00175)
        self._gap_s = bus.gap_ms / 1000.0
        # A failed attempt quicker than this got an answer (a bad one), not silence.
        self._slow_s = bus.timeout_s / 2
        self._last_attempt_s = 0.0
        # Worst case of one attempt at a silent detector: the silence, the request, the timeout.
        self._attempt_cost_s = silent_attempt_time(
            bus.baud, bus.parity, bus.stop_bits, self._gap_s, bus.timeout_s
        )
        self._backoff_cap = max(1, math.floor(MAX_BACKOFF_S / period_s))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Owned by the bus thread only.
        self._serial: serial.Serial | None = None
        self._port_error = "not opened yet"
        self._port_ever_open = False
        self._port_down_logged = False
        self._last_open_attempt: float | None = None
        self._last_rx: float | None = None
        self._stray_bytes = 0
        self._last_deliver_error = ""
        self._last_cycle_error = ""
        self._cycles = 0
        self._overruns = 0
        self._origin: float | None = None
        self._last_start: float | None = None
        self._last_end: float | None = None
        self._recent: deque[tuple[int, float]] = deque(maxlen=RECENT_CYCLES)
        # Published snapshot: replaced whole (atomic), never mutated, so readers need no lock.
        self._stats = BusStats(bus=bus.name, port=bus.port, period_s=period_s)
        # Called first on the bus thread (e.g. to raise its scheduling priority).
        self.on_thread_start: Callable[[], object] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the bus thread (named ``bus-<name>``). The first cycle starts at once."""
        if self._thread is not None:
            raise RuntimeError(f"bus {self.bus.name!r} already started")
        _ensure_log_pump()
        self._thread = threading.Thread(target=self._run, name=f"bus-{self.bus.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` s. A poll in progress finishes
        (at most one reply timeout); the port is closed by the thread on its way out."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                _note("bus.stop_timeout", logging.WARNING, bus=self.bus.name, timeout_s=timeout)

    # -- read-only stats ---------------------------------------------------------------------

    @property
    def stats(self) -> BusStats:
        return self._stats

    @property
    def running(self) -> bool:
        """True while the bus thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def cycles(self) -> int:
        return self._stats.cycles

    @property
    def overruns(self) -> int:
        return self._stats.overruns

    @property
    def last_cycle_s(self) -> float | None:
        return self._stats.last_cycle_s

    @property
    def last_cycle_end(self) -> float | None:
        return self._stats.last_cycle_end

    @property
    def port_open(self) -> bool:
        return self._stats.port_open

    @property
    def consecutive_failures(self) -> Mapping[str, int]:
        return self._stats.consecutive_failures

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        if self.on_thread_start is not None:
            self.on_thread_start()
        try:
            origin = self._origin = self._clock()
            k = 0
            self._publish(running=True)
            while not self._stop.is_set():
                delay = origin + k * self.period_s - self._clock()
                # Sleep to the deadline, not "a period after the end": no drift.
                if delay > 0 and self._stop.wait(delay):
                    break
                started = self._clock()
                try:
                    self._cycle(k, origin + (k + 1) * self.period_s)
                except Exception as e:  # a bug in one cycle must not end the bus
                    text = _describe(e)
                    if text != self._last_cycle_error:
                        _note("bus.cycle_error", logging.ERROR, bus=self.bus.name, error=text)
                        self._last_cycle_error = text
                ended = self._clock()
                self._cycles += 1
                self._recent.append((k, started))
                self._last_start, self._last_end = started, ended
                k += 1
                if ended > origin + (k + 1) * self.period_s:
                    # More than a whole period late: skip to the next future deadline, no
                    # catch-up burst. Less late, the next cycle starts at once and the schedule
                    # catches up with the slack of the cycles after it.
                    next_k = math.floor((ended - origin) / self.period_s)
                    self._overruns += next_k - k
                    k = next_k
                self._publish(running=True)
        except BaseException as e:
            _note("bus.thread_died", logging.ERROR, bus=self.bus.name, error=_describe(e))
            raise
        finally:
            self._close_port()
            self._publish(running=False)

    def _cycle(self, k: int, next_deadline: float) -> None:
        if self._serial is None:
            self._try_open()
        if self._serial is None:
            self._fail_all(self._states, f"port {self.bus.port} unavailable: {self._port_error}")
            return
        # Healthy detectors first (stable order), one attempt each, so a failing one cannot delay
        # them; then their retries and the failing detectors, each only where its reply timeout
        # still fits before the next deadline.
        later: list[tuple[_DetectorState, int, str]] = []
        done: set[str] = set()
        try:
            for st in self._states:
                if st.poll_failures == 0:
                    if self._stop.is_set():
                        return
                    error = self._attempt(st)
                    if error is not None:
                        if self._last_attempt_s < self._slow_s:
                            # It answered, badly (CRC, wrong id ...): retry at once, it is cheap.
                            self._finish(st, k, self.bus.retries, error, next_deadline)
                        else:
                            later.append((st, self.bus.retries, error))
                            continue
                    done.add(st.config.name)
            for st in self._states:
                if st.poll_failures > 0 and st.next_try_cycle <= k and st.config.name not in done:
                    backed_off = st.poll_failures >= BACKOFF_AFTER_FAILURES
                    later.append((st, 1 if backed_off else 1 + self.bus.retries, ""))
            for st, attempts, error in later:
                if self._stop.is_set():
                    return
                self._finish(st, k, attempts, error, next_deadline)
                done.add(st.config.name)
        except _PortLost as lost:
            self._lose_port(str(lost))
            rest = [s for s in self._states if s.config.name not in done]
            self._fail_all(rest, f"port {self.bus.port} lost: {lost}")

    def _finish(
        self, st: _DetectorState, k: int, attempts: int, error: str, next_deadline: float
    ) -> None:
        """Spend up to ``attempts`` more attempts on a detector whose last attempt failed
        (``error``) or that is failing (``error`` empty). After a quick failure (it answered,
        badly) the next attempt is made at once; otherwise only if a whole reply timeout fits
        before ``next_deadline``. A failing detector that never fits is still tried once every
        ``MAX_BACKOFF_S`` so that it can recover. Raises _PortLost."""
        tried = bool(error)
        # A detector that answered last time (badly) is not expected to cost a whole timeout.
        quick = st.answered_last if not tried else self._last_attempt_s < self._slow_s
        while attempts > 0:
            if not quick and self._clock() + self._attempt_cost_s > next_deadline:
                overdue = st.last_try_at is None or self._clock() - st.last_try_at >= MAX_BACKOFF_S
                if tried or not overdue:
                    break
            attempts -= 1
            tried = True
            result = self._attempt(st)
            if result is None:
                return
            error = result
            quick = self._last_attempt_s < self._slow_s
        st.answered_last = quick
        if tried:
            self._deliver(CommFailure(st.config.name, self._clock(), error))
            self._failed(st, k, error)
        # Not tried at all: deferred to the next cycle where it fits. Nothing is delivered; the
        # core raises the comm fault from the age of the last valid reply.

    def _attempt(self, st: _DetectorState, confirming: bool = False) -> str | None:
        """One request to one detector. None when its Reading was delivered, else the error.
        An alarming reading is confirmed at once (``_confirm``) unless this is one of those
        confirming polls. Raises _PortLost when the port itself fails."""
        profile = st.config.profile
        start, count = profile.block
        self._await_quiet_line()
        st.last_try_at = sent = self._clock()
        try:
            registers = st.instrument.read_registers(
                start, count, functioncode=profile.function_code
            )
            at = self._clock()
        except minimalmodbus.ModbusException as e:
            # Timeout, CRC, wrong slave id, byte count, exception reply. (ModbusException is an
            # OSError, so it must be caught before the port errors below.)
            return _describe(e)
        except (serial.SerialException, termios.error, OSError) as e:
            raise _PortLost(_describe(e)) from e
        except Exception as e:  # a malformed reply minimalmodbus rejects otherwise
            return _describe(e)
        finally:
            self._last_rx = time.monotonic()
            self._last_attempt_s = self._clock() - sent
        if not isinstance(registers, list) or len(registers) != count:
            return f"expected {count} registers, got {registers!r}"
        decoded = profile.decode(registers)
        self._deliver(Reading(st.config.name, at, decoded.lel, decoded.own_alarm, decoded.fault))
        self._succeeded(st)
        before = st.level
        st.level = _alarm_level(st.config, decoded.lel, decoded.own_alarm)
        if not confirming and st.level > before:  # a new crossing: confirm it now
            self._confirm(st, st.level)
        return None

    def _confirm(self, st: _DetectorState, level: Level) -> None:
        """Poll a detector that just reached ``level`` again at once, up to
        ``confirm_count - 1`` times, while it stays there. A failed confirming poll ends it:
        the next cycle polls as usual."""
        for _ in range(self._confirm_extra):
            if st.level < level or self._stop.is_set():
                return
            if self._attempt(st, confirming=True) is not None:
                return

    def _await_quiet_line(self) -> None:
        """Wait until the line has been silent for t3.5 (plus ``gap_ms``) since the last byte
        seen on it, whoever sent it: a late reply that arrives after the master gave up, or
        bytes past the end of a reply, restart the silence (Modbus RTU framing). A line that
        keeps talking for a whole reply timeout is given up on: the request goes out and its
        poll fails on its own. Raises _PortLost when the port fails."""
        port = self._serial
        if port is None:
            return
        quiet_s = self._t35_s + self._gap_s
        fd = port.fileno()
        last_seen = self._last_rx
        give_up = time.monotonic() + self.bus.timeout_s
        while True:
            now = time.monotonic()
            wait = 0.0 if last_seen is None else max(0.0, last_seen + quiet_s - now)
            try:
                ready, _, _ = select.select([fd], [], [], wait)
                if not ready:
                    if last_seen is None or time.monotonic() >= last_seen + quiet_s:
                        return
                    continue
                chunk = os.read(fd, 4096)
            except OSError as e:
                raise _PortLost(_describe(e)) from e
            if not chunk:
                raise _PortLost("the port reports data to read but gives none (device gone?)")
            last_seen = time.monotonic()
            self._stray_bytes += len(chunk)
            if last_seen >= give_up:
                return

    def _succeeded(self, st: _DetectorState) -> None:
        if st.failing_logged:
            _note(
                "bus.detector_recovered",
                bus=self.bus.name,
                detector=st.config.name,
                failures=st.comm_failures,
            )
        st.poll_failures = 0
        st.comm_failures = 0
        st.next_try_cycle = 0
        st.failing_logged = False

    def _failed(self, st: _DetectorState, k: int, error: str) -> None:
        st.poll_failures += 1
        st.comm_failures += 1
        if st.poll_failures >= BACKOFF_AFTER_FAILURES:
            exponent = st.poll_failures - BACKOFF_AFTER_FAILURES + 1
            st.next_try_cycle = k + min(2**exponent, self._backoff_cap)
        else:
            st.next_try_cycle = k + 1
        if not st.failing_logged:
            _note(
                "bus.detector_failing",
                logging.WARNING,
                bus=self.bus.name,
                detector=st.config.name,
                address=st.config.address,
                error=error,
            )
            st.failing_logged = True

    def _fail_all(self, states: Sequence[_DetectorState], error: str) -> None:
        at = self._clock()
        for st in states:
            self._deliver(CommFailure(st.config.name, at, error))
        for st in states:
            st.comm_failures += 1

    def _deliver(self, item: Delivery) -> None:
        try:
            self._deliver_cb(item)
        except Exception as e:  # the consumer's bug must not end the bus
            text = _describe(e)
            if text != self._last_deliver_error:
                _note("bus.deliver_failed", logging.ERROR, bus=self.bus.name, error=text)
                self._last_deliver_error = text

    # -- the port ----------------------------------------------------------------------------

    def _try_open(self) -> None:
        now = self._clock()
        if (
            self._last_open_attempt is not None
            and now - self._last_open_attempt < REOPEN_INTERVAL_S
        ):
            return
        self._last_open_attempt = now
        port = serial.Serial()
        try:
            port.port = self.bus.port
            port.baudrate = self.bus.baud
            port.bytesize = serial.EIGHTBITS
            port.parity = PARITY[self.bus.parity]
            port.stopbits = STOP_BITS[self.bus.stop_bits]
            port.timeout = self.bus.timeout_s
            port.write_timeout = WRITE_TIMEOUT_S
            port.exclusive = True  # one owner per serial port
            if self.bus.rs485:
                port.rs485_mode = serial.rs485.RS485Settings()
            port.open()
            for st in self._states:
                st.instrument = minimalmodbus.Instrument(port, st.config.address)
        except Exception as e:
            with contextlib.suppress(Exception):  # a half-open port: nothing more to do
                port.close()
            self._port_error = _describe(e)
            if not self._port_down_logged:
                _note(
                    "bus.port_unavailable",
                    logging.WARNING,
                    bus=self.bus.name,
                    port=self.bus.port,
                    error=self._port_error,
                )
                self._port_down_logged = True
            return
        self._serial = port
        for st in self._states:
            st.next_try_cycle = 0  # poll everyone at once on a fresh port
        event = (
            "bus.port_back" if self._port_ever_open or self._port_down_logged else "bus.port_open"
        )
        _note(event, bus=self.bus.name, port=self.bus.port, baud=self.bus.baud)
        self._port_ever_open = True
        self._port_down_logged = False
        self._publish(running=True)

    def _lose_port(self, error: str) -> None:
        self._close_port()
        self._port_error = error
        self._last_open_attempt = self._clock()
        if not self._port_down_logged:
            _note(
                "bus.port_lost", logging.WARNING, bus=self.bus.name, port=self.bus.port, error=error
            )
            self._port_down_logged = True
        self._publish(running=True)

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        for st in self._states:
            st.instrument = None
        if port is not None:
            # A vanished device may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                port.close()

    def _publish(self, running: bool) -> None:
        self._stats = BusStats(
            bus=self.bus.name,
            port=self.bus.port,
            period_s=self.period_s,
            running=running,
            port_open=self._serial is not None,
            cycles=self._cycles,
            overruns=self._overruns,
            origin=self._origin,
            last_cycle_start=self._last_start,
            last_cycle_end=self._last_end,
            last_cycle_s=(
                self._last_end - self._last_start
                if self._last_end is not None and self._last_start is not None
                else None
            ),
            consecutive_failures=MappingProxyType(
                {st.config.name: st.comm_failures for st in self._states}
            ),
            backed_off=tuple(
                st.config.name for st in self._states if st.poll_failures >= BACKOFF_AFTER_FAILURES
            ),
            recent_cycles=tuple(self._recent),
            stray_bytes=self._stray_bytes,
        )


def _alarm_level(det: DetectorConfig, lel: float | None, own: Level) -> Level:
    """The level a reading shows against the detector's set points (NaN: none), or its own
    status's, whichever is higher. Only to decide a confirming poll: the core decides alarms."""
    level = own
    if lel is not None and lel >= det.high_lel:
        level = max(level, Level.HIGH)
    elif lel is not None and lel >= det.low_lel:
        level = max(level, Level.LOW)
    return level


def _check_bus(bus: BusConfig) -> None:
    """Refuse a bus setting pyserial or minimalmodbus would misread; names value and range."""
    if isinstance(bus.baud, bool) or not isinstance(bus.baud, int) or bus.baud <= 0:
        raise ValueError(f"bus {bus.name!r}: baud {bus.baud!r} is not allowed: > 0, e.g. 9600")
    if bus.parity not in PARITY:
        raise ValueError(f"bus {bus.name!r}: parity {bus.parity!r} is not allowed: N, E or O")
    if bus.stop_bits not in STOP_BITS:
        raise ValueError(f"bus {bus.name!r}: stop_bits {bus.stop_bits!r} is not allowed: 1 or 2")
    if not math.isfinite(bus.timeout_s) or bus.timeout_s <= 0:
        raise ValueError(f"bus {bus.name!r}: timeout_s {bus.timeout_s!r} is not allowed: > 0 s")
    if not math.isfinite(bus.gap_ms) or bus.gap_ms < 0:
        raise ValueError(f"bus {bus.name!r}: gap_ms {bus.gap_ms!r} is not allowed: >= 0 ms")
    if isinstance(bus.retries, bool) or not isinstance(bus.retries, int) or bus.retries < 0:
        raise ValueError(f"bus {bus.name!r}: retries {bus.retries!r} is not allowed: 0 or more")


def _check_timeout(bus: BusConfig, detector: DetectorConfig) -> None:
    """Refuse a reply timeout shorter than the request and the reply take on the wire: such a
    bus could never read the detector."""
    _, count = detector.profile.block
    needed = read_exchange_time(count, bus.baud, bus.parity, bus.stop_bits)
    if bus.timeout_s <= needed:
        raise ValueError(
            f"bus {bus.name!r}: timeout_s {bus.timeout_s:g} is too short for detector "
            f"{detector.name!r}: its {count}-register exchange takes {needed * 1000:.1f} ms at "
            f"{bus.baud} baud; allowed: more than {needed:.3f} s"
        )
