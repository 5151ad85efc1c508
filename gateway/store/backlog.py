"""What waits for the event log, bounded by class: the recorder's inbox and its backlog.

Two places hold events on their way to the SD card, and both are bounded and counted:

* ``RecorderInbox``: the queue every thread puts into (the safety thread first). ``put`` never
  blocks and takes no lock (a ``queue.SimpleQueue`` underneath); it counts what waits with a
  ``deque`` of tokens (appends and pops are atomic). Beyond ``INBOX_MAX_ITEMS`` waiting, an
  event that may be dropped (``gateway.core.kinds.may_drop``) is dropped and counted at once;
  the others always go in (their producers are bounded: the core by the physics of a kitchen,
  the sockets by their rate limits).
* ``Backlog``: what the recorder has taken from the inbox and not yet stored (a failing or
  slow card). Two deques in arrival order: droppable events (bounded by ``MAX_DROPPABLE_BYTES``,
  the oldest dropped first, O(1)), and the never-dropped ones (bounded by ``MAX_KEPT_BYTES``:
  when even that is reached, the oldest and the newest are kept and the ones just after the
  oldest are given up, each loss counted by kind and time and recorded as ``events.lost``
  once the log can be written). Sizes are estimates of an event's encoded size.

The memory budget these add up to is stated in docs/safety.md.
"""

from __future__ import annotations

import itertools
import queue
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.core.kinds import may_drop
from gateway.core.model import Event

INBOX_MAX_ITEMS = 2_000  # waiting in the inbox before droppable events are turned away
MAX_DROPPABLE_BYTES = 8 * 1024 * 1024  # droppable events held while the card fails
MAX_KEPT_BYTES = 24 * 1024 * 1024  # never-dropped events held while the card fails
EVENT_OVERHEAD_BYTES = 160  # what an event costs beyond its details' text (estimate)

T = TypeVar("T")


def event_size(event: Event) -> int:
    """An estimate of what holding ``event`` costs: its texts and a fixed overhead."""
    return EVENT_OVERHEAD_BYTES + len(event.kind) + len(event.source) + len(repr(event.details))


class RecorderInbox(queue.SimpleQueue[T]):
    """The recorder's queue: ``put`` never blocks and takes no lock; what waits is counted and
    droppable events are turned away beyond ``max_items``. ``get`` by the recorder only."""

    def __init__(
        self, droppable: Callable[[T], bool], max_items: int = INBOX_MAX_ITEMS
    ) -> None:
        super().__init__()
        self._droppable = droppable
        self.max_items = max_items
        self._tokens: deque[None] = deque()
        self._drops = itertools.count(1)
        self.dropped = 0  # turned away since start

    @property
    def waiting(self) -> int:
        return len(self._tokens)

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        if len(self._tokens) >= self.max_items and self._droppable(item):
            self.dropped = next(self._drops)
            return
        self._tokens.append(None)
        super().put(item, block, timeout)

    def put_nowait(self, item: T) -> None:
        self.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        item = super().get(block, timeout)
        if self._tokens:
            self._tokens.pop()
        return item

    def get_nowait(self) -> T:
        return self.get(False)


@dataclass(slots=True)
class Loss:
    """Never-dropped events given up because the memory budget was reached."""

    count: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    first_utc: float | None = None
    last_utc: float | None = None

    def add(self, utc: float, kind: str) -> None:
        self.count += 1
        self.kinds[kind] += 1
        self.first_utc = utc if self.first_utc is None else min(self.first_utc, utc)
        self.last_utc = utc if self.last_utc is None else max(self.last_utc, utc)

    def details(self) -> dict[str, object]:
        return {
            "count": self.count,
            "kinds": dict(self.kinds.most_common(20)),
            "first_utc": self.first_utc,
            "last_utc": self.last_utc,
            "reason": "the recorder's memory budget was reached while the event log could "
            "not be written: the oldest and the newest alarms were kept",
        }


class Backlog(Generic[T]):
    """Items in arrival order, bounded by class (see the module docstring). ``utc_kind(item)``
    gives (utc, kind) of an event, or None for an item that is not one (latched state)."""

    def __init__(
        self,
        utc_kind: Callable[[T], tuple[float, Event] | None],
        max_droppable_bytes: int = MAX_DROPPABLE_BYTES,
        max_kept_bytes: int = MAX_KEPT_BYTES,
    ) -> None:
        self._event_of = utc_kind
        self.max_droppable_bytes = max_droppable_bytes
        self.max_kept_bytes = max_kept_bytes
        self._order = itertools.count()
        self._kept: deque[tuple[int, T, int]] = deque()
        self._droppable: deque[tuple[int, T, int]] = deque()
        self.kept_bytes = 0
        self.droppable_bytes = 0
        self.dropped = 0  # droppable events dropped (cleared by the recorder when reported)
        self.loss = Loss()  # never-dropped events lost (cleared once recorded)

    def __len__(self) -> int:
        return len(self._kept) + len(self._droppable)

    def __bool__(self) -> bool:
        return bool(self._kept) or bool(self._droppable)

    def append(self, item: T) -> None:
        found = self._event_of(item)
        size = EVENT_OVERHEAD_BYTES if found is None else event_size(found[1])
        entry = (next(self._order), item, size)
        if found is not None and may_drop(found[1].kind):
            self._droppable.append(entry)
            self.droppable_bytes += size
            while self.droppable_bytes > self.max_droppable_bytes and len(self._droppable) > 1:
                _, _, gone = self._droppable.popleft()
                self.droppable_bytes -= gone
                self.dropped += 1
            return
        self._kept.append(entry)
        self.kept_bytes += size
        while self.kept_bytes > self.max_kept_bytes and len(self._kept) > 2:
            # Keep the oldest (the first alarm of the outage) and the newest; give up the one
            # after the oldest: O(1) near the left end of a deque.
            _, lost, gone = self._kept[1]
            del self._kept[1]
            self.kept_bytes -= gone
            event = self._event_of(lost)
            if event is not None:
                self.loss.add(event[0], event[1].kind)

    def prepend(self, items: list[T]) -> None:
        """Put ``items`` before everything waiting (what must be stored first)."""
        waiting = self.head(len(self))
        self._kept.clear()
        self._droppable.clear()
        self.kept_bytes = self.droppable_bytes = 0
        for item in [*items, *waiting]:
            self.append(item)

    def head(self, n: int) -> list[T]:
        """The first ``n`` items in arrival order (not removed)."""
        out: list[T] = []
        kept, drop = iter(self._kept), iter(self._droppable)
        a, b = next(kept, None), next(drop, None)
        while len(out) < n and (a is not None or b is not None):
            if b is None or (a is not None and a[0] < b[0]):
                assert a is not None
                out.append(a[1])
                a = next(kept, None)
            else:
                out.append(b[1])
                b = next(drop, None)
        return out

    def pop_head(self, n: int) -> None:
        """Remove the first ``n`` items in arrival order (after they were stored)."""
        for _ in range(n):
            if self._kept and (not self._droppable or self._kept[0][0] < self._droppable[0][0]):
                _, _, size = self._kept.popleft()
                self.kept_bytes -= size
            elif self._droppable:
                _, _, size = self._droppable.popleft()
                self.droppable_bytes -= size
