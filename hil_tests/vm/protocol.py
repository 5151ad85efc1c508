"""The JSON protocol of QEMU's machine monitor (QMP) and of its guest agent (QGA), over the unix
sockets QEMU serves them on.

``Monitor`` is QMP: the host's view of the machine (reset it, read its watchdog events).
``GuestAgent`` is QGA: commands and files inside the guest, through ``qemu-guest-agent`` on a
virtio serial port. The agent's channel has no greeting and survives the agent restarting, so
every use starts with ``guest-sync-delimited`` to drop a late answer to an earlier command.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ProtocolError(RuntimeError):
    """QEMU or the guest agent answered with an error, or not in time."""


class _Channel:
    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._buf = b""

    def close(self) -> None:
        self._sock.close()

    def _send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self._sock.sendall(data)

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError(f"{self.path.name}: no answer in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ProtocolError(f"{self.path.name}: QEMU closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _message(self, deadline: float) -> dict[str, Any]:
        # 0xFF: the guest agent's delimiter after a sync (QMP never sends it).
        message: dict[str, Any] = json.loads(self._line(deadline).lstrip(b"\xff"))
        return message

    def _event(self, message: dict[str, Any]) -> None:
        """An asynchronous event read while waiting for an answer (QMP only)."""

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout_s: float = 10.0
    ) -> Any:
        """Run ``command``; its ``return`` value, or ProtocolError with QEMU's error."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._send(request)
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._message(deadline)
            if "event" in message:
                self._event(message)
            elif "error" in message:
                raise ProtocolError(f"{self.path.name} {command}: {message['error']}")
            elif "return" in message:
                return message["return"]


@dataclass(frozen=True, slots=True)
class MachineEvent:
    """An asynchronous QMP event (``WATCHDOG``, ``RESET``, ``SHUTDOWN`` ...)."""

    name: str
    data: dict[str, Any]
    received_at: float  # time.monotonic() on this host


class Monitor(_Channel):
    """A QMP connection: ``execute`` a command, and every event seen kept in ``events``."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        super().__init__(path, timeout_s)
        self.events: list[MachineEvent] = []
        greeting = self._message(time.monotonic() + timeout_s)
        if "QMP" not in greeting:
            raise ProtocolError(f"{path.name}: not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _event(self, message: dict[str, Any]) -> None:
        self.events.append(
            MachineEvent(message["event"], message.get("data", {}), time.monotonic())
        )

    def poll_events(self, wait_s: float = 0.0) -> list[MachineEvent]:
        """Read the events that arrived (waiting up to ``wait_s`` for one); all seen so far."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                message = self._message(deadline if wait_s > 0 else time.monotonic() + 0.05)
            except ProtocolError as e:
                if "no answer" in str(e):
                    return self.events
                raise
            if "event" in message:
                self._event(message)
                wait_s = 0.0


@dataclass(frozen=True, slots=True)
class Completed:
    """A command run in the guest."""

    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        if self.status != 0:
            raise ProtocolError(
                f"guest: {' '.join(self.argv)} exited with {self.status}: "
                f"{(self.stderr or self.stdout).strip()[-2000:]}"
            )
        return self


class GuestAgent(_Channel):
    """A QGA connection: run commands and move files in the guest."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        super().__init__(path, timeout_s)
        self.sync(timeout_s)

    def sync(self, timeout_s: float = 10.0) -> None:
        """Drop whatever an earlier, timed-out command left on the channel."""
        token = random.randrange(1, 2**31)
        # The 0xFF byte makes the agent reset its JSON parser; its answer starts with one too.
        self._send(b"\xff")
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._line(deadline).lstrip(b"\xff").strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("return") == token:
                return

    def start(self, argv: list[str] | tuple[str, ...]) -> int:
        """Start ``argv`` in the guest and return its pid without waiting (a reboot: the
        agent goes away before it could report the end)."""
        pid: int = self.execute("guest-exec", {"path": argv[0], "arg": list(argv[1:])})["pid"]
        return pid

    def run(
        self, argv: list[str] | tuple[str, ...], timeout_s: float = 60.0, stdin: bytes = b""
    ) -> Completed:
        """Run ``argv`` in the guest, wait for it to end, return its status and output."""
        args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if stdin:
            args["input-data"] = base64.b64encode(stdin).decode()
        pid = self.execute("guest-exec", args)["pid"]
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            status = self.execute("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return Completed(
                    tuple(argv),
                    int(status.get("exitcode", -int(status.get("signal", 0)) or -1)),
                    base64.b64decode(status.get("out-data", "")).decode("utf-8", "replace"),
                    base64.b64decode(status.get("err-data", "")).decode("utf-8", "replace"),
                )
            if time.monotonic() > deadline:
                raise ProtocolError(f"guest: {' '.join(argv)} still running after {timeout_s} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def sh(self, script: str, timeout_s: float = 60.0) -> Completed:
        return self.run(("/bin/sh", "-c", script), timeout_s)

    def read_file(self, path: str) -> bytes:
        handle = self.execute("guest-file-open", {"path": path, "mode": "r"})
        try:
            data = b""
            while True:
                chunk = self.execute("guest-file-read", {"handle": handle, "count": 48 * 1024})
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    return data
        finally:
            self.execute("guest-file-close", {"handle": handle})

    def write_file(self, path: str, data: bytes) -> None:
        handle = self.execute("guest-file-open", {"path": path, "mode": "w"})
        try:
            for start in range(0, len(data), 48 * 1024):
                piece = base64.b64encode(data[start : start + 48 * 1024]).decode()
                self.execute("guest-file-write", {"handle": handle, "buf-b64": piece})
        finally:
            self.execute("guest-file-close", {"handle": handle})
