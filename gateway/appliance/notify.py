"""A tiny sd_notify client: tells systemd "ready", "still alive", "stopping" and a status line.

No dependency: one ``AF_UNIX`` datagram socket sending to ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``), the same wire format as ``sd_notify(3)``: newline
separated ``KEY=VALUE`` assignments in one datagram.

Safety-relevant behaviour:

* ``send()`` never blocks and never raises: it uses ``MSG_DONTWAIT``, so a full or gone systemd
  socket costs one failed system call, not a stalled safety loop. It returns False instead
  (and keeps the error in ``last_error`` for the main thread to log).
* Without ``$NOTIFY_SOCKET`` (not started by systemd: tests, the demo, a technician's shell)
  every call is a no-op that returns False.
* A ``$NOTIFY_SOCKET`` this client cannot use (relative path, vsock, too long) is a
  ``NotifyError`` at construction, on the main thread at start-up, naming the value: silently
  ignoring it would make systemd kill the service for never reporting ready.

``watchdog_interval_s()`` reads ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, which must be this
process if set) the way ``sd_watchdog_enabled(3)`` does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping

# sockaddr_un.sun_path holds 108 bytes; a path needs its terminating NUL, an abstract name not.
MAX_SOCKET_PATH_BYTES = 107
MAX_ABSTRACT_NAME_BYTES = 107
MAX_STATUS_CHARS = 400  # systemctl status shows one line; keep the datagram small
WATCHDOG_USEC_MAX = 24 * 3600 * 1_000_000  # one day: anything longer is a typo, not a watchdog


class NotifyError(Exception):
    """``$NOTIFY_SOCKET`` or ``$WATCHDOG_USEC`` holds a value this client cannot use."""


def _address(value: str) -> str | bytes:
    """The socket address for a ``$NOTIFY_SOCKET`` value (path, or ``@name`` abstract)."""
    if value.startswith("@"):
        name = value[1:].encode()
        if not name or len(name) > MAX_ABSTRACT_NAME_BYTES:
            raise NotifyError(
                f"NOTIFY_SOCKET={value!r}: an abstract socket name must have 1 to "
                f"{MAX_ABSTRACT_NAME_BYTES} bytes after the '@'"
            )
        return b"\0" + name
    if not value.startswith("/"):
        raise NotifyError(
            f"NOTIFY_SOCKET={value!r}: must be an absolute path or '@' and an abstract name "
            "(vsock addresses are not supported)"
        )
    if len(os.fsencode(value)) > MAX_SOCKET_PATH_BYTES:
        raise NotifyError(
            f"NOTIFY_SOCKET={value!r}: a socket path must have at most "
            f"{MAX_SOCKET_PATH_BYTES} bytes"
        )
    return value


class Notifier:
    """Sends notifications to the service manager at ``$NOTIFY_SOCKET`` (read from
    ``environ``, default ``os.environ``, once at construction).

    ``enabled`` is False without a socket: then every method returns False and sends nothing.
    Safe to call from several threads (each call is one ``sendto``); ``watchdog()`` is meant for
    the safety thread only (see ``gateway.appliance.heartbeat``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        self.socket_value = value
        self.address: str | bytes | None = _address(value) if value else None
        self._sock: socket.socket | None = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sent = 0
        self.failed = 0
        self.last_error: OSError | None = None
        self.last_sent_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram. True if the datagram left; False
        when disabled or on any socket error (never raises, never blocks)."""
        sock, address = self._sock, self.address
        if sock is None or address is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            sock.sendto(data, socket.MSG_DONTWAIT, address)
        except OSError as e:  # EAGAIN (queue full), ECONNREFUSED / ENOENT (nobody listening)
            self.failed += 1
            self.last_error = e
            return False
        self.sent += 1
        self.last_sent_at = time.monotonic()
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (systemd's TimeoutStartSec ends, WatchdogSec
        starts). ``status`` goes in the same datagram."""
        extra = () if status is None else (_status_line(status),)
        return self.send("READY=1", *extra)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive. Only the safety loop may call this."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: an orderly shutdown has begun."""
        extra = () if status is None else (_status_line(status),)
        return self.send("STOPPING=1", *extra)

    def status(self, text: str) -> bool:
        """``STATUS=...``: one line for ``systemctl status`` (newlines become spaces)."""
        return self.send(_status_line(text))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _status_line(text: str) -> str:
    line = " ".join(str(text).split())
    if len(line) > MAX_STATUS_CHARS:
        line = line[: MAX_STATUS_CHARS - 3] + "..."
    return "STATUS=" + line


def watchdog_interval_s(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """The service watchdog timeout in seconds systemd expects ``WATCHDOG=1`` within, or None
    when no watchdog is set for this process (``$WATCHDOG_USEC`` unset, or ``$WATCHDOG_PID``
    names another process). Raises NotifyError for a value that is not 1..86400e6 µs."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if raw is None or raw == "":
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            owner_pid = int(owner)
        except ValueError:
            raise NotifyError(f"WATCHDOG_PID={owner!r}: must be a process id") from None
        if owner_pid != (os.getpid() if pid is None else pid):
            return None
    try:
        usec = int(raw)
    except ValueError:
        raise NotifyError(
            f"WATCHDOG_USEC={raw!r}: must be a whole number of microseconds, "
            f"1 to {WATCHDOG_USEC_MAX}"
        ) from None
    if not 1 <= usec <= WATCHDOG_USEC_MAX:
        raise NotifyError(
            f"WATCHDOG_USEC={raw!r}: must be a whole number of microseconds, "
            f"1 to {WATCHDOG_USEC_MAX}"
        )
    return usec / 1_000_000


class NotifyListener:
    """The receiving end, as systemd holds it: a bound datagram socket that collects what a
    ``Notifier`` sends. For tests, benchmarks and the upgrade rehearsal, never for the
    controller itself. ``path`` is a filesystem path, or ``@name`` for an abstract socket.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(_address(path))
        except BaseException:
            self._sock.close()
            raise
        # SO_PASSCRED: the kernel attaches the sender's pid, as systemd sees it.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[float, int | None, dict[str, str]]] = []

    def environ(self) -> dict[str, str]:
        """The environment variable a service would be given."""
        return {"NOTIFY_SOCKET": self.path}

    def receive(self, timeout: float) -> list[tuple[float, int | None, dict[str, str]]]:
        """Collect datagrams until none arrives for ``timeout`` seconds after the first wait;
        returns the new ones as (monotonic time, sender pid, assignments)."""
        new: list[tuple[float, int | None, dict[str, str]]] = []
        self._sock.settimeout(timeout)
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(3 * 4))
            except (TimeoutError, BlockingIOError):
                break
            pid: int | None = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], "little")
            fields: dict[str, str] = {}
            for line in data.decode("utf-8", "replace").split("\n"):
                key, sep, value = line.partition("=")
                if sep:
                    fields[key] = value
            item = (time.monotonic(), pid, fields)
            new.append(item)
            self.messages.append(item)
            # Drain what is already queued, then return.
            self._sock.settimeout(0.01)
        return new

    def listen(self, duration: float) -> list[tuple[float, int | None, dict[str, str]]]:
        """Collect every datagram arriving within the next ``duration`` seconds."""
        deadline = time.monotonic() + duration
        new: list[tuple[float, int | None, dict[str, str]]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return new
            new += self.receive(min(left, 0.1))

    def times(self, key: str, value: str, since: float = 0.0) -> list[float]:
        """Arrival times (monotonic) of the assignment ``key=value`` received so far, at or
        after ``since``."""
        return [t for t, _pid, fields in self.messages if t >= since and fields.get(key) == value]

    def wait_for(self, key: str, value: str, timeout: float, since: float = 0.0) -> float | None:
        """Wait up to ``timeout`` s for an assignment ``key=value`` arriving at or after
        ``since`` (monotonic); its arrival time, or None."""
        deadline = time.monotonic() + timeout
        seen = self.times(key, value, since)
        if seen:
            return seen[0]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for t, _pid, fields in self.receive(min(left, 0.1)):
                if fields.get(key) == value:
                    return t

    def close(self) -> None:
        self._sock.close()
        if not self.path.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
