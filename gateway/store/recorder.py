"""The recorder thread: stores events *after* the valve has acted, then logs and forwards them.

The safety thread never touches the disk, the log or a lock held by another thread (valve first).
It only puts items into a ``queue.SimpleQueue`` (unbounded, ``put`` never blocks):

* ``(utc, Event)``: one event, ``utc`` from ``time.time()`` when it happened;
* ``LatchedSnapshot(latched)``: the latched alarms as they are now, to survive a restart.

The recorder takes whatever is waiting, stores it in one transaction (one fsync on the SD card),
logs each event as a one-liner, then calls the subscribers (uplinks) with the stored event. A
failing disk does not stop it: it logs, waits (0.1 s doubling to ``retry_max_s``) and retries
the same items in the same order; nothing behind them is stored first. While it fails,
``failing`` is True so the controller can show a fault; when the disk is back a
``store.recovered`` event records how long it was down.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.model import Event, Level
from gateway.log import error, log, warn
from gateway.store.events import EventStore, StoredEvent

# Events whose log line is a warning: what a technician looks for first.
_WARN_KINDS = ("alarm.", "fault.raised", "valve.failed", "operator.reset_refused")
MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class LatchedSnapshot:
    """The latched alarm level of every detector now (detector name -> level). Only the last
    snapshot of a batch is written; it is stored in the same transaction as the events before
    it, so the saved state never runs ahead of the event log."""

    latched: Mapping[str, Level]


@dataclass(frozen=True, slots=True)
class RecorderMark:
    """Put by ``Recorder.flush`` and ``Recorder.stop`` (never by the safety thread): ``done`` is
    set once every item queued before it is stored; ``stop`` ends the thread after that."""

    done: threading.Event = field(default_factory=threading.Event)
    stop: bool = False


RecorderItem = tuple[float, Event] | LatchedSnapshot | RecorderMark


class Recorder:
    """Drains a queue of (utc, Event) items and latched-state snapshots written by the safety
    thread, stores them, logs each event as a one-liner, then calls subscribers.

    Subscribers run in the recorder thread after the event is durable; they must return quickly
    (queue the work) and an exception in one is logged and does not stop recording.
    """

    def __init__(
        self,
        store_path: Path,
        capacity: int,
        inbox: queue.SimpleQueue[RecorderItem],
        *,
        busy_timeout_s: float = 5.0,
        retry_max_s: float = 5.0,
    ) -> None:
        self.store_path = Path(store_path)
        self.capacity = capacity
        self.inbox = inbox
        self.busy_timeout_s = busy_timeout_s
        self.retry_max_s = retry_max_s
        self._subscribers: list[Callable[[StoredEvent], None]] = []
        self._thread: threading.Thread | None = None
        self._abandon = threading.Event()
        self._failing_since: float | None = None
        self.last_error: str | None = None
        self.stored = 0

    @property
    def failing(self) -> bool:
        """True while the last write failed and items are waiting to be retried."""
        return self._failing_since is not None

    def subscribe(self, callback: Callable[[StoredEvent], None]) -> None:
        """Call ``callback(stored_event)`` for every event once it is stored. Subscribe before
        ``start``."""
        self._subscribers.append(callback)

    def start(self) -> None:
        """Open the store in the recorder thread and start draining. Raises EventStoreError
        (corrupt, newer schema, unwritable) or ValueError (capacity) if the store cannot open."""
        if self._thread is not None:
            raise RuntimeError("recorder already started")
        self._abandon.clear()
        opened = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(opened, failure), name="recorder", daemon=True
        )
        self._thread.start()
        opened.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is stored; False if that took over ``timeout``
        seconds (a failing disk) or the recorder is not running."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        mark = RecorderMark()
        self.inbox.put(mark)
        return mark.done.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Store everything queued so far, then end the thread. If the disk keeps failing for
        ``timeout`` seconds, give up and log how many items were not stored."""
        thread = self._thread
        if thread is None:
            return
        self.inbox.put(RecorderMark(stop=True))
        thread.join(timeout)
        if thread.is_alive():
            self._abandon.set()
            thread.join(max(1.0, self.retry_max_s + 1.0))
        self._thread = None

    # -- the thread ----------------------------------------------------------------------------

    def _run(self, opened: threading.Event, failure: list[BaseException]) -> None:
        try:
            store = EventStore(self.store_path, self.capacity, busy_timeout_s=self.busy_timeout_s)
        except Exception as e:  # start() re-raises it in the caller's thread
            failure.append(e)
            opened.set()
            return
        opened.set()
        log("recorder.started", path=self.store_path, capacity=self.capacity)
        try:
            self._loop(store)
        finally:
            store.close()

    def _loop(self, store: EventStore) -> None:
        while True:
            batch = [self.inbox.get()]
            # Take what is waiting, up to the next mark: one transaction for all of it.
            while not isinstance(batch[-1], RecorderMark) and len(batch) < MAX_BATCH:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            mark: RecorderMark | None = None
            last = batch[-1]
            if isinstance(last, RecorderMark):
                mark = last
                batch.pop()
            if batch and not self._store(store, batch):
                left = len(batch) + self.inbox.qsize()
                error("recorder.abandoned", path=self.store_path, unsaved_items=left)
                return
            if mark is not None:
                mark.done.set()
                if mark.stop:
                    log("recorder.stopped", path=self.store_path, stored=self.stored)
                    return

    def _store(self, store: EventStore, batch: list[RecorderItem]) -> bool:
        """Store ``batch`` (no marks), retrying until it is stored; False if abandoned."""
        events: list[tuple[float, Event]] = []
        latched: Mapping[str, Level] | None = None
        for item in batch:
            if isinstance(item, LatchedSnapshot):
                latched = _checked_latched(item.latched)
            else:
                events.append(_checked(item))
        delay = 0.1
        while True:
            extra: list[tuple[float, Event]] = []
            if self._failing_since is not None:
                down = round(time.monotonic() - self._failing_since, 3)
                extra.append(
                    (
                        time.time(),
                        Event(
                            "store.recovered",
                            "recorder",
                            time.monotonic(),
                            {"failed_s": down, "error": self.last_error},
                        ),
                    )
                )
            try:
                seqs = store.record(events + extra, latched)
                break
            except Exception as e:  # keep the items and their order; the disk may come back
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                self.last_error = str(e)
                error("recorder.write_failed", error=e, waiting=len(batch), retry_in_s=delay)
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, self.retry_max_s)
        if self._failing_since is not None:
            log("recorder.recovered", path=self.store_path)
            self._failing_since = None
        self.stored += len(seqs)
        for seq, (utc, event) in zip(seqs, events + extra, strict=True):
            stored = StoredEvent(seq, utc, event.kind, event.source, dict(event.details))
            try:
                _log_event(stored)
            except Exception as e:  # a log line must never stop the forwarding
                error("recorder.log_failed", seq=seq, error=e)
            for callback in self._subscribers:
                try:
                    callback(stored)
                except Exception as e:
                    error("recorder.subscriber_failed", subscriber=callback, seq=seq, error=e)
        return True


