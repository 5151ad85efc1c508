"""What a channel gets from the controller: who the site is, a read-only status snapshot, and a
way to record its own events. Nothing else: no valve, no configuration, no safety inbox, so no
down-link message can reach anything that could open the gas (down-link safety)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.model import Event


@dataclass(frozen=True)
class UplinkContext:
    """Read-only view of the site for one uplink channel.

    ``status()`` returns the controller's status dict (the same document as ``gasguard status
    --json``); it may raise (controller not started yet): channels catch that and skip the
    status publication. ``record(event)`` queues an uplink event (``uplink.down``, ``uplink.up``,
    ``uplink.duty_check``, ``sms.sent`` ...) through the recorder's queue: it never blocks and
    never touches the safety thread.
    """

    site_id: str
    site_name: str
    site_address: str
    status: Callable[[], dict[str, Any]]
    record: Callable[[Event], None]
