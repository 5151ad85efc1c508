"""The uplinks process's only way to the safety process: the uplink socket.

* ``status()``: the safety process's status document (for MQTT's retained status and the GB/T
  26875.3 device status), cached for ``STATUS_CACHE_S`` so a busy channel costs the safety
  process at most a few requests a second.
* ``record(event)``: a channel's own event (``uplink.down``, ``uplink.duty_check``, ``sms.sent``
  ...). It never blocks the channel: the event waits in memory, in order, and a sender thread
  hands it to the safety process's ``record`` command, retrying while that process is down or
  restarting. The uplink socket takes only ``uplink.*`` and ``sms.*`` kinds.
* ``report(channels)``: the channels' state, shown by ``gasguard status``.

Nothing here can open a valve: the uplink socket has no such command, and the control socket
refuses the uplinks' user.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.api.control import ControlClient, ControlError
from gateway.core.model import Event
from gateway.log import error, warn

STATUS_CACHE_S = 0.25
CALL_TIMEOUT_S = 2.0
RETRY_S = 1.0
MAX_WAITING = 10_000  # own events held while the safety process is away; beyond: oldest dropped


class SafetyLink:
    """Talks to the safety process at ``socket_path`` (the uplink socket)."""

    def __init__(
        self,
        socket_path: Path,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._wall = wall
        self._clock = clock
        self._status: tuple[float, dict[str, Any]] | None = None
        self._status_lock = threading.Lock()
        self._waiting: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._sender: threading.Thread | None = None
        self.dropped = 0

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        return ControlClient(self.socket_path, timeout=self.timeout_s).call(cmd, **args)

    def status(self) -> dict[str, Any]:
        """The safety process's status; raises ControlError when it does not answer."""
        with self._status_lock:
            cached = self._status
            now = self._clock()
            if cached is not None and now - cached[0] < STATUS_CACHE_S:
                return cached[1]
            status = self.call("status")
            self._status = (now, status)
            return status

    def record(self, event: Event) -> None:
        """Queue a channel's event for the event log (never blocks)."""
        item = {
            "kind": event.kind,
            "source": event.source,
            "details": dict(event.details),
            "utc": self._wall(),
        }
        with self._wake:
            if len(self._waiting) >= MAX_WAITING:
                self._waiting.popleft()
                self.dropped += 1
            self._waiting.append(item)
            self._wake.notify()

    def report(
        self,
        channels: dict[str, Any],
        outbox: dict[str, Any] | None = None,
        delivery: dict[str, Any] | None = None,
        forwarded_seq: int | None = None,
    ) -> None:
        """Tell the safety process the channels' state, the outbox's fill, the delivery
        statistics and the highest event seq safely in the outbox (best effort): the event
        log never rotates out a never-dropped event above it."""
        extra = {} if forwarded_seq is None else {"forwarded_seq": forwarded_seq}
        try:
            self.call("report", channels=channels, outbox=outbox, delivery=delivery, **extra)
        except ControlError as e:
            warn("uplinks.report_failed", error=str(e)[:200])

    # -- the sender thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._sender = threading.Thread(target=self._send_loop, name="uplink-record", daemon=True)
        self._sender.start()

    def stop(self, flush_s: float = 2.0) -> None:
        """Stop the sender after trying for ``flush_s`` to hand over what waits."""
        deadline = self._clock() + flush_s
        while self._waiting and self._clock() < deadline:
            time.sleep(0.05)
        self._stopping.set()
        with self._wake:
            self._wake.notify()
        if self._sender is not None:
            self._sender.join(5.0)
        if self._waiting:
            error("uplinks.records_lost", events=len(self._waiting), reason="stopped")

    def waiting(self) -> int:
        return len(self._waiting)

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            with self._wake:
                while not self._waiting and not self._stopping.is_set():
                    self._wake.wait(1.0)
                if self._stopping.is_set():
                    return
                item = self._waiting[0]
            try:
                self.call("record", **item)
            except ControlError as e:
                text = str(e)
                if "record:" in text:  # refused as malformed: a bug here, never retried
                    error("uplinks.record_refused", kind=item["kind"], error=text[:200])
                else:
                    warn("uplinks.record_waiting", waiting=len(self._waiting), error=text[:200])
                    self._stopping.wait(RETRY_S)
                    continue
            with self._wake:
                if self._waiting and self._waiting[0] is item:
                    self._waiting.popleft()
