"""Opening a file that must be a regular file of bounded size, without ever blocking on it.

A FIFO, a device or a directory where a config or state file belongs would hang a plain
``open`` (a FIFO with no writer) or feed it endless bytes (``/dev/zero``). Opened with
``O_NONBLOCK`` and checked with ``fstat`` before anything is read or written, such a thing is a
clear error instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotARegularFile(OSError):
    """The path is a FIFO, device, directory or socket."""


class FileTooLarge(OSError):
    """The file is larger than allowed."""


def open_regular(path: Path, flags: int, max_bytes: int, mode: int = 0o640) -> int:
    """A file descriptor of ``path`` opened with ``flags`` (plus O_NONBLOCK and O_CLOEXEC),
    checked to be a regular file (else NotARegularFile) of at most ``max_bytes`` (else
    FileTooLarge); OSError when it cannot be opened."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path} is not a regular file (a FIFO, device or directory)")
        if st.st_size > max_bytes:
            raise FileTooLarge(f"{path} is {st.st_size} bytes: at most {max_bytes} expected")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The whole of ``path`` (see ``open_regular``), reading at most ``max_bytes``."""
    fd = open_regular(path, os.O_RDONLY, max_bytes)
    try:
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # it grew while we read it
                raise FileTooLarge(f"{path} is more than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
