"""(issue 27) The safety process under a flood on its own local sockets: leak -> valve p99 and
peak RSS, idle and flooded in the same run.

Three runs of the flooded-reaction machinery (``bench.reaction``: the real ``Controller`` on the
emulated bus, the valve coil on mock pins, each trial's reaction timed from the second alarm
reply on the wire to the coil's fall):

* idle;
* ``uplink``: an allowed peer (root, as the uplinks' user would be) records 12 kB events on
  the uplink socket back to back (rate-limited by the server: 5 a second, bursts of 50);
* ``control``: a refused peer (user ``nobody``, a member of the group who may not change
  anything) asks for a reset on the control socket as fast as it can reconnect.

A short warm-up run comes first and is not counted. The bench process's resident set (VmRSS)
is sampled every 50 ms during each run: the
controller runs in it, so its growth is the controller's. Prints each p99, the flooded / idle
ratio [target <= 1.10], the peak RSS and its growth, and what each flooder got through.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bench import Figure, emit, note, percentile
from bench.emulator_proc import EmulatorProcess
from bench.reaction import (
    _bus_specs,
    _pin,
    _quiet_gasguard_logs,
    _site,
    _trials,
    can_use_realtime,
    realtime_priority,
)
from gateway.appliance import cpus
from gateway.paths import uplink_socket
from gateway.profiles import default_profiles_dir, load_profiles
from gateway.safety.controller import Controller

FLOODER = Path(__file__).with_name("socket_flooder.py")
NOBODY = 65534
MB = 1_000_000


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _peak_rss(into: dict[str, int]) -> Iterator[None]:
    stop = threading.Event()
    into["peak"] = into["start"] = _rss_bytes()

    def sample() -> None:
        while not stop.wait(0.05):
            into["peak"] = max(into["peak"], _rss_bytes())

    thread = threading.Thread(target=sample, name="bench-rss", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(2)


def _flooder(
    controller: Controller, mode: str, got: dict[str, str]
) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def run() -> Iterator[None]:
        sock = controller.config.control_socket
        if mode == "uplink":
            cmd = ["/usr/bin/python3", str(FLOODER), str(uplink_socket(sock)), "record"]
        else:
            # Let user nobody reach the socket (the test's directory is private to root): the
            # server, not the file mode, must refuse what it asks.
            for d in (sock.parent, *sock.parent.parents):
                if str(d) in ("/", "/tmp"):
                    break
                os.chmod(d, 0o755)
            os.chmod(sock, 0o666)
            cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                   "/usr/bin/python3", str(FLOODER), str(sock), "reset"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        _pin([proc.pid], cpus.cpus_for("others") or set(cpus.online_cpus()))
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"flooding":
                raise RuntimeError(f"the {mode} flooder did not start")
            yield
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            got[mode] = out.decode().strip()

    return run()


def run(
    out: TextIO, *, trials: int = 300, poll_period_s: float = 0.03, travel_s: float = 0.01
) -> list[Figure]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        raise RuntimeError("the socket flood runs a refused peer as user nobody: root and setpriv")
    note(
        out,
        f"(socket flood) reaction: {trials} trials idle, with the uplink socket flooded by an "
        "allowed peer, and with the control socket flooded by a refused one; the controller "
        "at SCHED_FIFO where permitted, on its own core, as its unit runs it",
    )
    profiles = load_profiles(default_profiles_dir())
    # As the unit runs it: SCHED_FIFO where permitted, on the safety process's own core.
    rt = can_use_realtime(realtime_priority())
    own = cpus.cpus_for("safety") or set(cpus.online_cpus())
    results: dict[str, tuple[list[float], dict[str, int]]] = {}
    got: dict[str, str] = {}
    with (
        _quiet_gasguard_logs(),
        tempfile.TemporaryDirectory(prefix="gasguard-bench-", dir="/tmp") as tmp,
        EmulatorProcess(_bus_specs()) as emu,
    ):
        # Warm-up, not counted: the first run in a process pays for imports and caches.
        _trials(emu, _site(Path(tmp) / "warm-up", emu, poll_period_s), profiles,
                max(1, trials // 10), travel_s, realtime=rt, cpus=own)  # fmt: skip
        for mode in ("idle", "uplink", "control"):
            cfg = _site(Path(tmp) / mode, emu, poll_period_s)
            rss: dict[str, int] = {}
            flood = None if mode == "idle" else (lambda c, m=mode: _flooder(c, m, got))
            with _peak_rss(rss):
                reactions, _, _ = _trials(
                    emu, cfg, profiles, trials, travel_s, realtime=rt, cpus=own, flood=flood
                )
            results[mode] = (reactions, rss)
    figures: list[Figure] = []
    idle_p99 = percentile(results["idle"][0], 99)
    what = {"idle": "idle", "uplink": "uplink socket flooded by an allowed peer",
            "control": "control socket flooded by a refused peer"}  # fmt: skip
    for mode, (reactions, rss) in results.items():
        p99 = percentile(reactions, 99)
        ms = tuple(r * 1000 for r in reactions)
        figures += [
            Figure(f"socket_flood_{mode}_reaction_p99", p99 * 1000, "ms",
                   f"leak -> valve p99, {what[mode]}", samples=ms),
            Figure(f"socket_flood_{mode}_peak_rss", rss["peak"] / MB, "MB",
                   f"peak resident set of the process running the controller, {what[mode]}"),
            Figure(f"socket_flood_{mode}_rss_growth", (rss["peak"] - rss["start"]) / MB, "MB",
                   f"its growth over the run, {what[mode]}"),
        ]  # fmt: skip
        if mode != "idle":
            figures.append(
                Figure(f"socket_flood_{mode}_over_idle_p99", p99 / idle_p99, "x",
                       f"reaction p99, {what[mode]} / idle [target <= 1.10]")
            )  # fmt: skip
    for fig in figures:
        emit(out, fig)
    for mode, text in got.items():
        note(out, f"(socket flood) {mode} flooder: {text}")
    return figures
