"""Who may use which local socket, by peer credentials (SO_PEERCRED).

The control socket refuses the uplinks process's system user; the uplink socket serves only
that user and root (on a development machine, where no such user exists and both processes run
as one user, that user).

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


def uplink_socket_uids() -> frozenset[int]:
    """Who may use the uplink socket at all: root and the uplinks' user (where it does not
    exist, this process's own user: a development machine runs both processes as one user).
    The console's user (the service's own) and every other account are refused: what they
    could record there is forwarded upstream as the controller's own word."""
    try:
        uid = pwd.getpwnam(UPLINK_USER).pw_uid
    except KeyError:
        uid = os.getuid()
    return frozenset({0, uid})
