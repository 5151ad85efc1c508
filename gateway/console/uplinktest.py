"""``test uplink``: one test event end to end to every uplink channel, with its acknowledgement.

The console records a ``console.uplink_test`` event through the controller (so it takes the
path every alarm takes: event log, then the durable outbox, then each channel), finds its
number in the event log, then watches the uplinks process's outbox (read only, through
``outbox.read_state``) until each channel's receiver has acknowledged it, or ``ACK_WAIT_S``
passes (GB/T 26875.3: 10 s confirm timeout, 3 retries).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from gateway.api.control import ControlError
from gateway.paths import outbox_db
from gateway.uplinks.outbox import OutboxError, read_state

if TYPE_CHECKING:
    from gateway.console.commands import Console

ACK_WAIT_S = 35.0
FIND_WAIT_S = 5.0


def run_uplink_test(c: Console, *, ack_wait_s: float = ACK_WAIT_S) -> list[str]:
    """Run the test; the lines to show."""
    path = outbox_db(c.data_dir)
    if not path.exists():
        return [f"no uplink runs on this controller ({path} does not exist): nothing to test"]
    try:
        channels = read_state(path, -1).channels
    except OutboxError as e:
        return [f"cannot read the uplink outbox: {e}"]
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
            state = read_state(path, seq)
            high, waiting = state.high_water, state.waiting
        except OutboxError:
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
