"""The host side of the fixture's USB CDC line protocol (firmware/fixture/protocol.py).

One ``FixtureClient`` per fixture: a reader thread splits what the fixture prints into replies
(``ok`` / ``err``, one per command), edge reports and other notices. Commands go one at a time;
``command()`` raises ``FixtureError`` on ``err`` or when no reply comes in time, so a scenario
never runs on with a fixture that did not do what it was told.

Time stamps are the fixture's ``ticks_us`` (they wrap every 2**30 us); compare them only with
``ticks_diff``. On both rigs a measured interval (gas step to valve edge) is taken on one clock,
the fixture's, so the host's scheduling does not enter it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import serial

TICKS_PERIOD = 1 << 30
REPLY_TIMEOUT_S = 3.0


def ticks_diff(a: int, b: int) -> int:
    """``a - b`` in microseconds, for fixture time stamps at most half a wrap apart."""
    half = TICKS_PERIOD >> 1
    return ((a - b + half) & (TICKS_PERIOD - 1)) - half


class FixtureError(Exception):
    """The fixture refused a command or did not answer."""


@dataclass(frozen=True, slots=True)
class Edge:
    """One reported edge: ``line`` (valve, sounder, red, yellow, green, feedback), ``level`` 0/1
    and ``at``, the fixture's ticks_us when it happened."""

    line: str
    level: int
    at: int


@dataclass(frozen=True, slots=True)
class Reply:
    """One ``ok`` reply: the words after ``ok <command>`` and ``at``, the fixture's time when the
    command took effect."""

    command: str
    words: tuple[str, ...]
    at: int

    def field(self, name: str) -> str:
        """The value of ``name=value`` among the words."""
        for w in self.words:
            key, sep, value = w.partition("=")
            if sep and key == name:
                return value
        raise KeyError(f"reply to {self.command!r} has no {name}= in {' '.join(self.words)!r}")


class FixtureClient:
    """Talks to the fixture on ``port`` (``/dev/ttyACM0`` on the hardware rig, a pty in the
    sim rig)."""

    def __init__(self, port: str) -> None:
        self.port = port
        self._serial = serial.Serial(port, 115200, timeout=0.05)
        self._replies: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._edges: list[Edge] = []
        self._notices: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._command_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="fixture-client", daemon=True)
        self._thread.start()

    # -- reading -----------------------------------------------------------------------------

    def _read(self) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                chunk = self._serial.read(256)
            except (serial.SerialException, OSError, TypeError):
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            if not chunk:
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(raw.decode(errors="replace").strip())

    def _line(self, text: str) -> None:
        if not text:
            return
        word = text.split(maxsplit=1)[0]
        if word in ("ok", "err"):
            self._replies.put(text)
            return
        with self._changed:
            if word == "edge":
                parts = text.split()
                if len(parts) == 4:
                    self._edges.append(Edge(parts[1], int(parts[2]), int(parts[3])))
            else:
                self._notices.append(text)
            self._changed.notify_all()

    # -- commands ----------------------------------------------------------------------------

    def command(self, text: str, timeout: float = REPLY_TIMEOUT_S) -> Reply:
        """Send one command line; its ``ok`` reply, or ``FixtureError``."""
        name = text.split()[0]
        with self._command_lock:
            while True:  # a reply left over from a command that timed out is stale
                try:
                    self._replies.get_nowait()
                except queue.Empty:
                    break
            self._serial.write((text + "\n").encode())
            self._serial.flush()
            try:
                line = self._replies.get(timeout=timeout)
            except queue.Empty:
                raise FixtureError(
                    f"fixture on {self.port}: no reply to {text!r} within {timeout} s"
                ) from None
        words = line.split()
        if words[0] == "err" or len(words) < 2 or words[1] != name:
            raise FixtureError(f"fixture on {self.port}: {text!r} -> {line!r}")
        at = int(words[-1][2:]) if words[-1].startswith("t=") else 0
        return Reply(name, tuple(words[2:-1]), at)

    def now(self) -> int:
        """The fixture's clock (ticks_us)."""
        return self.command("time").at

    def stats(self) -> dict[str, str]:
        reply = self.command("stats")
        return dict(w.split("=", 1) for w in reply.words if "=" in w)

    def lines(self) -> dict[str, int]:
        reply = self.command("lines")
        return {k: int(v) for k, v in (w.split("=", 1) for w in reply.words if "=" in w)}

    # -- edges -------------------------------------------------------------------------------

    def edges(self, line: str | None = None, since: int | None = None) -> list[Edge]:
        """Reported edges, oldest first, of ``line`` (all if None), at or after ``since``."""
        with self._lock:
            return [
                e
                for e in self._edges
                if (line is None or e.line == line)
                and (since is None or ticks_diff(e.at, since) >= 0)
            ]

    def wait_edge(self, line: str, level: int, since: int, timeout: float) -> Edge | None:
        """The first edge of ``line`` to ``level`` at or after ``since``, waiting up to
        ``timeout`` seconds for it to be reported; None if none came."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for e in self._edges:
                    if e.line == line and e.level == level and ticks_diff(e.at, since) >= 0:
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.05))

    def notices(self) -> list[str]:
        with self._lock:
            return list(self._notices)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._serial.close()
