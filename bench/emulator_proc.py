"""Emulated detector buses in a process of their own, so they never share the GIL with the
gateway code being measured.

``EmulatorProcess(buses)`` spawns ``python -m bench.emulator_proc``, which starts one
``BusEmulator`` per ``BusSpec`` on its own pty and answers JSON-line commands on stdin/stdout:
set a detector's gas or make it misbehave, fetch the exchanges it saw (with the times the
emulator read each request and wrote each reply's first and last byte, in ``time.monotonic()``
seconds, which is system-wide on Linux and so comparable with this process's clock), the
silences the master left before each request (``request_silences``) and the shortest, clear
the history, quit. The child exits when its stdin closes, so it never outlives the benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from bench.procutil import REPO_ROOT, LineReader, child_env, python, stop_child

START_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """One emulated detector: its Modbus address, profile name and starting gas (%LEL)."""

    address: int
    profile: str
    lel: float = 1.0


@dataclass(frozen=True, slots=True)
class BusSpec:
    """One emulated RS-485 bus. ``turnaround_s`` is the slaves' processing time after t3.5."""

    baud: int
    parity: str
    stop_bits: int = 1
    turnaround_s: float = 0.001
    detectors: tuple[DetectorSpec, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class SeenExchange:
    """One request the emulator read and its reply (``reply_end_at`` None: no reply)."""

    request_at: float
    address: int | None
    reply_end_at: float | None
    reply: bytes
    reply_start_at: float | None = None


class EmulatorError(RuntimeError):
    """The emulator process failed or answered with an error."""


class EmulatorProcess:
    """Parent side: start with ``with EmulatorProcess(buses) as emu:``; ``emu.paths[i]`` is the
    device the gateway opens for bus ``i``."""

    def __init__(self, buses: Sequence[BusSpec]) -> None:
        if not buses:
            raise ValueError("EmulatorProcess needs at least one bus")
        self.buses = tuple(buses)
        self.paths: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: LineReader | None = None

    def start(self) -> EmulatorProcess:
        proc = subprocess.Popen(
            [python(), "-m", "bench.emulator_proc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=child_env(),
        )
        self._proc = proc
        self.pid = proc.pid
        assert proc.stdout is not None
        self._reader = LineReader(proc.stdout.fileno(), "emulator process")
        try:
            spec = {"buses": [asdict(b) for b in self.buses]}
            reply = self._call(spec, START_TIMEOUT_S)
            paths = reply.get("paths")
            if not isinstance(paths, list) or len(paths) != len(self.buses):
                raise EmulatorError(f"emulator process gave no device paths: {reply!r}")
            self.paths = [str(p) for p in paths]
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.write(b'{"op": "quit"}\n')
                proc.stdin.flush()
                proc.stdin.close()
                proc.wait(5.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_child(proc)
        if proc.stdout is not None:
            proc.stdout.close()

    # -- commands --------------------------------------------------------------------------------

    def set_gas(self, bus: int, address: int, lel: float) -> None:
        """Gas at one detector, in %LEL."""
        self._call({"op": "set_gas", "bus": bus, "address": address, "lel": lel})

    def misbehave(self, bus: int, address: int, **faults: float | int | bool) -> None:
        """Set fault fields of one detector (``EmulatedDetector``'s: ``reply_delay_s``,
        ``corrupt_crc``, ``silent`` ...)."""
        self._call({"op": "misbehave", "bus": bus, "address": address, "faults": faults})

    def exchanges(self, bus: int, since: float = 0.0) -> list[SeenExchange]:
        """Exchanges on ``bus`` whose request arrived at or after ``since`` (monotonic s)."""
        reply = self._call({"op": "exchanges", "bus": bus, "since": since})
        out = []
        for request_at, address, reply_end_at, reply_hex, reply_start_at in reply["exchanges"]:
            out.append(
                SeenExchange(
                    request_at, address, reply_end_at, bytes.fromhex(reply_hex), reply_start_at
                )
            )
        return out

    def min_gap_s(self, bus: int) -> float | None:
        """The shortest silence the master left between a reply and its next request."""
        gap = self._call({"op": "min_gap", "bus": bus})["min_gap_s"]
        return None if gap is None else float(gap)

    def gaps_s(self, bus: int) -> list[float]:
        """Every silence the master left between a reply and its next request (seconds)."""
        return [float(g) for g in self._call({"op": "gaps", "bus": bus})["gaps_s"]]

    def clear(self, bus: int) -> None:
        """Forget the exchanges seen so far on ``bus``."""
        self._call({"op": "clear", "bus": bus})

    def _call(self, command: dict[str, Any], timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        proc, reader = self._proc, self._reader
        if proc is None or reader is None or proc.stdin is None:
            raise EmulatorError("the emulator process is not running")
        try:
            proc.stdin.write(json.dumps(command).encode() + b"\n")
            proc.stdin.flush()
            line = reader.readline(timeout)
        except (OSError, EOFError, TimeoutError) as e:
            raise EmulatorError(f"emulator process, command {command.get('op')!r}: {e}") from e
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise EmulatorError(f"emulator process, command {command.get('op')!r}: {reply}")
        return reply


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


def _serve() -> int:
    # Imported here: the parent side must not pay for (or share) the emulator's imports.
    from gateway.profiles import default_profiles_dir, load_profiles
    from gateway.sim.emulator import BusEmulator, EmulatedDetector

    out = sys.stdout
    first = sys.stdin.readline()
    if not first:
        return 0
    spec = json.loads(first)
    profiles = load_profiles(default_profiles_dir())
    emulators: list[BusEmulator] = []
    detectors: list[dict[int, EmulatedDetector]] = []
    try:
        for bus in spec["buses"]:
            dets = {
                int(d["address"]): EmulatedDetector(
                    address=int(d["address"]), profile=profiles[d["profile"]], lel=float(d["lel"])
                )
                for d in bus["detectors"]
            }
            emulator, _ = BusEmulator.on_pty(
                int(bus["baud"]),
                str(bus["parity"]),
                int(bus["stop_bits"]),
                dets.values(),
                turnaround_s=float(bus["turnaround_s"]),
            )
            emulator.start()
            emulators.append(emulator)
            detectors.append(dets)
        _send(out, {"paths": [e.path for e in emulators]})
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "quit":
                break
            try:
                _send(out, _command(cmd, emulators, detectors))
            except (KeyError, IndexError, TypeError, ValueError) as e:
                _send(out, {"error": f"{type(e).__name__}: {e}", "command": cmd})
    finally:
        for emulator in emulators:
            emulator.stop()
    return 0


def _command(cmd: dict[str, Any], emulators: list[Any], detectors: list[Any]) -> dict[str, Any]:
    op = cmd["op"]
    if op == "set_gas":
        detectors[cmd["bus"]][int(cmd["address"])].lel = float(cmd["lel"])
        return {"ok": True}
    if op == "misbehave":
        from gateway.sim.emulator import MISBEHAVIOURS

        det = detectors[cmd["bus"]][int(cmd["address"])]
        for name, value in cmd["faults"].items():
            if name not in MISBEHAVIOURS:
                raise ValueError(f"fault {name!r} is not allowed: one of {sorted(MISBEHAVIOURS)}")
            setattr(det, name, type(getattr(det, name))(value))
        return {"ok": True}
    if op == "exchanges":
        since = float(cmd["since"])
        return {
            "exchanges": [
                [x.request_at, x.address, x.reply_end_at, x.reply.hex(), x.reply_start_at]
                for x in emulators[cmd["bus"]].exchanges()
                if x.request_at >= since
            ]
        }
    if op == "min_gap":
        return {"min_gap_s": emulators[cmd["bus"]].min_gap_s()}
    if op == "gaps":
        return {"gaps_s": emulators[cmd["bus"]].gaps()}
    if op == "clear":
        emulators[cmd["bus"]].clear_history()
        return {"ok": True}
    raise ValueError(
        f"op {op!r} is not allowed: set_gas, misbehave, exchanges, min_gap, gaps, clear or quit"
    )


def _send(out: Any, reply: dict[str, Any]) -> None:
    out.write(json.dumps(reply) + "\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(_serve())
