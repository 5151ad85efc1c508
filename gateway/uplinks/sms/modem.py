"""A 4G (LTE Cat-1) modem on a serial port, driven with AT commands to send SMS in Chinese.

The sequence (3GPP TS 27.005 / 27.007, text mode):

* ``ATE0`` (no echo), ``AT`` (alive), ``AT+CPIN?`` (SIM ready), ``AT+CREG?`` and ``AT+CEREG?``
  (registered on the circuit or the LTE network: stat 1 home or 5 roaming), ``AT+CSQ`` (signal);
* ``AT+CMGF=1`` (text mode), ``AT+CSCS="UCS2"`` (number and text as UCS-2 hex),
  ``AT+CSMP=17,167,0,8`` (validity 24 h, data coding 8 = UCS-2);
* per segment: ``AT+CMGS="<number as UCS-2 hex>"``, wait for the ``> `` prompt, the body as
  UCS-2 hex, Ctrl-Z, then ``+CMGS: <ref>`` and ``OK`` (a network may take up to ~60 s).

A UCS-2 SMS holds 70 characters; longer texts go as several numbered SMS ("(1/2)…"), each
a plain text-mode message (no concatenation header, which text mode cannot send).

Every failure is a ``ModemError`` subclass whose message names the port, the command and what
the modem said: ``NoSimError``, ``NoNetworkError``, ``NoPromptError``, ``ModemTimeout``,
``CommandError``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

SEGMENT_CHARS = 70  # UCS-2 SMS: 140 bytes
CTRL_Z = b"\x1a"
ESC = b"\x1b"
FINAL_OK = "OK"
_ERROR = re.compile(r"^(ERROR|\+CME ERROR:.*|\+CMS ERROR:.*|COMMAND NOT SUPPORT)$")
_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")
REG_STATES = {
    0: "not registered, not searching",
    1: "registered, home network",
    2: "not registered, searching",
    3: "registration denied",
    4: "unknown",
    5: "registered, roaming",
}
CME_SIM = {"10": "SIM not inserted", "13": "SIM failure", "15": "wrong SIM"}


class ModemError(Exception):
    """The modem cannot do what was asked; the message says which port, command and answer."""


class ModemTimeout(ModemError):
    """No (complete) answer within the time allowed."""


class CommandError(ModemError):
    """The modem answered ERROR / +CME ERROR / +CMS ERROR (``answer`` is that line)."""

    def __init__(self, message: str, answer: str = "") -> None:
        super().__init__(message)
        self.answer = answer


class NoSimError(ModemError):
    """No usable SIM card (absent, failed, or locked with a PIN)."""


class NoNetworkError(ModemError):
    """The modem is not registered on any network."""


class NoPromptError(ModemError):
    """AT+CMGS did not give the ``> `` prompt for the message body."""


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """What ``check()`` found: SIM state, registration, signal (``rssi`` 0..31, None unknown)."""

    sim: str
    registration: str
    rssi: int | None

    @property
    def dbm(self) -> int | None:
        return None if self.rssi is None else -113 + 2 * self.rssi


def ucs2_hex(text: str) -> str:
    """``text`` as UCS-2 (UTF-16 big-endian) hex, as AT+CSCS="UCS2" wants it."""
    return text.encode("utf-16-be").hex().upper()


def from_ucs2_hex(hex_text: str) -> str:
    """The inverse of ``ucs2_hex``; ValueError for text that is not UCS-2 hex."""
    try:
        return bytes.fromhex(hex_text).decode("utf-16-be")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UCS-2 hex: {hex_text[:40]!r}: {e}") from e


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1  # outside the BMP: a surrogate pair


def segments(text: str, limit: int = SEGMENT_CHARS) -> list[str]:
    """Split ``text`` into SMS of at most ``limit`` UTF-16 units. Several parts are numbered
    "(k/n)" inside the limit; a surrogate pair is never split."""
    if sum(_units(ch) for ch in text) <= limit:
        return [text]
    n = 2
    while True:
        parts: list[str] = []
        current = ""
        used = 0
        room = limit - len(f"({n}/{n})")
        for ch in text:
            if used + _units(ch) > room:
                parts.append(current)
                current, used = "", 0
            current += ch
            used += _units(ch)
        if current:
            parts.append(current)
        if len(parts) <= n:
            return [f"({i + 1}/{len(parts)}){p}" for i, p in enumerate(parts)]
        n = len(parts)


def check_number(number: str) -> str:
    """A phone number as the modem gets it: digits, optionally a leading '+'."""
    if not isinstance(number, str) or not _NUMBER.match(number):
        raise ValueError(f"phone number {number!r}: must be 3 to 20 digits, optionally '+' first")
    return number


class Modem:
    """One modem on ``port`` (e.g. ``/dev/ttyUSB2``; a pty in tests). Not thread-safe: one
    owner (the SMS channel thread). Timeouts: ``command_timeout_s`` for an ordinary command,
    ``prompt_timeout_s`` for the ``> `` prompt, ``send_timeout_s`` (default 60 s) for the
    network to take an SMS."""

    def __init__(
        self,
        port: str,
        baud: int = 115200,
        *,
        command_timeout_s: float = 5.0,
        prompt_timeout_s: float = 10.0,
        send_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baud = baud
        self.command_timeout_s = command_timeout_s
        self.prompt_timeout_s = prompt_timeout_s
        self.send_timeout_s = send_timeout_s
        self._clock = clock
        self._serial: serial.Serial | None = None
        self._buf = bytearray()
        self._prepared = False

    # -- port -------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port (exclusively: one owner per serial port). ModemError if it cannot."""
        if self._serial is not None:
            return
        port = serial.Serial()
        port.port = self.port
        port.baudrate = self.baud
        port.timeout = 0.05
        port.write_timeout = 5.0
        port.exclusive = True
        try:
            port.open()
        except (serial.SerialException, OSError, ValueError) as e:
            raise ModemError(f"modem {self.port}: cannot open the port: {e}") from e
        self._serial = port
        self._buf.clear()
        self._prepared = False

    def close(self) -> None:
        port, self._serial = self._serial, None
        self._prepared = False
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    def __enter__(self) -> Modem:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _port(self) -> serial.Serial:
        if self._serial is None:
            raise ModemError(f"modem {self.port}: port is not open")
        return self._serial

    def _write(self, data: bytes) -> None:
        try:
            self._port().write(data)
            self._port().flush()
        except (serial.SerialException, OSError) as e:
            raise ModemError(f"modem {self.port}: write failed: {e}") from e

    def _read_some(self) -> None:
        port = self._port()
        try:
            chunk = port.read(max(1, port.in_waiting))
        except (serial.SerialException, OSError) as e:
            raise ModemError(f"modem {self.port}: read failed: {e}") from e
        self._buf += chunk

    def _next_line(self, deadline: float, what: str) -> str:
        """The next non-empty line (without CR LF); ModemTimeout at ``deadline``."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                raw = bytes(self._buf[:end])
                del self._buf[: end + 1]
                line = raw.decode("ascii", errors="replace").strip()
                if line:
                    return line
                continue
            if self._clock() > deadline:
                raise ModemTimeout(f"modem {self.port}: no answer to {what}")
            self._read_some()

    # -- commands ---------------------------------------------------------------------------------

    def command(self, cmd: str, timeout: float | None = None) -> list[str]:
        """Send ``cmd`` and return the information lines before ``OK``. CommandError for an
        error answer, ModemTimeout if no final answer within ``timeout`` seconds."""
        port = self._port()
        with contextlib.suppress(serial.SerialException, OSError):
            port.reset_input_buffer()  # stale unsolicited lines are not answers to this
        self._buf.clear()
        self._write(cmd.encode("ascii") + b"\r")
        deadline = self._clock() + (self.command_timeout_s if timeout is None else timeout)
        lines: list[str] = []
        while True:
            line = self._next_line(deadline, cmd)
            if line == cmd:
                continue  # echo (before ATE0 took effect)
            if line == FINAL_OK:
                return lines
            if _ERROR.match(line):
                raise CommandError(f"modem {self.port}: {cmd} answered {line!r}", line)
            lines.append(line)

    def _query(self, cmd: str, prefix: str) -> str | None:
        """The value after ``prefix`` in the answer to ``cmd`` (None if no such line)."""
        for line in self.command(cmd):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None

    def check(self) -> ModemStatus:
        """Alive, SIM ready, registered: the status, or NoSimError / NoNetworkError /
        ModemTimeout / CommandError with what the modem answered."""
        with contextlib.suppress(CommandError):
            self.command("ATE0")
        self.command("AT")
        try:
            sim = self._query("AT+CPIN?", "+CPIN:")
        except CommandError as e:
            code = e.answer.rsplit(":", 1)[-1].strip()
            why = CME_SIM.get(code, "no usable SIM")
            raise NoSimError(
                f"modem {self.port}: no SIM card ({why}): AT+CPIN? answered {e.answer!r}"
            ) from e
        if sim != "READY":
            raise NoSimError(
                f"modem {self.port}: SIM card not ready: AT+CPIN? answered {sim!r} "
                "(a SIM locked with a PIN cannot send; use a SIM without PIN)"
            )
        states = {}
        for cmd, prefix in (("AT+CREG?", "+CREG:"), ("AT+CEREG?", "+CEREG:")):
            try:
                value = self._query(cmd, prefix)
            except CommandError:
                continue  # a module without LTE (or without 2G) does not know one of them
            states[cmd] = _registration(value)
        registered = [s for s in states.values() if s in (1, 5)]
        if not registered:
            said = ", ".join(
                f"{cmd} stat {s} ({REG_STATES.get(s, 'unknown') if s is not None else '?'})"
                for cmd, s in states.items()
            )
            raise NoNetworkError(
                f"modem {self.port}: not registered on a network: {said or 'no answer'}"
            )
        rssi: int | None = None
        with contextlib.suppress(CommandError, ValueError):
            value = self._query("AT+CSQ", "+CSQ:")
            if value is not None:
                rssi = int(value.split(",")[0])
                if rssi == 99:
                    rssi = None
        return ModemStatus("ready", REG_STATES[registered[0]], rssi)

    def prepare(self) -> None:
        """Text mode, UCS-2 character set, UCS-2 data coding (once per open port)."""
        if self._prepared:
            return
        self.command("AT+CMGF=1")
        self.command('AT+CSCS="UCS2"')
        self.command("AT+CSMP=17,167,0,8")
        self._prepared = True

    def send_sms(self, number: str, text: str) -> list[int]:
        """Send ``text`` to ``number`` (as many SMS as it needs); returns the message
        references. Raises ModemError subclasses; segments sent before a failure stay sent."""
        check_number(number)
        if not text:
            raise ValueError("SMS text is empty")
        self.prepare()
        return [self._send_segment(number, part) for part in segments(text)]

    def _send_segment(self, number: str, text: str) -> int:
        cmd = f'AT+CMGS="{ucs2_hex(number)}"'
        port = self._port()
        with contextlib.suppress(serial.SerialException, OSError):
            port.reset_input_buffer()
        self._buf.clear()
        self._write(cmd.encode("ascii") + b"\r")
        deadline = self._clock() + self.prompt_timeout_s
        while b"> " not in self._buf:
            # An error instead of the prompt comes as a whole line.
            for line in bytes(self._buf).decode("ascii", errors="replace").splitlines():
                if _ERROR.match(line.strip()):
                    self._buf.clear()
                    raise CommandError(
                        f"modem {self.port}: {cmd} answered {line.strip()!r}", line.strip()
                    )
            if self._clock() > deadline:
                self._write(ESC)  # leave the body state, if the modem is in it after all
                raise NoPromptError(
                    f"modem {self.port}: no '> ' prompt within {self.prompt_timeout_s:g} s "
                    f"after AT+CMGS (to {number})"
                )
            self._read_some()
        del self._buf[: self._buf.index(b"> ") + 2]
        self._write(ucs2_hex(text).encode("ascii") + CTRL_Z)
        deadline = self._clock() + self.send_timeout_s
        ref: int | None = None
        while True:
            try:
                line = self._next_line(deadline, f"the SMS to {number}")
            except ModemTimeout as e:
                raise ModemTimeout(
                    f"modem {self.port}: no +CMGS/OK within {self.send_timeout_s:g} s for the "
                    f"SMS to {number}"
                ) from e
            if line.startswith("+CMGS:"):
                with contextlib.suppress(ValueError):
                    ref = int(line.split(":", 1)[1].strip())
            elif line == FINAL_OK:
                if ref is None:
                    raise CommandError(f"modem {self.port}: OK without +CMGS for SMS to {number}")
                return ref
            elif _ERROR.match(line):
                raise CommandError(f"modem {self.port}: SMS to {number} answered {line!r}", line)


def _registration(value: str | None) -> int | None:
    """stat of a +CREG:/+CEREG: answer "<n>,<stat>[,...]" (or an unsolicited "<stat>")."""
    if value is None:
        return None
    fields = [f.strip() for f in value.split(",")]
    try:
        return int(fields[1] if len(fields) >= 2 else fields[0])
    except ValueError:
        return None
