"""Who may not use the control socket: the uplinks process's system user.

The uplinks process speaks to the network; if it was ever taken over, it must not be able to
ask for a reset, a valve test or a reload. It has its own socket (status, its own events, its
state) and the control socket refuses its user by peer credentials.
"""

from __future__ import annotations

import os
import pwd

from gateway.paths import UPLINK_USER


def uplink_uids() -> tuple[int, ...]:
    """The uplink user's uid where that user exists and is not the user of this process (a
    development machine runs both processes as one user: nothing to refuse there)."""
    try:
        uid = pwd.getpwnam(UPLINK_USER).pw_uid
    except KeyError:
        return ()
    return () if uid == os.getuid() else (uid,)
