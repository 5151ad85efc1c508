"""The recorder thread: stores events *after* the valve has acted, then logs and forwards them.

The safety thread never touches the disk, the log or a lock held by another thread (valve first).
It only puts items into a ``RecorderInbox`` (a ``queue.SimpleQueue``: ``put`` never blocks;
counted, and bounded for the events that may be dropped, see ``gateway.store.backlog``):

* ``(utc, Event)``: one event, ``utc`` from ``time.time()`` when it happened;
* ``LatchedSnapshot(latched)``: the latched alarms as they are now, to survive a restart.

The recorder takes whatever is waiting, stores it in one transaction (one fsync on the SD card),
logs each event as a one-liner, then calls the subscribers with the stored event. A failing
disk does not stop it, nor the controller: the items wait in memory in order while it retries
(0.1 s doubling to ``retry_max_s``); ``on_health`` reports the fault to the safety core (yellow
light, sounder, ``fault.raised store``); when the disk is back a ``store.recovered`` event
records how long it was down. See ``Recorder`` for corrupt, read-only and deleted logs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.kinds import EVENTS_LOST, may_drop
from gateway.core.model import Event, Level
from gateway.log import error, log, warn
from gateway.paths import spill_path
from gateway.regularfile import open_regular, read_regular
from gateway.store.backlog import (
    MAX_DROPPABLE_BYTES,
    MAX_KEPT_BYTES,
    Backlog,
    RecorderInbox,
)
from gateway.store.events import (
    FORWARDED_KEY,
    EventStore,
    EventStoreError,
    StoredEvent,
    last_seq_of,
)
from gateway.store.latchfile import LatchFile, LatchFileError

# Events whose log line is a warning: what a technician looks for first.
_WARN_KINDS = ("alarm.", "fault.raised", "valve.failed", "operator.reset_refused")
MAX_BATCH = 500
MAX_SPILL_BYTES = 64 * 1024 * 1024  # what a stop may leave for the next start to replay
DROP_LOG_EVERY_S = 1.0  # drops from the backlog are logged at most this often, with a count
IDLE_CHECK_S = 2.0  # with nothing to store, the log file is still checked this often
FULL_BELOW_BYTES = 256 * 1024  # an I/O error with less room than this is a full disk


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
Waiting = tuple[float, Event] | LatchedSnapshot  # an item of the backlog


def _event_of(item: object) -> tuple[float, Event] | None:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Event):
        utc = item[0]
        return (float(utc) if isinstance(utc, int | float) else 0.0), item[1]
    return None


def droppable(item: RecorderItem) -> bool:
    """An item the inbox may turn away when full: an event of a kind that may be dropped."""
    found = _event_of(item)
    return found is not None and may_drop(found[1].kind)


def new_inbox() -> RecorderInbox[RecorderItem]:
    """The recorder's inbox, bounded for droppable events (``gateway.store.backlog``)."""
    return RecorderInbox(droppable)


