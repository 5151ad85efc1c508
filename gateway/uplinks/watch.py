"""Wake the uplinks process the moment the safety process writes its event log, without the
safety process knowing or waiting: Linux inotify on the data directory (``IN_MODIFY``,
``IN_CREATE``, ``IN_MOVED_TO`` of ``events.db`` and its ``-wal``).

It only shortens the wait: the follower still looks every ``FOLLOW_S`` without a wake-up, so a
missed or unavailable notification (another OS, a watch limit) costs latency, never an event.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
from pathlib import Path

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name, NUL-padded)


class DirectoryWatch:
    """Waits for a change to a file in ``directory`` whose name starts with ``prefix``."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = Path(directory)
        self.prefix = prefix.encode()
        self._fd: int | None = None
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            return
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
            if fd < 0:
                return
            mask = IN_MODIFY | IN_CREATE | IN_MOVED_TO
            wd = int(libc.inotify_add_watch(fd, os.fsencode(self.directory), mask))
            if wd < 0:
                os.close(fd)
                return
        except (OSError, AttributeError):
            return
        self._fd = fd

    @property
    def available(self) -> bool:
        return self._fd is not None

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s``; True when a matching file changed (events drained)."""
        fd = self._fd
        if fd is None:
            return False
        try:
            ready, _, _ = select.select([fd], [], [], timeout_s)
        except (OSError, ValueError):
            return False
        if not ready:
            return False
        matched = False
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                data = os.read(fd, 4096)
                if not data:
                    break
                offset = 0
                while offset + _EVENT.size <= len(data):
                    _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                    name = data[offset + _EVENT.size : offset + _EVENT.size + length]
                    if name.rstrip(b"\0").startswith(self.prefix):
                        matched = True
                    offset += _EVENT.size + length
        return matched

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
