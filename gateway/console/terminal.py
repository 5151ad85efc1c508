"""Byte-level terminals for the console: a serial port (pyserial) or a pair of file descriptors
(stdin/stdout, e.g. under ``serial-getty`` autologin or systemd ``StandardInput=tty``).

Both deliver raw bytes: the console does its own echo and line editing, so it behaves the same
in picocom, minicom and PuTTY. ``read(timeout)`` returns ``b""`` when nothing came in time and
raises ``Hangup`` when the other side is gone (the port vanished, stdin closed).
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import tty
from typing import Any, Protocol

import serial


class Hangup(Exception):
    """The terminal is gone (port removed, EOF on stdin, I/O error)."""


class Terminal(Protocol):
    """What the line editor needs. ``crlf``: send "\\r\\n" for a new line (raw terminals);
    ``echo``: the console echoes what is typed (False for a pipe)."""

    crlf: bool
    echo: bool

    def read(self, timeout: float) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SerialTerminal:
    """A serial line at ``baud`` 8N1, no flow control (what picocom, minicom and PuTTY use by
    default for a console cable)."""

    crlf = True
    echo = True

    def __init__(self, port: str, baud: int = 115200) -> None:
        self.port_name = port
        try:
            self.port = serial.Serial(
                port=port,
                baudrate=baud,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=0.1,
                write_timeout=5.0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise Hangup(f"cannot open {port} at {baud} 8N1: {e}") from e

    def read(self, timeout: float) -> bytes:
        try:
            self.port.timeout = max(0.0, timeout)
            data = bytes(self.port.read(1))
            if data:
                waiting = self.port.in_waiting
                if waiting:
                    data += bytes(self.port.read(waiting))
            return data
        except (serial.SerialException, OSError, termios.error) as e:
            raise Hangup(f"{self.port_name}: {e}") from e

    def write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except (serial.SerialException, OSError, termios.error) as e:
            raise Hangup(f"{self.port_name}: {e}") from e

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.port.close()


class FdTerminal:
    """stdin/stdout (or any two descriptors). A tty on input is put in raw mode for the
    session and restored by ``close()``; without a tty (a pipe) lines pass as they are and
    nothing is echoed."""

    def __init__(self, in_fd: int = 0, out_fd: int = 1) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.is_tty = os.isatty(in_fd)
        self.crlf = self.is_tty
        self.echo = self.is_tty
        self._saved: list[Any] | None = None
        if self.is_tty:
            self._saved = termios.tcgetattr(in_fd)
            tty.setraw(in_fd)

    def read(self, timeout: float) -> bytes:
        try:
            ready, _, _ = select.select([self.in_fd], [], [], max(0.0, timeout))
            if not ready:
                return b""
            data = os.read(self.in_fd, 4096)
        except OSError as e:
            raise Hangup(f"input: {e}") from e
        if not data:
            raise Hangup("end of input")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.out_fd, view) :]
        except OSError as e:
            raise Hangup(f"output: {e}") from e

    def close(self) -> None:
        if self._saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved)
            self._saved = None
