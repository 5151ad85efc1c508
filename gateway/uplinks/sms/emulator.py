"""A 4G-modem emulator answering AT commands on a pty, for tests and the demo.

The gateway opens ``emulator.path`` with pyserial exactly as it would open ``/dev/ttyUSB2``.
The emulator answers the commands ``Modem`` uses, in verbose mode (``\\r\\nOK\\r\\n``), echoing
commands until ``ATE0``. It records every command and every SMS it "sent" (number and text
decoded from UCS-2 hex), and can be told to misbehave:

* ``sim``: "ready", "absent" (``+CME ERROR: 10``) or "pin" (``+CPIN: SIM PIN``);
* ``registration``: the stat of ``+CREG``/``+CEREG`` (1 home, 5 roaming, 2 searching, 0 none);
* ``prompt``: False = AT+CMGS never gives the ``> `` prompt;
* ``fail_sends``: the next n messages are refused with ``+CMS ERROR: 500``;
* ``send_delay_s``: how long the "network" takes before ``+CMGS``.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from dataclasses import dataclass

from gateway.sim.pty import PtyPair, close_pty, open_raw_pty


@dataclass(frozen=True, slots=True)
class SentSms:
    """One message the emulator accepted: number and text as decoded, and the raw hex."""

    number: str
    text: str
    number_raw: str
    body_raw: str
    at: float


class ModemEmulator:
    """An emulated modem on its own pty; ``start()`` runs it in a thread, ``stop()`` ends it."""

    def __init__(self) -> None:
        self._pty: PtyPair = open_raw_pty()
        self.path = self._pty.slave_path
        self.sim = "ready"
        self.registration = 1
        self.rssi = 20
        self.prompt = True
        self.fail_sends = 0
        self.send_delay_s = 0.0
        self.commands: list[str] = []
        self.sent: list[SentSms] = []
        self._echo = True
        self._cmgf = 0
        self._cscs = "IRA"
        self._dcs = 0
        self._ref = 0
        self._body_to: str | None = None  # number while the modem waits for a message body
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modem-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        close_pty(self._pty)

    def __enter__(self) -> ModemEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def messages(self) -> list[SentSms]:
        with self._lock:
            return list(self.sent)

    # -- the thread -------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._pty.master_fd, text.encode("ascii"))

    def _final(self, *lines: str) -> None:
        self._write("".join(f"\r\n{line}\r\n" for line in lines))

    def _run(self) -> None:
        buf = bytearray()
        fd = self._pty.master_fd
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([fd], [], [], 0.05)
                if not readable:
                    continue
                chunk = os.read(fd, 4096)
            except OSError:
                return
            buf += chunk
            while True:
                if self._body_to is not None:
                    end = min(
                        (i for i in (buf.find(b"\x1a"), buf.find(b"\x1b")) if i >= 0), default=-1
                    )
                    if end < 0:
                        break
                    body, terminator = bytes(buf[:end]), buf[end]
                    del buf[: end + 1]
                    number, self._body_to = self._body_to, None
                    if terminator == 0x1A:
                        self._message(number, body.decode("ascii", errors="replace"))
                    continue
                end = buf.find(b"\r")
                if end < 0:
                    break
                text = bytes(buf[:end]).decode("ascii", errors="replace")
                # Control bytes (an ESC that cancelled a body, a stray LF) are not commands.
                line = "".join(ch for ch in text if ch >= " ").strip()
                del buf[: end + 1]
                if line:
                    self._command(line)

    def _message(self, number_raw: str, body_raw: str) -> None:
        if self.send_delay_s:
            time.sleep(self.send_delay_s)
        if self.fail_sends > 0:
            self.fail_sends -= 1
            self._final("+CMS ERROR: 500")
            return
        try:
            if self._cscs == "UCS2":
                number = bytes.fromhex(number_raw).decode("utf-16-be")
            else:
                number = number_raw
            if self._dcs == 8:
                text = bytes.fromhex(body_raw).decode("utf-16-be")
            else:
                text = body_raw
        except ValueError:
            self._final("+CMS ERROR: 304")  # invalid text-mode parameter
            return
        self._ref = (self._ref + 1) % 256
        with self._lock:
            self.sent.append(SentSms(number, text, number_raw, body_raw, time.monotonic()))
        self._final(f"+CMGS: {self._ref}", "OK")

    def _command(self, line: str) -> None:
        with self._lock:
            self.commands.append(line)
        if self._echo:
            self._write(line + "\r")
        cmd = line.upper()
        if cmd in ("AT", "ATZ"):
            self._final("OK")
        elif cmd in ("ATE0", "ATE1"):
            self._echo = cmd == "ATE1"
            self._final("OK")
        elif cmd == "AT+CPIN?":
            if self.sim == "absent":
                self._final("+CME ERROR: 10")
            elif self.sim == "pin":
                self._final("+CPIN: SIM PIN", "OK")
            else:
                self._final("+CPIN: READY", "OK")
        elif cmd == "AT+CREG?":
            self._final(f"+CREG: 0,{self.registration}", "OK")
        elif cmd == "AT+CEREG?":
            self._final(f"+CEREG: 0,{self.registration}", "OK")
        elif cmd == "AT+CSQ":
            self._final(f"+CSQ: {self.rssi},99", "OK")
        elif cmd.startswith("AT+CMGF="):
            self._cmgf = 1 if cmd.endswith("1") else 0
            self._final("OK")
        elif cmd.startswith("AT+CSCS="):
            self._cscs = line.split("=", 1)[1].strip('"').upper()
            self._final("OK")
        elif cmd.startswith("AT+CSMP="):
            fields = line.split("=", 1)[1].split(",")
            try:
                self._dcs = int(fields[3])
            except (IndexError, ValueError):
                self._final("ERROR")
                return
            self._final("OK")
        elif cmd.startswith("AT+CMGS="):
            if self._cmgf != 1:
                self._final("+CMS ERROR: 302")  # operation not allowed (not text mode)
            elif self.sim != "ready":
                self._final("+CMS ERROR: 310")  # SIM not inserted
            elif self.registration not in (1, 5):
                self._final("+CMS ERROR: 331")  # no network service
            elif not self.prompt:
                pass  # a hung modem: nothing at all
            else:
                self._body_to = line.split("=", 1)[1].split(",")[0].strip('"')
                self._write("\r\n> ")
        else:
            self._final("ERROR")
