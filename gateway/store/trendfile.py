"""The detectors' hourly trend on the SD card: one small fixed-size file per detector,
``<data_dir>/trend/<detector>.bin``, written once an hour.

Layout: a 16-byte header (``GGTR``, version 1, the newest hour written as hours since the epoch)
and ``HOURS_KEPT`` slots of 3 bytes (min, mean, max), slot ``hour % HOURS_KEPT``. Each byte is
(%LEL + 10) x 2: half-%LEL steps from -10 to 117 %LEL (clamped); 255 means no data. A slot
holds hour h only if ``newest - HOURS_KEPT < h <= newest``; hours skipped since the last write
are blanked when the next one is written, so a slot never passes an old hour off as a new one.

Why so: 6.5 kB per detector for 90 days, written in place with one ``pwrite`` and one
``fdatasync`` per hour (a few bytes and at most two 4 KiB blocks an hour per detector: nothing
for an SD card). A torn write loses at most that hour. Nothing here is on the path to a valve.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from gateway.trend import HOURS_KEPT, Hour

MAGIC = b"GGTR"
VERSION = 1
HEADER = struct.Struct("<4sHxxQ")  # magic, version, newest hour
SLOT = 3
NO_DATA = 255
SIZE = HEADER.size + HOURS_KEPT * SLOT


class TrendFileError(Exception):
    """A trend file that cannot be used; the message names it."""


def trend_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "trend"


def trend_path(data_dir: Path, detector: str) -> Path:
    return trend_dir(data_dir) / f"{detector}.bin"


def _byte(lel: float) -> int:
    return max(0, min(254, round((lel + 10.0) * 2)))


def _lel(b: int) -> float:
    return b / 2 - 10.0


def write_hour(path: Path, hour: Hour) -> None:
    """Store one finished hour (and blank the hours skipped since the newest one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        newest = _newest(fd, path)
        if newest is None:
            os.pwrite(
                fd, HEADER.pack(MAGIC, VERSION, 0) + bytes([NO_DATA]) * (SIZE - HEADER.size), 0
            )
            newest = hour.index - 1
        if hour.index <= newest - HOURS_KEPT:
            return  # older than anything kept
        for skipped in range(max(newest + 1, hour.index - HOURS_KEPT + 1), hour.index):
            os.pwrite(fd, bytes([NO_DATA]) * SLOT, _offset(skipped))
        os.pwrite(
            fd, bytes([_byte(hour.low), _byte(hour.mean), _byte(hour.high)]), _offset(hour.index)
        )
        if hour.index > newest:
            os.pwrite(fd, HEADER.pack(MAGIC, VERSION, hour.index), 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def read_hours(path: Path) -> list[Hour]:
    """Every stored hour, oldest first; [] when there is no file yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TrendFileError(f"trend file {path}: cannot read: {e}") from e
    newest = _parse_header(data, path)
    out = []
    for index in range(newest - HOURS_KEPT + 1, newest + 1):
        at = _offset(index)
        low, mean, high = data[at], data[at + 1], data[at + 2]
        if NO_DATA not in (low, mean, high):
            out.append(Hour(index, _lel(low), _lel(mean), _lel(high)))
    return out


def _offset(hour: int) -> int:
    return HEADER.size + (hour % HOURS_KEPT) * SLOT


def _newest(fd: int, path: Path) -> int | None:
    """The newest hour stored; None for a new file, or one that is not a trend file of this
    version (it is started afresh: a trend is worth less than a working writer)."""
    data = os.pread(fd, SIZE + 1, 0)
    try:
        return _parse_header(data, path)
    except TrendFileError:
        os.ftruncate(fd, 0)
        return None


def _parse_header(data: bytes, path: Path) -> int:
    if len(data) != SIZE:
        raise TrendFileError(f"trend file {path}: {len(data)} bytes, expected {SIZE}")
    magic, version, newest = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise TrendFileError(f"trend file {path}: not a version {VERSION} gasguard trend file")
    return int(newest)
