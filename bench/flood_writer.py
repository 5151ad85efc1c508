"""``python -m bench.flood_writer DB PER_S``: append ``PER_S`` events a second (10 ms batches) to
the event log at DB from this separate process, until SIGTERM.

The flooded-reaction benchmark uses it to load the uplinks (the uplinks process, the broker and
the centres forward every one of these events) without adding work to the safety process: only
the event log file is shared, as on a site.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

from gateway.core.model import Event
from gateway.store.events import EventStore, EventStoreError

BATCH_S = 0.01


def main(argv: list[str]) -> int:
    db, per_s = argv[0], int(argv[1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    batch = max(1, round(per_s * BATCH_S))
    with EventStore(Path(db), 100_000, busy_timeout_s=0.5) as store:
        print("flooding", flush=True)
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.time()
            items = [
                (now, Event("operator.silence", "site", time.monotonic(), {"operator": "bench"}))
                for _ in range(batch)
            ]
            # The recorder may hold the write lock past the busy timeout: then the next batch.
            with contextlib.suppress(EventStoreError):
                store.append_many(items)
            next_at += BATCH_S
            stop.wait(max(0.0, next_at - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
