"""The uplinks process (``gasguard-uplinks``): forwards the event log to the centres.

It runs beside the safety process and never inside it, so that a bug, a hang, a memory leak or
a flood in network code cannot reach the code that closes the gas (IEC 61508 "freedom from
interference"). What it does:

1. reads the safety process's event log (SQLite WAL, opened read-only) and takes every new
   event into its own durable outbox (``uplinks/outbox.db`` in the data directory): at start
   from where the outbox stopped (``catch_up``), then following new events: woken by inotify
   the moment the log is written, and looking every ``FOLLOW_S`` where inotify is missing;
2. runs the channels (MQTT, GB/T 26875.3, SMS), each draining the outbox in its own order and
   acknowledging an event only when its receiver confirmed it;
3. talks to the safety process only through the uplink socket (``SafetyLink``): status, its own
   events, its state.

The safety process never waits on it. Killed, frozen or restarted, it catches up from the event
log with nothing lost and nothing reordered per channel; receivers de-duplicate by event id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.core.model import Event
from gateway.log import error, log, warn
from gateway.paths import events_db, outbox_db, uplink_socket
from gateway.store.events import EventReader, EventStore, EventStoreError
from gateway.uplinks.config import UplinkConfig
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.link import SafetyLink
from gateway.uplinks.manager import Uplinks
from gateway.uplinks.outbox import Outbox, OutboxError, missing_seqs
from gateway.uplinks.watch import DirectoryWatch

FOLLOW_S = 0.02  # how often the event log is checked for new events without a wake-up
WATCHED_FOLLOW_S = 0.5  # the same while inotify wakes the follower on every write
# A wake-up comes with the log's first write, before its commit is visible (the writer still
# fsyncs, then publishes the commit): look every SETTLE_POLL_S for SETTLE_S after a wake-up.
SETTLE_S = 0.25
SETTLE_POLL_S = 0.0005
FOLLOW_PAGE = 1000
REPORT_S = 2.0  # the channels' state goes to the safety process at least this often
REPORT_CHECK_S = 0.25  # and within this of a change
REOPEN_S = 1.0  # retry opening a missing or broken event log


class EventFollower(threading.Thread):
    """Moves new events from the event log (read-only) into the outbox, in order."""

    def __init__(
        self,
        events_path: Path,
        outbox: Outbox,
        poll_s: float = FOLLOW_S,
        on_gap: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(name="event-follower", daemon=True)
        self.events_path = events_path
        self.outbox = outbox
        self.on_gap = on_gap or (lambda first, last: None)
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.last_error: str | None = None
        # Woken by the kernel the moment the safety process writes the log (inotify); the
        # safety process neither knows nor waits. Without it, polling every poll_s.
        self.watch = DirectoryWatch(events_path.parent, events_path.name)
        if self.watch.available:
            self.poll_s = max(poll_s, WATCHED_FOLLOW_S)

    def run(self) -> None:
        reader: EventReader | None = None
        settle_until = 0.0
        try:
            while not self.stopping.is_set():
                if reader is None:
                    try:
                        reader = EventStore.open_readonly(self.events_path)
                    except EventStoreError as e:
                        self._failed(e)
                        self.stopping.wait(REOPEN_S)
                        continue
                try:
                    moved = self.step(reader)
                except (EventStoreError, OutboxError) as e:
                    self._failed(e)
                    with contextlib.suppress(Exception):
                        reader.close()
                    reader = None
                    self.stopping.wait(REOPEN_S)
                    continue
                if moved >= FOLLOW_PAGE:
                    continue
                now = time.monotonic()
                if moved:
                    settle_until = now + SETTLE_S  # more may be on its way
                if now < settle_until:
                    self.stopping.wait(SETTLE_POLL_S)
                elif self._wait():
                    settle_until = time.monotonic() + SETTLE_S
        finally:
            if reader is not None:
                with contextlib.suppress(Exception):
                    reader.close()
            self.watch.close()

    def _wait(self) -> bool:
        """Wait for a write to the log (or ``poll_s``); True when woken by one."""
        if self.watch.available:
            return self.watch.wait(self.poll_s)
        self.stopping.wait(self.poll_s)
        return False

    def step(self, reader: EventReader) -> int:
        """One look at the event log; how many events were taken in. A hole in the numbers
        (events rotated out or lost before they reached the outbox) is reported."""
        high = self.outbox.high_water
        page = reader.since(high, FOLLOW_PAGE)
        if page:
            self.outbox.add_many(page)
            for first, last in missing_seqs(high, [e.seq for e in page]):
                self.on_gap(first, last)
        self.last_error = None
        return len(page)

    def _failed(self, e: Exception) -> None:
        text = str(e)
        if text != self.last_error:
            error("uplinks.follow_failed", path=self.events_path, error=text[:300])
        self.last_error = text


class UplinkService:
    """The uplinks of one site in their own process (or a test's thread)."""

    def __init__(
        self,
        config: Config,
        uplink_cfg: UplinkConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        follow_s: float = FOLLOW_S,
    ) -> None:
        self.config = config
        self.uplink_cfg = uplink_cfg
        self.clock = clock
        self.follow_s = follow_s
        self.link = SafetyLink(uplink_socket(config.control_socket), clock=clock)
        self.uplinks: Uplinks | None = None
        self.follower: EventFollower | None = None
        self._stopping = threading.Event()
        self._reporter: threading.Thread | None = None

    @property
    def outbox(self) -> Outbox | None:
        return None if self.uplinks is None else self.uplinks.outbox

    def start(self) -> None:
        cfg = self.config
        _move_old_outbox(cfg.data_dir)
        self.uplinks = Uplinks(self.uplink_cfg, cfg.data_dir, cfg.site.id)
        outbox = self.uplinks.outbox
        self.link.start()
        if outbox is None:
            warn("uplinks.nothing_to_do", reason="no channel configured or the outbox failed")
            return
        self.uplinks.catch_up(events_db(cfg.data_dir))
        for first, last in outbox.gaps_found:
            self._gap(first, last)
        self.follower = EventFollower(
            events_db(cfg.data_dir), outbox, self.follow_s, on_gap=self._gap
        )
        self.follower.start()
        self.uplinks.start(
            UplinkContext(
                cfg.site.id, cfg.site.name, cfg.site.address, self.link.status, self.link.record
            ),
            self.clock,
        )
        self._stopping.clear()
        self._reporter = threading.Thread(target=self._report_loop, name="report", daemon=True)
        self._reporter.start()
        log("uplinks.started", site=cfg.site.id, channels=",".join(self.uplink_cfg.channels()))

    def _gap(self, first: int, last: int) -> None:
        """Events first..last never reached the outbox: say so, upstream too."""
        error("uplinks.events_missing", first_seq=first, last_seq=last)
        self.link.record(
            Event(
                "uplink.events_missing",
                "outbox",
                self.clock(),
                {"first_seq": first, "last_seq": last, "count": last - first + 1},
            )
        )

    def stop(self) -> None:
        self._stopping.set()
        if self.follower is not None:
            self.follower.stopping.set()
            self.follower.join(5.0)
        if self.uplinks is not None:
            self.uplinks.stop()
        self.link.stop()
        if self._reporter is not None:
            self._reporter.join(5.0)
        if self.uplinks is not None:
            self.uplinks.close()

    def state(self) -> dict[str, Any]:
        return {} if self.uplinks is None else self.uplinks.state()

    def _report_loop(self) -> None:
        last: dict[str, Any] | None = None
        last_at = 0.0
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):
                outbox = None if self.uplinks is None else self.uplinks.check_outbox()
                channels = self.state()
                delivery = None if self.uplinks is None else self.uplinks.check_delivery(channels)
                box = self.outbox
                forwarded = None if box is None else box.high_water
                state = {
                    "channels": channels,
                    "outbox": outbox,
                    "delivery": delivery,
                    "forwarded": forwarded,
                }
                now = self.clock()
                if state != last or now - last_at >= REPORT_S:
                    self.link.report(channels, outbox, delivery, forwarded)
                    last, last_at = state, now
            self._stopping.wait(REPORT_CHECK_S)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. A config change needs a restart of this process only."""
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
        signal.signal(signal.SIGINT, lambda signum, frame: done.set())
        signal.signal(
            signal.SIGHUP,
            lambda signum, frame: warn(
                "uplinks.reload_ignored", note="restart gasguard-uplinks to apply [uplink] changes"
            ),
        )
        self.start()
        done.wait()
        self.stop()
        return 0


def _move_old_outbox(data_dir: Path) -> None:
    """Before the split the outbox lay beside the event log: take it over where we may."""
    old = Path(data_dir) / "outbox.db"
    new = outbox_db(data_dir)
    if not old.exists() or new.exists():
        return
    try:
        new.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{old}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{new}{suffix}"))
        log("uplinks.outbox_moved", old=old, new=new)
    except OSError as e:
        # Not fatal: the new outbox catches up from the event log (24 h window).
        warn("uplinks.outbox_not_moved", old=old, new=new, error=e)
