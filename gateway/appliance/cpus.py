"""Which CPU cores each process runs on: the safety process gets a core of its own.

Measured on a 2-core machine (``make bench``, reaction_flooded): with the uplinks, a broker and
the centres flooding on the same cores, the safety reaction's p99 grew about 3x even with the
safety process at SCHED_FIFO and nothing shared between the processes but the event log file;
with the safety process alone on its core it stayed near its idle figure. The cause lies below
the processes (caches, the kernel's tty and I/O workers, the hypervisor), so the remedy is a
core: every supported Pi has four.

``GASGUARD_CPUS`` (set by the units) chooses: ``safety`` = the last online core, ``others`` =
every other core. On a machine with one core, or when the variable is not set, nothing changes.
The process applies it itself at start (not systemd's ``CPUAffinity=``, whose fixed core numbers
would stop the unit from starting on a machine with fewer cores).
"""

from __future__ import annotations

import os

ENV = "GASGUARD_CPUS"
CHOICES = ("safety", "others")


def online_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def cpus_for(choice: str, online: list[int] | None = None) -> set[int] | None:
    """The cores for ``choice`` ("safety" or "others"); None when there is nothing to choose
    (fewer than two cores) or the choice is unknown."""
    cpus = online_cpus() if online is None else sorted(online)
    if len(cpus) < 2 or choice not in CHOICES:
        return None
    return {cpus[-1]} if choice == "safety" else set(cpus[:-1])


def apply_from_env() -> set[int] | None:
    """Pin this process (and the threads it starts later) as ``GASGUARD_CPUS`` says; the cores
    used, or None when unchanged. Never raises: a failure leaves the process where it was."""
    choice = os.environ.get(ENV, "")
    cpus = cpus_for(choice) if choice else None
    if cpus is None:
        return None
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        return None
    return cpus


RT_ENV = "GASGUARD_RT_PRIORITY"


def realtime_priority_from_env() -> int | None:
    """``GASGUARD_RT_PRIORITY`` (1..99) for the threads on the path to the valve; None: none."""
    text = os.environ.get(RT_ENV, "")
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 1 <= value <= 99 else None


def make_realtime(priority: int | None) -> bool:
    """Put the calling thread (only it) at SCHED_FIFO ``priority``; False when not permitted or
    not asked. Only the safety thread and the bus pollers do this: measured, a whole process at
    SCHED_FIFO on its own core kept the kernel's tty worker from delivering the detectors'
    replies (its flooded p99 grew 3x), while these two threads alone do not."""
    if priority is None:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):
        return False
    return True
