"""(c) The running safety process's memory and CPU with 8 detectors polled every 500 ms, and the
uplinks process's memory beside it.

``python -m gateway.safety.main --config FILE`` (what ``gasguard-safety`` runs) runs as a
subprocess, as systemd starts it, with
``GPIOZERO_PIN_FACTORY=mock`` (gpiozero mock pins; the valve's feedback pin then reads its pull,
so the controller reports a valve fault: its sounder and fault light stay on, which costs the
same as on a site with a fault). The detectors are emulated in another process: 4 generic
kitchen detectors on a 9600 8N1 bus and 4 Sensepoint XCDs on a 19200 8E1 bus.

After the ``controller.ready`` log line and a warm-up, /proc/PID/stat (utime + stime, every
thread) and /proc/PID/status (VmRSS, VmHWM) are read over the steady-state window. The
emulator counts the polls answered in the window, to show the controller was working.
Baselines: the RSS of a bare Python, and of a Python that has only imported
``gateway.safety.main`` (with the number of modules that import loads). The uplinks process
(``python -m gateway.uplinks.main``) runs through the same window with an MQTT channel to a
mosquitto broker on loopback.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from bench import Figure, emit, note
from bench.emulator_proc import BusSpec, DetectorSpec, EmulatorProcess
from bench.procutil import LineReader, ProcSample, child_env, python, sample, stop_child
from bench.siteconfig import SiteBus, write_site_config
from bench.uplink_mqtt import Broker

MB = 1_000_000  # figures in MB of 10^6 bytes (stricter against a "40 MB" target than MiB)
READY_MARK = "event=controller.ready"
READY_TIMEOUT_S = 30.0

# (bus name, baud, parity, profile, detector name prefix)
BUSES = (
    ("bus0", 9600, "N", "generic-cn-kitchen", "wok"),
    ("bus1", 19200, "E", "honeywell-sensepoint-xcd", "xcd"),
)


def site_buses(paths: Sequence[str], per_bus: int) -> list[SiteBus]:
    """The benchmark site's buses on the emulator's ``paths``, ``per_bus`` detectors each."""
    return [
        SiteBus(
            name,
            paths[i],
            baud,
            parity,
            tuple((f"{prefix}-{a}", a, profile) for a in range(1, per_bus + 1)),
        )
        for i, (name, baud, parity, profile, prefix) in enumerate(BUSES)
    ]


def emulated_buses(per_bus: int) -> list[BusSpec]:
    return [
        BusSpec(
            baud, parity, 1, 0.001, tuple(DetectorSpec(a, profile) for a in range(1, per_bus + 1))
        )
        for _, baud, parity, profile, _ in BUSES
    ]


class ControllerProcess:
    """The safety process (``python -m gateway.safety.main --config FILE``) as a child; its
    output lines are collected by a thread (so a full pipe never stalls it) and ``ready`` is set
    at ``controller.ready``."""

    def __init__(self, config: Path) -> None:
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            [python(), "-m", "gateway.safety.main", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            env=child_env(GPIOZERO_PIN_FACTORY="mock"),
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ready_at: float | None = None
        self.ready_line = ""
        assert self.proc.stdout is not None
        self._reader = LineReader(self.proc.stdout.fileno(), "controller")
        self._thread = threading.Thread(target=self._drain, name="controller-output", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                line = self._reader.readline(3600.0)
            except (EOFError, TimeoutError, OSError):
                return
            now = time.monotonic()
            self.lines.append(line)
            if not self.ready.is_set() and READY_MARK in line:
                self.ready_at = now
                self.ready_line = line
                self.ready.set()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from spawn to the ``controller.ready`` line; RuntimeError if it never came."""
        if not self.ready.wait(timeout) or self.ready_at is None:
            tail = "\n".join(self.lines[-15:])
            raise RuntimeError(
                f"controller (exit status {self.proc.poll()}) logged no controller.ready "
                f"within {timeout:g} s; last output:\n{tail}"
            )
        return self.ready_at - self.spawned_at

    def stop(self) -> int | None:
        status = stop_child(self.proc)
        self._thread.join(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return status


def read_pss_bytes(pid: int) -> int:
    """Pss of ``pid`` from /proc/PID/smaps_rollup (bytes)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no Pss line")


def import_baseline_rss(module: str = "gateway.safety.main") -> tuple[int, int]:
    """VmRSS (bytes) of a Python that imported ``module`` (or nothing, for "") and does nothing,
    and how many modules it holds."""
    statement = f"import {module}; " if module else ""
    proc = subprocess.Popen(
        [python(), "-c", f"import sys; {statement}print(len(sys.modules), flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(GPIOZERO_PIN_FACTORY="mock"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = LineReader(proc.stdout.fileno(), "import baseline").readline(READY_TIMEOUT_S)
        if not line.isdigit():
            raise RuntimeError(f"import baseline printed {line!r}, expected a module count")
        return sample(proc.pid).rss_bytes, int(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        stop_child(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def run(
    out: TextIO,
    *,
    per_bus: int = 4,
    poll_period_s: float = 0.5,
    warmup_s: float = 5.0,
    window_s: float = 25.0,
) -> list[Figure]:
    """Run the controller for ``warmup_s + window_s``; print and return the figures."""
    if per_bus < 1 or warmup_s < 0 or window_s <= 0:
        raise ValueError(
            f"per_bus {per_bus!r} >= 1, warmup_s {warmup_s!r} >= 0 and window_s {window_s!r} > 0"
            " are required"
        )
    detectors = per_bus * len(BUSES)
    note(
        out,
        f"(c) resources: {detectors} detectors polled every {poll_period_s:g} s, "
        f"the safety process on mock pins and the uplinks process (MQTT to a local broker), "
        f"{window_s:g} s window after {warmup_s:g} s warm-up",
    )
    baseline, modules = import_baseline_rss()
    bare, bare_modules = import_baseline_rss("")
    with (
        tempfile.TemporaryDirectory(prefix="gasguard-bench-") as tmp,
        EmulatorProcess(emulated_buses(per_bus)) as emu,
    ):
        broker = Broker(Path(tmp))
        config = write_site_config(
            Path(tmp),
            site_buses(emu.paths, per_bus),
            poll_period_s=poll_period_s,
            extra=f'[uplink.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntls = false\n',
        )
        controller = ControllerProcess(config)
        uplinks = subprocess.Popen(
            [python(), "-m", "gateway.uplinks.main", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env(),
        )
        try:
            controller.wait_ready()
            time.sleep(warmup_s)
            pid = controller.proc.pid
            first = sample(pid)
            peak_rss = first.rss_bytes
            last: ProcSample = first
            while last.at - first.at < window_s:
                time.sleep(min(1.0, max(0.01, window_s - (last.at - first.at))))
                if controller.proc.poll() is not None:
                    raise RuntimeError(
                        f"controller exited with status {controller.proc.returncode} during "
                        "the window; last output:\n" + "\n".join(controller.lines[-15:])
                    )
                last = sample(pid)
                peak_rss = max(peak_rss, last.rss_bytes)
            pss = read_pss_bytes(pid)
            uplinks_rss = sample(uplinks.pid).rss_bytes if uplinks.poll() is None else 0
            polls = sum(
                1
                for bus in range(len(BUSES))
                for x in emu.exchanges(bus, since=first.at)
                if x.reply_end_at is not None and x.reply_end_at <= last.at
            )
        finally:
            controller.stop()
            stop_child(uplinks)
            broker.stop()
    if uplinks_rss == 0:
        raise RuntimeError("the uplinks process exited during the window")
    span = last.at - first.at
    figures = [
        Figure(
            "resources_rss",
            last.rss_bytes / MB,
            "MB",
            "safety process VmRSS at the end of the window, MB of 10^6 bytes [target <= 20 MB]",
            decimals=1,
        ),
        Figure(
            "resources_pss",
            pss / MB,
            "MB",
            "safety process proportional set size (shared libraries split among their users)",
            decimals=1,
        ),
        Figure(
            "resources_uplinks_rss",
            uplinks_rss / MB,
            "MB",
            "uplinks process VmRSS at the end of the window (MQTT channel connected)",
            decimals=1,
        ),
        Figure(
            "resources_modules",
            modules,
            "modules",
            f"modules in sys.modules after importing gateway.safety.main (a bare Python: "
            f"{bare_modules})",
            decimals=0,
        ),
        Figure(
            "resources_rss_window_max",
            peak_rss / MB,
            "MB",
            "largest VmRSS sampled (every 1 s) in the window",
            decimals=1,
        ),
        Figure(
            "resources_hwm",
            last.hwm_bytes / MB,
            "MB",
            "VmHWM: peak resident set since the controller started",
            decimals=1,
        ),
        Figure(
            "resources_cpu",
            (last.cpu_s - first.cpu_s) / span * 100,
            "%",
            "safety process CPU (user + system, all threads) in % of one core [target <= 3 %]",
        ),
        Figure(
            "resources_polls_per_s",
            polls / span,
            "polls/s",
            f"polls the emulator answered in the window (expected {detectors / poll_period_s:g})",
            decimals=1,
        ),
        Figure(
            "resources_import_rss_baseline",
            baseline / MB,
            "MB",
            "baseline: VmRSS of a Python that only imported gateway.safety.main",
            decimals=1,
        ),
        Figure(
            "resources_python_rss_baseline",
            bare / MB,
            "MB",
            "baseline: VmRSS of a bare Python (this interpreter, nothing imported)",
            decimals=1,
        ),
        Figure(
            "resources_rss_vs_import",
            last.rss_bytes / baseline,
            "x",
            "safety process VmRSS / the import baseline",
        ),
    ]
    for fig in figures:
        emit(out, fig)
    return figures
