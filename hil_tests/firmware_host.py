"""The fixture firmware running on the host (CPython), wired to a gateway as the Pico would be.

* ``load(name)`` imports a firmware module (``fixture.*`` from firmware/, the fake ``machine``
  from firmware/host/). They are MicroPython code, type-checked against the MicroPython stubs by
  pyright, not by mypy here: they are handled as ``ModuleType``.
* ``PtyWire``: the RS-485 line. The gateway opens the pty's slave side exactly like
  ``/dev/ttyAMA0``; the firmware's (fake) UART reads the master side. A pty moves bytes
  instantly, so the wire releases each received byte only when it would have finished arriving
  on a real line, and paces the fixture's replies at the character time (Modbus RTU): the
  firmware sees the same timing as on the Pico's UART and frames by t3.5 the same way.
* ``WiredPin``: a gpiozero mock pin that tells a listener about every change of its state, so
  a gateway output (valve coil, sounder, lights) reaches the fixture's interrupt handler the
  moment the gateway's thread changes it, as a wire would.
* ``HostFirmware``: the firmware's main loop in a thread, with its console on a pty (the host
  talks to it through ``FixtureClient`` exactly as to ``/dev/ttyACM0``).
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from gateway.rtu import char_time
from gateway.sim.pty import close_pty, open_raw_pty, park_line, point_link, remove_link

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"
IDLE_S = 0.001  # machine.idle(): the RP2040 wakes at least every 1 ms (systick)
PARK_EVERY_S = 0.2


def load(name: str) -> ModuleType:
    """Import a firmware module on CPython (``fixture.app``, ``machine`` ...)."""
    for path in (FIRMWARE / "host", FIRMWARE):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module(name)


class PtyWire:
    """The RS-485 line on a pty, seen from the fixture's UART (the fake ``machine.UART`` calls
    ``configure``, ``any``, ``readinto`` and ``write``). ``link`` becomes a symlink to the
    pty's slave device: the port the gateway's config names."""

    def __init__(self, link: Path) -> None:
        self.pair = open_raw_pty()
        self.link = link
        point_link(link, self.pair.slave_path)
        self.baud = 9600
        self.parity = "N"
        self.stop_bits = 1
        self._char_s = char_time(9600, "N", 1)
        self._rx = bytearray()
        self._due: deque[float] = deque()  # when each byte of _rx has finished arriving
        self._wire_free = 0.0
        self._parked_at = 0.0

    @property
    def fd(self) -> int:
        return self.pair.master_fd

    def configure(self, baud: int, parity: str, stop_bits: int) -> None:
        self._char_s = char_time(baud, parity, stop_bits)
        self.baud, self.parity, self.stop_bits = baud, parity, stop_bits
        self._rx.clear()
        self._due.clear()
        park_line(self.pair, baud, parity)

    def _pull(self) -> None:
        ready, _, _ = select.select([self.fd], [], [], 0)
        if not ready:
            return
        try:
            chunk = os.read(self.fd, 4096)
        except OSError as e:
            if e.errno == errno.EIO:  # nobody has the gateway's side open
                return
            raise
        now = time.monotonic()
        # The pty hands over the whole chunk at once; on a wire it is still arriving.
        t = max(now, self._wire_free)
        for byte in chunk:
            t += self._char_s
            self._rx.append(byte)
            self._due.append(t)
        self._wire_free = t

    def _visible(self, now: float) -> int:
        n = 0
        for due in self._due:
            if due > now:
                break
            n += 1
        return n

    def any(self) -> int:
        self._pull()
        now = time.monotonic()
        if not self._rx and now - self._parked_at > PARK_EVERY_S:
            self._parked_at = now
            park_line(self.pair, self.baud, self.parity)
        return self._visible(now)

    def readinto(self, buf: Any, nbytes: int = -1) -> int:
        room = len(buf) if nbytes < 0 else nbytes
        n = min(self._visible(time.monotonic()), room)
        buf[:n] = self._rx[:n]
        del self._rx[:n]
        for _ in range(n):
            self._due.popleft()
        return n

    def write(self, data: Any) -> int:
        """Send at wire speed: byte i leaves when it would have finished on a real line."""
        frame = bytes(data)
        start = time.monotonic()
        sent = 0
        while sent < len(frame):
            due = min(len(frame), int((time.monotonic() - start) / self._char_s))
            if due > sent:
                os.write(self.fd, frame[sent:due])
                sent = due
                continue
            time.sleep(max(0.0, start + (sent + 1) * self._char_s - time.monotonic()))
        self._wire_free = time.monotonic()
        return len(frame)

    def next_due(self) -> float | None:
        return self._due[0] if self._due else None

    def close(self) -> None:
        remove_link(self.link)
        close_pty(self.pair)


class FdStream:
    """A pty master as the firmware console's stream: ``read(1)`` gives bytes, ``write`` takes
    text, ``fileno()`` lets ``select.poll`` watch it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def read(self, n: int) -> bytes:
        try:
            return os.read(self._fd, n)
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise

    def write(self, text: str) -> int:
        data = text.encode()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as e:
                if e.errno == errno.EIO:  # the host closed its side: the line is lost
                    return len(data)
                raise
            view = view[written:]
        return len(data)