class Recorder:
    """Drains a queue of (utc, Event) items and latched-state snapshots written by the safety
    thread, stores them, logs each event as a one-liner, then calls subscribers.

    A store that cannot be used never stops it (nor the controller): the items wait in memory,
    in order (``backlog``), while it retries (0.1 s doubling to ``retry_max_s``), and
    ``on_health(text)`` reports the fault (``on_health(None)`` once stored again). A store that
    is really corrupt (``PRAGMA quick_check``, or not a database at all) is moved aside, kept
    for inspection, and a new log continues the numbering upwards; a full disk is called a full
    disk and a read-only store a read-only store. A log file deleted or replaced while running
    is noticed (its inode), a new one is started and the latched state still in memory is
    written into it. Latched snapshots also go to ``latch_file`` at once, whatever the event
    log's state.

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
        on_health: Callable[[str | None], None] | None = None,
        latch_file: LatchFile | None = None,
        latched: Mapping[str, Level] | None = None,
        max_kept_bytes: int = MAX_KEPT_BYTES,
        max_droppable_bytes: int = MAX_DROPPABLE_BYTES,
        forwarded: Callable[[], int | None] | None = None,
    ) -> None:
        self.store_path = Path(store_path)
        self.capacity = capacity
        self.inbox = inbox
        self.busy_timeout_s = busy_timeout_s
        self.retry_max_s = retry_max_s
        self.on_health = on_health
        self.latch_file = latch_file
        self._subscribers: list[Callable[[StoredEvent], None]] = []
        self._thread: threading.Thread | None = None
        self._abandon = threading.Event()
        self._failing_since: float | None = None
        self._store: EventStore | None = None
        self._inode: int | None = None
        self._db_error: str | None = None
        self._latch_error: str | None = None
        self._health: str | None = None
        self._last_latched: dict[str, Level] = dict(latched or {})
        self._after_open: list[tuple[float, Event] | LatchedSnapshot] = []
        self._high_seq = 0  # the highest event number seen: a replacement log numbers above it
        self.last_error: str | None = None
        self.stored = 0
        self.backlog = 0  # items waiting in memory for the store
        self.dropped = 0  # droppable events dropped because the backlog was full
        self._pending: Backlog[Waiting] = Backlog(_event_of, max_droppable_bytes, max_kept_bytes)
        self._drops_logged = (0.0, 0)  # (when, how many) the last drop line said
        self._inbox_drops_logged = (0.0, 0)  # the same for the inbox's turned-away events
        self._replaying: Path | None = None  # a spill file being replayed
        # The uplinks' high-water mark (None: no uplinks): rotation keeps what is above it.
        self.forwarded = forwarded or (lambda: None)
        self._forwarded_saved: int | None = None

    @property
    def failing(self) -> bool:
        """True while the last write failed and items are waiting to be retried."""
        return self._failing_since is not None

    @property
    def health(self) -> str | None:
        """What is wrong with the store now (None: healthy)."""
        return self._health

    def subscribe(self, callback: Callable[[StoredEvent], None]) -> None:
        """Call ``callback(stored_event)`` for every event once it is stored. Subscribe before
        ``start``."""
        self._subscribers.append(callback)

    def start(self) -> None:
        """Start the thread; returns once it has tried to open the store (a store that cannot
        be used is a fault reported through ``on_health``, never an exception here)."""
        if self._thread is not None:
            raise RuntimeError("recorder already started")
        self._abandon.clear()
        opened = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name="recorder", daemon=True
        )
        self._thread.start()
        opened.wait()

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

    # -- health ----------------------------------------------------------------------------------

    def _set_health(self) -> None:
        health = self._db_error or self._latch_error
        if health == self._health:
            return
        self._health = health
        if health is None:
            log("recorder.healthy", path=self.store_path)
        if self.on_health is not None:
            try:
                self.on_health(health)
            except Exception as e:  # reporting must never stop recording
                error("recorder.health_callback_failed", error=repr(e))

    def _save_latch(self, latched: Mapping[str, Level]) -> None:
        self._last_latched = dict(latched)
        if self.latch_file is None:
            return
        try:
            self.latch_file.save(latched)
        except LatchFileError as e:
            if self._latch_error is None:
                error("recorder.latch_file_failed", error=str(e))
            self._latch_error = str(e)
        else:
            self._latch_error = None
        self._set_health()

    # -- opening the store ---------------------------------------------------------------------

    def _open(self) -> EventStore | None:
        """The store, opened and proven writable; None (and the fault reported) when it cannot
        be used now. A really corrupt file is moved aside and a new one started."""
        for attempt in (1, 2):
            store: EventStore | None = None
            try:
                store = EventStore(
                    self.store_path,
                    self.capacity,
                    busy_timeout_s=self.busy_timeout_s,
                    first_seq=self._high_seq + 1,
                )
                problem = store.quick_check()
                if problem is None:
                    # A real write: a read-only file, -wal or -shm must show now, not later.
                    store.put_state("opened_utc", time.time())
                    self._inode = os.stat(self.store_path).st_ino
                    self._high_seq = max(self._high_seq, store.last_seq())
                    if self.latch_file is not None:
                        try:
                            self.latch_file.ensure()
                        except LatchFileError as e:
                            self._latch_error = str(e)
                        else:
                            if self._latch_error is not None:
                                self._save_latch(self._last_latched)  # catch up, clear
                    self._db_error = None
                    self._set_health()
                    log("recorder.opened", path=self.store_path)
                    return store
            except (EventStoreError, sqlite3.Error, OSError, ValueError) as e:
                problem = None if not _is_corrupt(e) else str(e)
                if problem is None:
                    if store is not None:
                        store.close()
                    self._db_failed(_describe(self.store_path, e))
                    return None
            if store is not None:
                store.close()
            if attempt == 2 or not self._move_aside(problem):
                self._db_failed(f"event log {self.store_path} is corrupt: {problem}")
                return None
        return None

    def _move_aside(self, problem: str) -> bool:
        """Rename the corrupt log (and its -wal and -shm) to ``*.corrupt-UTC``; True if done."""
        self._high_seq = max(self._high_seq, last_seq_of(self.store_path))
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.store_path.with_name(f"{self.store_path.name}.corrupt-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.store_path}{suffix}")
                if src.exists():
                    os.replace(src, Path(f"{kept}{suffix}"))
        except OSError as e:
            error("recorder.move_aside_failed", path=self.store_path, error=repr(e))
            return False
        error(
            "recorder.corrupt_log_moved_aside",
            path=self.store_path,
            kept_as=kept,
            problem=problem[:300],
            note="a new event log continues the numbering upwards",
        )
        self._after_open.append(
            (
                time.time(),
                Event(
                    "store.moved_aside",
                    "recorder",
                    time.monotonic(),
                    {"kept_as": str(kept), "problem": problem[:300]},
                ),
            )
        )
        self._after_open.append(LatchedSnapshot(dict(self._last_latched)))
        return True

    def _db_failed(self, text: str) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if text != self._db_error:
            error("recorder.store_failed", error=text)
        self._db_error = text
        self.last_error = text
        self._set_health()

    def _usable(self) -> EventStore | None:
        """The open store after checking it is still the file at the path (a deleted or replaced
        log is noticed and a new one started), or a newly opened one."""
        store = self._store
        if store is not None:
            try:
                inode: int | None = os.stat(self.store_path).st_ino
            except FileNotFoundError:
                inode = None
            except OSError:
                inode = self._inode  # cannot tell: keep writing, a write error will show
            if inode != self._inode:
                what = "deleted" if inode is None else "replaced by another file"
                text = f"event log {self.store_path} was {what} while running"
                error("recorder.log_lost", path=self.store_path, what=what)
                store.close()
                self._store = store = None
                self._db_failed(text + "; a new one is started")
                self._after_open.append(
                    (
                        time.time(),
                        Event("store.replaced", "recorder", time.monotonic(), {"what": what}),
                    )
                )
                self._after_open.append(LatchedSnapshot(dict(self._last_latched)))
        if store is None:
            store = self._store = self._open()
        return store

    # -- the thread ----------------------------------------------------------------------------

    # -- what a stop could not store --------------------------------------------------------------

    def _spill(self, items: list[Waiting]) -> None:
        """At a stop with the log still failing: append what is unsaved to the spill file
        beside the log (one JSON object a line, fsynced), which the next start replays first."""
        lines: list[dict[str, object]] = []
        for item in items:
            if isinstance(item, LatchedSnapshot):
                lines.append({"latched": {k: int(v) for k, v in item.latched.items()}})
            else:
                utc, event = item
                lines.append(
                    {"utc": utc, "kind": event.kind, "source": event.source,
                     "details": event.details}
                )  # fmt: skip
        data = "".join(json.dumps(x, ensure_ascii=False, default=str) + "\n" for x in lines)
        path = spill_path(self.store_path)
        try:
            fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, MAX_SPILL_BYTES)
            try:
                os.write(fd, data.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            error("recorder.spill_failed", path=path, items=len(items), error=repr(e))
            return
        warn("recorder.spilled", path=path, items=len(items), note="replayed at the next start")

    def _load_spill(self) -> None:
        """Queue what the last run spilled, ahead of everything else (at least once: a crash
        before it is stored replays it again)."""
        path = spill_path(self.store_path)
        try:
            data = read_regular(path, MAX_SPILL_BYTES)
        except FileNotFoundError:
            return
        except OSError as e:
            error("recorder.spill_unreadable", path=path, error=repr(e))
            return
        items: list[tuple[float, Event] | LatchedSnapshot] = []
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                obj = json.loads(line)
                if "latched" in obj:
                    items.append(LatchedSnapshot(_checked_latched(obj["latched"])))
                    continue
                details = dict(obj["details"])
                details["replayed_from"] = path.name
                event = Event(str(obj["kind"]), str(obj["source"]), time.monotonic(), details)
                items.append(_checked((obj["utc"], event)))
            except (ValueError, KeyError, TypeError) as e:  # a torn last line: say so
                error("recorder.spill_line_unreadable", path=path, error=repr(e))
        self._after_open[:0] = items
        self._replaying = path
        warn("recorder.replaying_spill", path=path, items=len(items))

    def _run(self, opened: threading.Event) -> None:
        self._load_spill()
        try:
            self._store = self._open()
        finally:
            opened.set()
        log("recorder.started", path=self.store_path, capacity=self.capacity)
        try:
            self._loop()
        except Exception as e:  # a bug here must show as a store fault, never pass unseen
            error("recorder.crashed", error=repr(e))
            self._db_error = f"the recorder stopped: {e!r}; events are no longer stored"
            self._set_health()
        finally:
            if self._store is not None:
                self._store.close()

    def _loop(self) -> None:
        pending = self._pending
        marks: list[RecorderMark] = []
        delay = 0.1
        next_try = 0.0
        while True:
            now = time.monotonic()
            wait = max(0.0, next_try - now) if pending else IDLE_CHECK_S
            try:
                item: RecorderItem | None = self.inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            taken = 0
            while item is not None:
                taken += 1
                if isinstance(item, RecorderMark):
                    marks.append(item)
                else:
                    checked = (
                        LatchedSnapshot(_checked_latched(item.latched))
                        if isinstance(item, LatchedSnapshot)
                        else _checked(item)
                    )
                    if isinstance(checked, LatchedSnapshot):
                        self._save_latch(checked.latched)  # at once, whatever the event log
                    pending.append(checked)
                if taken >= 4 * MAX_BATCH:  # store what came, then take more
                    break
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    item = None
            if time.monotonic() >= next_try:
                store = self._usable()
                if store is not None and self._after_open:
                    pending.prepend(list(self._after_open))
                    self._after_open = []
                while store is not None and pending:
                    chunk = pending.head(MAX_BATCH)
                    if not self._store_batch(store, chunk):
                        break
                    pending.pop_head(len(chunk))
                if pending:
                    next_try = time.monotonic() + delay
                    delay = min(delay * 2, self.retry_max_s)
                else:
                    delay, next_try = 0.1, 0.0
            self.dropped = pending.dropped
            self._log_drops()
            self.backlog = len(pending)
            if not pending:
                for mark in marks:
                    mark.done.set()
                    if mark.stop:
                        log("recorder.stopped", path=self.store_path, stored=self.stored)
                        return
                marks.clear()
            elif self._abandon.is_set():
                error("recorder.abandoned", path=self.store_path, unsaved_items=len(pending))
                self._spill(pending.head(len(pending)))
                return
            if not pending and self._replaying is not None:
                # What the last run could not store is in the log now: the spill is done.
                with contextlib.suppress(OSError):
                    self._replaying.unlink()
                self._replaying = None

    def _log_drops(self) -> None:
        """One line a second at most, with the count: a flood must not flood the journal."""
        when, told = self._drops_logged
        now = time.monotonic()
        if self.dropped > told and now - when >= DROP_LOG_EVERY_S:
            error(
                "recorder.backlog_dropped",
                events=self.dropped - told,
                note="droppable events only (gateway.core.kinds)",
            )
            self._drops_logged = (now, self.dropped)
        inbox = self.inbox
        if isinstance(inbox, RecorderInbox):
            when, told = self._inbox_drops_logged
            if inbox.dropped > told and now - when >= DROP_LOG_EVERY_S:
                error(
                    "recorder.inbox_dropped",
                    events=inbox.dropped - told,
                    waiting=inbox.waiting,
                    note="droppable events turned away: the inbox was full",
                )
                self._inbox_drops_logged = (now, inbox.dropped)

    def _store_batch(self, store: EventStore, batch: list[Waiting]) -> bool:
        """One attempt to store ``batch``; False (and the fault reported) if it failed."""
        events: list[tuple[float, Event]] = []
        latched: Mapping[str, Level] | None = None
        for item in batch:
            if isinstance(item, LatchedSnapshot):
                latched = item.latched
            else:
                events.append(item)
        extra: list[tuple[float, Event]] = []
        if self._failing_since is not None:
            down = round(time.monotonic() - self._failing_since, 3)
            details: dict[str, Any] = {"failed_s": down, "error": self.last_error}
            if self.dropped:
                details["events_dropped"] = self.dropped
            extra.append(
                (time.time(), Event("store.recovered", "recorder", time.monotonic(), details))
            )
        loss = self._pending.loss
        if loss.count:
            extra.append(
                (time.time(), Event(EVENTS_LOST, "recorder", time.monotonic(), loss.details()))
            )
        forwarded = self.forwarded()
        state = (
            {FORWARDED_KEY: forwarded}
            if forwarded is not None and forwarded != self._forwarded_saved
            else None
        )
        try:
            seqs = store.record(events + extra, latched, state, forwarded)
        except Exception as e:  # keep the items and their order; the disk may come back
            self._db_failed(_describe(self.store_path, e))
            error("recorder.write_failed", error=e, waiting=len(batch))
            if _is_corrupt(e):
                # Corrupt while running: the same check, move-aside and new log as at start,
                # on the next attempt, instead of retrying a broken file for ever.
                store.close()
                self._store = None
            return False
        if state is not None:
            self._forwarded_saved = forwarded
        if loss.count:
            error("recorder.events_lost", **{k: v for k, v in loss.details().items()})
            self._pending.loss = type(loss)()
        if self._failing_since is not None:
            log("recorder.recovered", path=self.store_path)
            self._failing_since = None
            self._pending.dropped = self.dropped = 0
            self._drops_logged = (0.0, 0)
            self._db_error = None
            self._set_health()
        if self._latch_error is not None and self.latch_file is not None:
            self._save_latch(self._last_latched)  # the card is back: the latch file too
        self.stored += len(seqs)
        if seqs:
            self._high_seq = max(self._high_seq, seqs[-1])
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


def _is_corrupt(e: BaseException) -> bool:
    """A file that is damaged or not a database at all, as opposed to one we cannot reach or
    write now (disk full, read-only, locked, missing directory)."""
    text = str(e).lower()
    return any(
        marker in text for marker in ("not a database", "malformed", "corrupt", "quick_check")
    ) and not any(marker in text for marker in ("disk is full", "readonly", "read-only"))


def _describe(path: Path, e: BaseException) -> str:
    """The fault as a technician should read it: a full disk is called a full disk (SQLite may
    only say "disk I/O error" when it cannot create its -wal or -shm), a read-only store a
    read-only store."""
    text = str(e)
    lower = text.lower()
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = "disk is full" in lower or (isinstance(e, OSError) and e.errno == errno.ENOSPC)
    if full or (free is not None and free < FULL_BELOW_BYTES and "i/o error" in lower):
        return f"disk full: {path.parent} has {free} bytes free: {text}"
    if "readonly" in lower or "read-only" in lower or _not_writable(path):
        return (
            f"event log {path} is read-only: check the owner and mode of the file, its -wal and "
            f"-shm, its directory and the filesystem: {text}"
        )
    return text


def _not_writable(path: Path) -> bool:
    """The log, its directory or its filesystem refuse writes (checked only to name a fault)."""
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return True
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return True
        return any(
            Path(f"{path}{suffix}").exists() and not os.access(f"{path}{suffix}", os.W_OK)
            for suffix in ("", "-wal", "-shm")
        )
    except OSError:
        return False


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
