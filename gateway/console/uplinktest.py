"""``test uplink``: one test event end to end to every uplink channel, with its acknowledgement.

The console records a ``console.uplink_test`` event through the controller (so it takes the
path every alarm takes: event log, then the durable outbox, then each channel), finds its
number in the event log, then watches the outbox (``outbox.db`` in the data directory, read
only) until each channel's receiver has acknowledged it, or ``ACK_WAIT_S`` passes (GB/T
26875.3: 10 s confirm timeout, 3 retries).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.api.control import ControlError

if TYPE_CHECKING:
    from gateway.console.commands import Console

OUTBOX_FILE = "outbox.db"  # gateway.uplinks.outbox.OUTBOX_DB
ACK_WAIT_S = 35.0
FIND_WAIT_S = 5.0


def _outbox_state(path: Path, seq: int) -> tuple[list[str], int, set[str]]:
    """(channels, high-water mark, channels still waiting for ``seq``), read only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'channels'").fetchone()
        channels = [str(c) for c in json.loads(row[0])] if row else []
        row = conn.execute("SELECT value FROM meta WHERE key = 'high_water'").fetchone()
        high = int(row[0]) if row else 0
        waiting = {
            str(r[0]) for r in conn.execute("SELECT channel FROM pending WHERE seq = ?", (seq,))
        }
    finally:
        conn.close()
    return channels, high, waiting


def run_uplink_test(c: Console, *, ack_wait_s: float = ACK_WAIT_S) -> list[str]:
    """Run the test; the lines to show."""
    path = c.data_dir / OUTBOX_FILE
    if not path.exists():
        return [f"no uplink runs on this controller ({path} does not exist): nothing to test"]
    try:
        channels, _, _ = _outbox_state(path, -1)
    except (sqlite3.Error, ValueError) as e:
        return [f"cannot read the uplink outbox {path}: {e}"]
    if not channels:
        return ["no uplink channel is configured"]
    test_id = secrets.token_hex(6)
    c.record("console.uplink_test", "console", {"test_id": test_id, "channels": channels})
    sent = time.monotonic()
    seq = None
    while time.monotonic() - sent < FIND_WAIT_S and seq is None:
        try:
            events = c.link.call("events", limit=50).get("events") or []
        except ControlError as e:
            return [f"the controller did not answer ({e}); the test event waits in the console"]
        for event in events:
            details = event.get("details") or {}
            if event.get("kind") == "console.uplink_test" and details.get("test_id") == test_id:
                seq = int(event["seq"])
        if seq is None:
            time.sleep(0.1)
    if seq is None:
        return [f"the test event did not reach the event log within {FIND_WAIT_S:g} s"]
    c.io.write(
        f"test event #{seq} stored; waiting up to {ack_wait_s:g} s for "
        f"{', '.join(channels)} to acknowledge ...\n"
    )
    acked: dict[str, float] = {}
    while time.monotonic() - sent < ack_wait_s:
        try:
            _, high, waiting = _outbox_state(path, seq)
        except sqlite3.Error:
            time.sleep(0.2)
            continue
        if high >= seq:
            for ch in channels:
                if ch not in waiting and ch not in acked:
                    acked[ch] = time.monotonic() - sent
        if len(acked) == len(channels):
            break
        time.sleep(0.2)
    lines = []
    for ch in channels:
        if ch in acked:
            lines.append(f"  {ch}: acknowledged by the receiver after {acked[ch]:.1f} s")
        else:
            lines.append(f"  {ch}: NO acknowledgement within {ack_wait_s:g} s")
    c.record(
        "console.uplink_tested",
        "console",
        {
            "test_id": test_id,
            "seq": seq,
            "acked": {k: round(v, 2) for k, v in acked.items()},
            "missing": [ch for ch in channels if ch not in acked],
        },
    )
    return lines
