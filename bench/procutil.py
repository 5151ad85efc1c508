"""Helpers for the benchmarks that run things in other processes: reading a child's output
line by line with a deadline, stopping a child we started, and reading /proc.

Only processes the benchmark itself started are ever signalled, by their pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: ours, with the repository on ``PYTHONPATH`` (so
    ``-m bench.…`` and ``-m gateway`` import the same code as this process) and ``extra``."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.update(extra)
    return env


def python() -> str:
    """The interpreter running the benchmark (the project's venv)."""
    return sys.executable


class LineReader:
    """Reads a child's pipe line by line, waiting at most until a deadline for each line.

    Raw reads (no Python buffering in between) so that ``select`` never waits on bytes already
    buffered. ``readline`` returns the line without its newline, or raises ``EOFError`` when the
    child closed the pipe and ``TimeoutError`` when the deadline passed.
    """

    def __init__(self, fd: int, what: str) -> None:
        self._fd = fd
        self._what = what
        self._buf = bytearray()
        self._eof = False

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line.decode("utf-8", errors="replace")
            if self._eof:
                raise EOFError(f"{self._what} closed its output")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self._what} wrote no complete line within {timeout:g} s")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """End a child this benchmark started: SIGTERM, wait ``timeout`` s, then SIGKILL.
    Returns its exit status (None if it could not be reaped)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One look at a process in /proc: ``at`` (monotonic s), CPU seconds used so far (user +
    system, all threads), resident set now and its peak (bytes)."""

    at: float
    cpu_s: float
    rss_bytes: int
    hwm_bytes: int


def read_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (``VmRSS``, ``VmHWM``) in kB."""
    text = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            parts = rest.split()
            if len(parts) != 2 or parts[1] != "kB":
                raise ValueError(f"/proc/{pid}/status {key} {rest.strip()!r} is not 'N kB'")
            return int(parts[0])
    raise ValueError(f"/proc/{pid}/status has no {key} line (is the process a zombie?)")


def read_cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` (/proc/PID/stat fields 14, 15)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> ProcSample:
    """CPU time, VmRSS and VmHWM of ``pid`` now."""
    return ProcSample(
        at=time.monotonic(),
        cpu_s=read_cpu_s(pid),
        rss_bytes=read_status_kb(pid, "VmRSS") * 1024,
        hwm_bytes=read_status_kb(pid, "VmHWM") * 1024,
    )
