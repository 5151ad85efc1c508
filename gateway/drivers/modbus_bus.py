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

* Fixed-deadline schedule: cycle k starts at ``origin + k * period_s``; a cycle that overruns
  skips to the next future deadline (counted in ``overruns``) instead of bursting to catch up.
* A failing detector is polled after the healthy ones and, after 2 failed polls in a row, only
  every 2, 4, 8 ... cycles (at least every ~2 s) without retries, so a dead detector cannot delay
  the healthy ones. Cycles it is skipped deliver nothing: the core raises the comm fault from the
  age of the last valid reply.
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
import queue
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
from gateway.core.model import CommFailure, Reading
from gateway.log import log
from gateway.rtu import read_exchange_time

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
    less often because they keep failing.
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
    failing_logged: bool = False


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
    ) -> None:
        _check_bus(bus)
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
        # Silence before a request, as minimalmodbus charges it (11-bit characters, >= 1.75 ms),
        # plus the configured extra gap.
        self._t35_s = max(3.5 * 11 / bus.baud, 0.00175)
        self._gap_s = bus.gap_ms / 1000.0
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
                    self._cycle(k)
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
                if ended > origin + k * self.period_s:
                    # Overran the next deadline: skip to the next future one, no catch-up burst.
                    next_k = math.floor((ended - origin) / self.period_s) + 1
                    self._overruns += next_k - k
                    k = next_k
                self._publish(running=True)
        except BaseException as e:
            _note("bus.thread_died", logging.ERROR, bus=self.bus.name, error=_describe(e))
            raise
        finally:
            self._close_port()
            self._publish(running=False)

    def _cycle(self, k: int) -> None:
        if self._serial is None:
            self._try_open()
        if self._serial is None:
            self._fail_all(self._states, f"port {self.bus.port} unavailable: {self._port_error}")
            return
        # Healthy detectors first (stable order), so a failing one cannot delay them.
        order = sorted(self._states, key=lambda s: s.poll_failures > 0)
        done: set[str] = set()
        for st in order:
            if self._stop.is_set():
                return
            if st.next_try_cycle > k:
                continue  # backed off: deliver nothing, the silence is the signal
            try:
                self._poll(st, k)
            except _PortLost as lost:
                self._lose_port(str(lost))
                rest = [s for s in self._states if s.config.name not in done]
                self._fail_all(rest, f"port {self.bus.port} lost: {lost}")
                return
            done.add(st.config.name)

    def _poll(self, st: _DetectorState, k: int) -> None:
        """One poll of one detector: a Reading, or after the allowed attempts a CommFailure.
        Raises _PortLost when the port itself fails."""
        profile = st.config.profile
        start, count = profile.block
        attempts = 1 if st.poll_failures >= BACKOFF_AFTER_FAILURES else 1 + self.bus.retries
        error = "no attempt made"
        for attempt in range(attempts):
            if attempt and self._stop.is_set():
                return
            self._pause_before_request()
            try:
                registers = st.instrument.read_registers(
                    start, count, functioncode=profile.function_code
                )
                at = self._clock()
            except minimalmodbus.ModbusException as e:
                # Timeout, CRC, wrong slave id, byte count, exception reply. (ModbusException
                # is an OSError, so it must be caught before the port errors below.)
                error = _describe(e)
            except (serial.SerialException, termios.error, OSError) as e:
                raise _PortLost(_describe(e)) from e
            except Exception as e:  # a malformed reply minimalmodbus rejects otherwise
                error = _describe(e)
            else:
                if not isinstance(registers, list) or len(registers) != count:
                    error = f"expected {count} registers, got {registers!r}"
                else:
                    decoded = profile.decode(registers)
                    self._deliver(
                        Reading(st.config.name, at, decoded.lel, decoded.own_alarm, decoded.fault)
                    )
                    self._succeeded(st)
                    return
            finally:
                self._last_rx = time.monotonic()
        self._deliver(CommFailure(st.config.name, self._clock(), error))
        self._failed(st, k, error)

    def _pause_before_request(self) -> None:
        # minimalmodbus already waits t3.5 after the last reply; the configured gap comes on top.
        if self._gap_s <= 0 or self._last_rx is None:
            return
        delay = self._last_rx + self._t35_s + self._gap_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)

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
        )


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
