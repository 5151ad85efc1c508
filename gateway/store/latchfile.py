"""The latched alarms in a small file of their own, so that they survive whatever happens to the
event log: a full disk, a corrupt or deleted database, a crash while either was failing.

``latched.state`` (beside the event log) is created once at its full size (``SIZE`` bytes, two
slots) and afterwards only overwritten in place: an overwrite of blocks the file already owns
needs no free space, so it still works on a full SD card. Each write goes to the older slot with
a higher generation number and a CRC, then ``fsync``; a write torn by a power cut leaves the
other slot intact. ``load`` takes the valid slot with the highest generation.

At start the controller restores the union of what this file and the event log say (for each
detector the higher level): a latch is never lost because one of the two stores was behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

from gateway.core.model import Level

LATCH_FILE = "latched.state"
SLOT = 2048  # bytes per slot: a kitchen's latched detectors fit many times over
SIZE = 2 * SLOT
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

    def load(self) -> dict[str, Level]:
        """The latched levels of the newest valid slot ({} when there is no usable file). A
        level that cannot be read is taken as HIGH (fail safe: the reset must wait for it)."""
        try:
            data = self.path.read_bytes()
        except OSError:
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
        """Write ``latched`` durably (fsync) into the older slot. LatchFileError on failure."""
        wanted = {str(k): int(v) for k, v in latched.items() if Level(v) > Level.NORMAL}
        payload = json.dumps(wanted, sort_keys=True, separators=(",", ":")).encode()
        if _HEADER.size + len(payload) > SLOT:
            # About 80 latched detectors; the event log still has them all.
            raise LatchFileError(f"latch file {self.path}: {len(wanted)} latches do not fit")
        generation = self._generation + 1
        record = _HEADER.pack(MAGIC, generation, len(payload), zlib.crc32(payload)) + payload
        record += b"\0" * (SLOT - len(record))
        offset = SLOT * (generation % 2)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as e:
            raise LatchFileError(f"latch file {self.path}: cannot open: {e}") from e
        try:
            if os.fstat(fd).st_size < SIZE:
                # Created once at full size; later writes only overwrite these blocks.
                os.posix_fallocate(fd, 0, SIZE)
            os.pwrite(fd, record, offset)
            os.fsync(fd)
        except OSError as e:
            raise LatchFileError(f"latch file {self.path}: cannot write: {e}") from e
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._generation = generation
        self._last = dict(latched)

    def ensure(self) -> None:
        """Create the file at full size now (at start-up, while there is room), keeping what it
        holds. LatchFileError when it cannot."""
        latched = self.load()
        if not self.path.exists() or self.path.stat().st_size < SIZE:
            self.save(latched)


def union(a: Mapping[str, Level], b: Mapping[str, Level]) -> dict[str, Level]:
    """For each detector the higher latched level of ``a`` and ``b``."""
    out = dict(a)
    for name, level in b.items():
        if level > out.get(name, Level.NORMAL):
            out[name] = level
    return out