class WiredPin(MockPin):  # type: ignore[misc]  # gpiozero has no type hints
    """A mock pin that calls ``listener(level)`` on every change of its state, in the thread
    that changed it (a gateway output wired to a fixture input)."""

    listener: Callable[[int], None] | None = None

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        listener = self.listener
        if changed and listener is not None:
            listener(1 if value else 0)
        return changed


class DriveInput:
    """A fixture output wired to a gateway input: drives the mock input pin (when it is an
    input; a pin some device drives as an output cannot be driven from outside)."""

    def __init__(self, factory: MockFactory, bcm: int) -> None:
        self.pin: Any = factory.pin(bcm)
        self.level: int | None = None

    def driven(self, level: int) -> None:
        self.level = level
        if self.pin.function != "input" or bool(self.pin.state) == bool(level):
            return
        if level:
            self.pin.drive_high()
        else:
            self.pin.drive_low()


class HostFirmware:
    """The fixture firmware's main loop in a thread on the host.

    ``watched`` maps a Pico input (GP number) to the gateway's output pin (BCM) it is wired to;
    ``driven`` maps a Pico output to the gateway input it drives. ``console_path`` is the device
    the host opens to talk to the firmware."""

    def __init__(
        self,
        factory: MockFactory,
        workdir: Path,
        watched: dict[int, int],
        driven: dict[int, int],
    ) -> None:
        self.machine = load("machine")
        board = load("fixture.board")
        hal = load("fixture.hal")
        app = load("fixture.app")
        self.machine.reset()
        self.wire = PtyWire(workdir / "fixture-bus.tty")
        self.console_pair = open_raw_pty()
        self.console_path = self.console_pair.slave_path
        self.machine.attach_uart(board.UART_ID, self.wire)
        for pico, bcm in driven.items():
            self.machine.attach_pin(pico, DriveInput(factory, bcm))
        self._wired: list[WiredPin] = []
        for pico, bcm in watched.items():
            pin = factory.pin(bcm, pin_class=WiredPin)
            if not isinstance(pin, WiredPin):
                raise RuntimeError(f"GPIO{bcm} was set up before the fixture was wired to it")
            pin.listener = self._listener(pico)
            self.machine.set_input(pico, 1 if pin.state else 0)
            self._wired.append(pin)
        self.machine.set_idle(self._idle)
        stream = FdStream(self.console_pair.master_fd)
        self.fixture: Any = app.Fixture(hal.Hal(console=hal.Console(stream, stream)))
        self._stop = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fixture-firmware", daemon=True)

    @property
    def bus_path(self) -> str:
        """The port the gateway opens (a symlink to the pty)."""
        return str(self.wire.link)

    def _listener(self, pico: int) -> Callable[[int], None]:
        set_input = self.machine.set_input

        def changed(level: int) -> None:
            set_input(pico, level)

        return changed

    def _idle(self) -> None:
        timeout = IDLE_S
        due = self.wire.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - time.monotonic()))
        select.select([self.wire.fd, self.console_pair.master_fd], [], [], timeout)

    def _run(self) -> None:
        try:
            self.fixture.run(stop=self._stop.is_set)
        except BaseException as e:  # a crashed fixture fails the run, never hangs it
            self.failure = e

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        for pin in self._wired:
            pin.listener = None
        self.machine.reset()
        self.wire.close()
        close_pty(self.console_pair)
        if self._thread.is_alive():
            raise RuntimeError("the fixture firmware thread did not stop within 5 s")
        if self.failure is not None:
            raise RuntimeError(f"the fixture firmware crashed: {self.failure!r}")

    def __enter__(self) -> HostFirmware:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
