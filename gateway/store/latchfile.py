"""The latched alarms in a small file of their own, so that they survive whatever happens to the
event log: a full disk, a corrupt or deleted database, a crash while either was failing.

``latched.state`` (beside the event log) is created once at its full size (``SIZE`` bytes, two
slots) and afterwards only overwritten in place: an overwrite of blocks the file already owns
needs no free space, so it still works on a full SD card. Each write goes to the older slot with
a higher generation number and a CRC, then ``fdatasync``; a write torn by a power cut leaves the
other slot intact. ``load`` takes the valid slot with the highest generation.

The slot is written with ``O_DIRECT`` in whole 512-byte sectors (``SECTOR``): a buffered write
would make the kernel write a whole 4 KiB page to the card for a record of a few dozen bytes, at
every latch change. A filesystem or device that refuses such a write (tmpfs, 4 KiB sectors) gets
the same record through the page cache instead: same durability, more bytes.

At start the controller restores the union of what this file and the event log say (for each
detector the higher level): a latch is never lost because one of the two stores was behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

from gateway.core.model import Level
from gateway.regularfile import open_regular, read_regular

LATCH_FILE = "latched.state"
SLOT = 2048  # bytes per slot: a kitchen's latched detectors fit many times over
SIZE = 2 * SLOT
SECTOR = 512  # the unit of a direct write: a slot is written in whole sectors
_HEADER = struct.Struct("<4sQII")  # magic, generation, payload length, CRC-32 of the payload
MAGIC = b"GGL1"


class LatchFileError(Exception):
    """The latch file cannot be written (its message names the file and the error)."""


def latch_path(data_dir: Path) -> Path:
    return Path(data_dir) / LATCH_FILE


class LatchFile:
    """Reads and writes ``latched.state``. Not thread-safe: the recorder thread owns it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._generation = 0
        self._last: dict[str, Level] | None = None
        self._direct = hasattr(os, "O_DIRECT")  # until a direct write is refused here
        self.problem: str | None = None  # why the file could not be read at all (None: fine)

    def load(self) -> dict[str, Level]:
        """The latched levels of the newest valid slot ({} when there is no usable file). A
        level that cannot be read is taken as HIGH (fail safe: the reset must wait for it).
        A FIFO, device or oversized file is never read (nor waited on): ``problem`` says so,
        the recorder reports it as a store fault, and the latches come from the event log."""
        try:
            data = read_regular(self.path, SIZE)
        except FileNotFoundError:
            return {}
        except OSError as e:
            self.problem = f"latch file {self.path}: {e}"
            return {}
        best: tuple[int, dict[str, Level]] | None = None
        for start in (0, SLOT):
            slot = data[start : start + SLOT]
            if len(slot) < _HEADER.size:
                continue
            magic, generation, length, crc = _HEADER.unpack_from(slot)
            payload = slot[_HEADER.size : _HEADER.size + length]
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                continue
            try:
                raw = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(raw, dict):
                continue
            levels: dict[str, Level] = {}
            for name, value in raw.items():
                try:
                    levels[str(name)] = Level(value)
                except (ValueError, TypeError):
                    levels[str(name)] = Level.HIGH
            if best is None or generation > best[0]:
                best = (generation, levels)
        if best is None:
            return {}
        self._generation = best[0]
        return {k: v for k, v in best[1].items() if v > Level.NORMAL}

    def save(self, latched: Mapping[str, Level]) -> None:
        """Write ``latched`` durably (fdatasync) into the older slot. LatchFileError on failure."""
        wanted = {str(k): int(v) for k, v in latched.items() if Level(v) > Level.NORMAL}
        payload = json.dumps(wanted, sort_keys=True, separators=(",", ":")).encode()
        if _HEADER.size + len(payload) > SLOT:
            # About 80 latched detectors; the event log still has them all.
            raise LatchFileError(f"latch file {self.path}: {len(wanted)} latches do not fit")
        generation = self._generation + 1
        record = _HEADER.pack(MAGIC, generation, len(payload), zlib.crc32(payload)) + payload
        # Whole sectors only: the rest of the slot keeps stale bytes that the length and CRC
        # already exclude.
        record += b"\0" * (-len(record) % SECTOR)
        offset = SLOT * (generation % 2)
        self._ensure_size()
        try:
            if not (self._direct and self._write_direct(record, offset)):
                self._write_buffered(record, offset)
        except OSError as e:
            raise LatchFileError(f"latch file {self.path}: cannot write: {e}") from e
        self._generation = generation
        self._last = dict(latched)

    def _ensure_size(self) -> None:
        """Create the file at full size if it is not (once; later writes only overwrite)."""
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, SIZE)
        except OSError as e:
            raise LatchFileError(f"latch file {self.path}: cannot open: {e}") from e
        try:
            if os.fstat(fd).st_size < SIZE:
                os.posix_fallocate(fd, 0, SIZE)
                os.fsync(fd)
        except OSError as e:
            raise LatchFileError(f"latch file {self.path}: cannot allocate: {e}") from e
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write_direct(self, record: bytes, offset: int) -> bool:
        """Write ``record`` (whole sectors) at ``offset`` bypassing the page cache, then
        ``fdatasync``. False (and direct writes given up for this file) when the filesystem or
        device refuses direct I/O; OSError for a real write error."""
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_DIRECT, SIZE)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct = False
            return False
        # An anonymous map is page-aligned, as O_DIRECT requires of the buffer.
        with mmap.mmap(-1, len(record)) as buf:
            buf.write(record)
            try:
                written = os.pwrite(fd, buf, offset)
                if written != len(record):
                    raise OSError(errno.EIO, f"short write: {written} of {len(record)} bytes")
                os.fdatasync(fd)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._direct = False
                return False
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return True

    def _write_buffered(self, record: bytes, offset: int) -> None:
        fd = open_regular(self.path, os.O_RDWR, SIZE)
        try:
            os.pwrite(fd, record, offset)
            os.fdatasync(fd)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def ensure(self) -> None:
        """Create the file at full size now (at start-up, while there is room), keeping what it
        holds. LatchFileError when it cannot."""
        latched = self.load()
        if self.problem is not None:
            raise LatchFileError(self.problem)
        if not self.path.exists() or self.path.stat().st_size < SIZE:
            self.save(latched)


def union(a: Mapping[str, Level], b: Mapping[str, Level]) -> dict[str, Level]:
    """For each detector the higher latched level of ``a`` and ``b``."""
    out = dict(a)
    for name, level in b.items():
        if level > out.get(name, Level.NORMAL):
            out[name] = level
    return out
