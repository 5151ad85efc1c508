"""Pseudo-terminal pairs that stand in for an RS-485 adapter in tests and the simulated kitchen.

``open_raw_pty()`` gives a pty whose slave side (``/dev/pts/N``) the gateway opens with pyserial
exactly like ``/dev/ttyAMA0``, while an emulator reads and writes the master side. The slave side
is put in raw mode so that no byte of a Modbus frame is translated or swallowed by the line
discipline (CR/LF mapping, XON/XOFF, echo).

A stable symlink (``point_link``) plays the part of a udev name such as
``/dev/serial/by-id/...``: removing it and closing the pty is "pulling the USB adapter";
a new pty with the link re-pointed is "plugging it back".
"""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PtyPair:
    """One open pseudo-terminal. ``master_fd`` is the emulator's end; ``slave_path`` is the
    device the gateway opens. ``slave_fd`` is kept open by the owner so that reading the
    master does not fail with EIO while no one has the slave open."""

    master_fd: int
    slave_fd: int
    slave_path: str


def open_raw_pty() -> PtyPair:
    """Open a pty pair with the slave side in raw mode (8 bits, no echo, no translation)."""
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        slave_path = os.ttyname(slave_fd)
    except BaseException:
        os.close(master_fd)
        os.close(slave_fd)
        raise
    return PtyPair(master_fd, slave_fd, slave_path)


def close_pty(pair: PtyPair) -> None:
    """Close both ends. Anyone still holding the slave open then sees EIO / a hang-up, as when
    a USB adapter is pulled. Closing an already closed pair is harmless."""
    for fd in (pair.master_fd, pair.slave_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def point_link(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target``, replacing any existing link atomically so that a
    reader never sees the path missing while it is being re-pointed."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def remove_link(link: Path) -> None:
    """Remove ``link`` if it exists (the adapter's device node disappears)."""
    with contextlib.suppress(FileNotFoundError):
        link.unlink()


def park_line(pair: PtyPair, baud: int, parity: str) -> None:
    """Keep an idle pty at a speed the gateway will not ask for.

    A Linux pty cannot hold parity (the kernel clears PARENB), so a gateway that re-opens the
    port with parity at the speed the pty already has asks for no change the kernel can make,
    and the open fails with EINVAL. Parking the pty at another speed makes every open a real
    change. The pty moves bytes the same at any speed: pacing is the emulator's job. Real
    UARTs do not need this. Call it whenever the line is idle."""
    if parity == "N":
        return
    attrs = termios.tcgetattr(pair.slave_fd)
    park = termios.B38400 if baud != 38400 else termios.B9600
    if attrs[4] == park and attrs[5] == park:
        return
    attrs[2] = (attrs[2] & ~termios.CBAUD) | park
    attrs[4] = attrs[5] = park
    termios.tcsetattr(pair.slave_fd, termios.TCSANOW, attrs)