def _checked(item: object) -> tuple[float, Event]:
    """A queued item as a storable (utc, Event). A malformed one is recorded as a
    ``recorder.bad_item`` event rather than dropped or allowed to block the queue."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Event):
        utc, event = item
        if not isinstance(utc, bool) and isinstance(utc, int | float) and math.isfinite(utc):
            return float(utc), event
        details = dict(event.details)
        details["given_utc"] = repr(utc)
        warn("recorder.bad_utc", kind=event.kind, source=event.source, utc=repr(utc))
        return time.time(), Event(event.kind, event.source, event.at, details)
    error("recorder.bad_item", item=repr(item)[:200])
    return time.time(), Event(
        "recorder.bad_item", "recorder", time.monotonic(), {"item": repr(item)[:500]}
    )


def _checked_latched(latched: Mapping[str, Level]) -> dict[str, Level]:
    """A snapshot as storable levels. A value that is not a level is saved as HIGH: when we
    cannot tell what was latched, the reset must still wait for that detector (fail safe)."""
    out: dict[str, Level] = {}
    for name, level in latched.items():
        try:
            out[str(name)] = Level(level)
        except (ValueError, TypeError):
            error("recorder.bad_latched", detector=name, level=repr(level))
            out[str(name)] = Level.HIGH
    return out


def _log_event(stored: StoredEvent) -> None:
    fields: dict[str, Any] = {"seq": stored.seq, "kind": stored.kind, "source": stored.source}
    for key, value in stored.details.items():
        fields[f"d_{key}"] = value
    if stored.kind.startswith(_WARN_KINDS):
        warn("event", **fields)
    else:
        log("event", **fields)
