"""A virtual Raspberry Pi: the cached Debian image (``hil_tests.vm.image``) booted in QEMU.

What the guest gets, and where the host reaches it:

* its disk: a copy-on-write overlay of the image (the image itself never changes), and a
  read-only second disk, ``/dev/vdb``, holding the files a test hands in (this checkout);
* the kernel and systemd console, logged to ``console.log``: ``ttyS0`` on x86_64, a virtio
  console (``hvc0``) on aarch64, whose only UART goes to the bus as on a Pi;
* the RS-485 bus, ``bus_device``: ``/dev/ttyS1`` on x86_64, the PL011 ``/dev/ttyAMA0`` on
  aarch64 (a Pi's UART has that name too). QEMU serves it on a unix socket; ``bus()`` connects
  to it, and the project's detector emulator answers on that connection as detectors would on
  the wire;
* an i6300ESB watchdog (``/dev/watchdog``), its action a reset, its firing a QMP ``WATCHDOG``
  event;
* QMP (``monitor``) for the machine, the guest agent (``agent()``) for commands in it;
* GPIO: a gpio-sim chip in the guest; ``gpio_value(n)`` reads BCM line ``n`` as the guest drives
  it, ``gpio_pull(n, up)`` sets what the outside world puts on an input line.

/dev/kvm here may be a paravirtual KVM that hangs Debian's kernel at boot, so the first boot
of a guest of the host's own architecture probes it (a kernel line within ``KVM_PROBE_S``) and
falls back to TCG for the session; another architecture always runs under TCG.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from hil_tests.vm.image import Image
from hil_tests.vm.protocol import Completed, GuestAgent, Monitor, ProtocolError

KVM_PROBE_S = 8.0
STOP_GRACE_S = 5.0
# Per guest architecture: where the kernel console goes, and the UART that is the bus. On
# aarch64 the virtio console exists only once its module loads, after the initramfs has opened
# /dev/console (without tty0 to open, the initramfs cannot start init, and the kernel panics).
CONSOLE = {"x86_64": "console=ttyS0", "aarch64": "console=tty0 console=hvc0"}
BUS_DEVICE = {"x86_64": "/dev/ttyS1", "aarch64": "/dev/ttyAMA0"}
MEMORY = "1G"
CPUS = 2


class MachineError(RuntimeError):
    """The virtual machine did not start or answer; the message says what and the console
    log's last lines."""


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise MachineError(f"QEMU did not create {path} within {timeout_s} s")
        time.sleep(0.05)


class VirtualPi:
    """One guest of ``image`` in ``workdir``. ``boot()`` starts it (the overlay is made on the
    first boot and kept across ``kill()`` and ``boot()`` again: a power cut and power-on)."""

    _accel: str | None = None  # decided once per session by the KVM probe

    def __init__(self, image: Image, workdir: Path, payload: Path | None = None) -> None:
        self.image = image
        self.workdir = workdir
        self.payload = payload
        self.overlay = workdir / "disk.qcow2"
        self.console = workdir / "console.log"
        self.qmp_path = workdir / "qmp.sock"
        self.qga_path = workdir / "qga.sock"
        self.bus_path = workdir / "bus.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.monitor: Monitor | None = None
        self._agent: GuestAgent | None = None
        self._gpio_dir: str | None = None
        self.booted_at = 0.0

    # -- power --------------------------------------------------------------------------------

    def _command(self, accel: str) -> list[str]:
        arch = self.image.arch
        cmd = [arch.qemu, "-nodefaults", "-display", "none", "-m", MEMORY, "-smp", str(CPUS)]
        if accel == "kvm":
            cmd += ["-accel", "kvm", "-cpu", "host"]
        else:
            # -cpu max: lgpio's wheel uses instructions the default TCG CPU lacks.
            cmd += ["-accel", "tcg,thread=multi", "-cpu", "max"]
        console = CONSOLE[arch.name]
        cmd += [
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            f"root=/dev/vda rw {console} panic=5 systemd.show_status=1",
            "-drive",
            f"file={self.overlay},if=virtio,format=qcow2",
            "-chardev",
            f"file,id=console,path={self.console}",
            "-chardev",
            f"socket,id=bus,path={self.bus_path},server=on,wait=off",
            "-device",
            "virtio-serial-pci",
        ]
        if arch.name == "aarch64":
            # The virt board's one PL011 is the bus (ttyAMA0); the console is virtio.
            cmd += ["-M", "virt", "-device", "virtconsole,chardev=console"]
            cmd += ["-serial", "chardev:bus"]
        else:
            cmd += ["-serial", "chardev:console", "-serial", "chardev:bus"]
        cmd += [
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-chardev",
            f"socket,id=qga,path={self.qga_path},server=on,wait=off",
            "-device",
            "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            "-device",
            "i6300esb",
            "-action",
            "watchdog=reset",
        ]
        if self.payload is not None:
            cmd += ["-drive", f"file={self.payload},if=virtio,format=raw,readonly=on"]
        return cmd

    def _board_without_gpio(self, cmd: list[str]) -> Path:
        """The aarch64 virt board's device tree with its PL061 GPIO controller disabled. A Pi's
        header is gpiochip0, where gpiozero's lgpio factory looks; on the virt board the PL061
        (built into Debian's kernel) would take that number and gpio-sim would be gpiochip1.
        QEMU dumps the tree for exactly this machine; ``dtc`` edits it."""
        raw, edited = self.workdir / "virt.dtb", self.workdir / "virt-no-pl061.dtb"
        subprocess.run(
            [*cmd, "-machine", f"dumpdtb={raw}"], check=True, capture_output=True, timeout=60
        )
        dts = subprocess.run(
            ["dtc", "-q", "-I", "dtb", "-O", "dts", str(raw)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        node = re.search(r"(?m)^\s*pl061@[0-9a-f]+ \{\n", dts)
        if node is None:
            raise MachineError(f"no pl061 node in QEMU's device tree {raw}")
        dts = dts[: node.end()] + '\t\tstatus = "disabled";\n' + dts[node.end() :]
        subprocess.run(
            ["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(edited), "-"],
            input=dts,
            check=True,
            capture_output=True,
            text=True,
        )
        return edited

    def _start(self, accel: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.overlay.exists():
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "raw",
                    "-b",
                    str(self.image.root),
                    str(self.overlay),
                ],
                check=True,
            )
        for path in (self.qmp_path, self.qga_path, self.bus_path):
            path.unlink(missing_ok=True)
        self.console.write_bytes(b"")
        cmd = self._command(accel)
        if self.image.arch.name == "aarch64":
            cmd += ["-dtb", str(self._board_without_gpio(cmd))]
            for path in (self.qmp_path, self.qga_path, self.bus_path):
                path.unlink(missing_ok=True)  # made by the dump's QEMU
        log = (self.workdir / "qemu.log").open("ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=log)
        log.close()
        self.booted_at = time.monotonic()
        _wait_for(self.qmp_path, 10.0)
        self.monitor = Monitor(self.qmp_path)

    def _kernel_started(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if b"Linux version" in self.console.read_bytes():
                return True
            time.sleep(0.1)
        return False

    def boot(self, timeout_s: float = 240.0) -> float:
        """Power on and wait until the guest agent answers; the seconds that took."""
        if self.image.arch.name != os.uname().machine:
            VirtualPi._accel = "tcg"  # no KVM for a foreign architecture
        elif VirtualPi._accel is None:
            forced = os.environ.get("VM_ACCEL", "")
            VirtualPi._accel = "tcg"
            if forced in ("kvm", "tcg"):
                VirtualPi._accel = forced
            elif os.access("/dev/kvm", os.R_OK | os.W_OK):
                # Any failure of KVM (QEMU aborts, its monitor closes, no kernel line in time)
                # falls back to TCG: seen here, QEMU aborting on "failed to set MSR 0x10a".
                try:
                    self._start("kvm")
                    started = self._kernel_started(KVM_PROBE_S)
                except Exception as e:
                    print(f"vm: KVM failed ({type(e).__name__}: {e}); using TCG", flush=True)
                    started = False
                if started and self.process is not None and self.process.poll() is None:
                    VirtualPi._accel = "kvm"
                else:
                    self.kill()
                    self.process = None
        if self.process is None:
            self._start(VirtualPi._accel)
        self.wait_for_agent(timeout_s)
        return time.monotonic() - self.booted_at

    @property
    def bus_device(self) -> str:
        """The guest's device for the RS-485 bus (the site config names it)."""
        return BUS_DEVICE[self.image.arch.name]

    @property
    def accel(self) -> str:
        return VirtualPi._accel or "?"

    def wait_for_agent(self, timeout_s: float) -> GuestAgent:
        """The guest agent, once it answers (after a boot or a reset)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise MachineError(f"QEMU exited with {self.process.returncode}{self._tail()}")
            try:
                return self.agent(timeout_s=3.0)
            except (OSError, ProtocolError) as e:
                last = str(e)
                self._drop_agent()
                time.sleep(0.5)
        raise MachineError(
            f"the guest agent did not answer in {timeout_s} s ({last}){self._tail()}"
        )

    def agent(self, timeout_s: float = 10.0) -> GuestAgent:
        if self._agent is None:
            self._agent = GuestAgent(self.qga_path, timeout_s)
        return self._agent

    def _drop_agent(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    def run(self, script: str, timeout_s: float = 120.0) -> Completed:
        """``sh -c script`` in the guest (a fresh agent connection after a failure)."""
        try:
            return self.agent().sh(script, timeout_s)
        except (OSError, ProtocolError):
            self._drop_agent()
            raise

    def reset(self) -> None:
        """Press the reset button: no shutdown, whatever the guest had not written is lost."""
        assert self.monitor is not None
        self._drop_agent()
        self._gpio_dir = None
        self.monitor.execute("system_reset")

    def kill(self) -> None:
        """Pull the plug: stop QEMU by its own PID, SIGKILL after a grace period."""
        self._drop_agent()
        self._gpio_dir = None
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        proc, self.process = self.process, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_GRACE_S)

    def _tail(self, lines: int = 25) -> str:
        try:
            text = self.console.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nconsole:\n" + "\n".join(text)

    # -- the bus ------------------------------------------------------------------------------

    def bus(self) -> socket.socket:
        """A connection to the guest's second UART: what the host writes, ttyS1 reads."""
        _wait_for(self.bus_path, 10.0)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self.bus_path))
        return conn

    # -- GPIO ---------------------------------------------------------------------------------

    def _gpio(self) -> str:
        if self._gpio_dir is None:
            chip = "/sys/kernel/config/gpio-sim/pi"
            dev = self.agent().read_file(f"{chip}/dev_name").decode().strip()
            name = self.agent().read_file(f"{chip}/bank0/chip_name").decode().strip()
            self._gpio_dir = f"/sys/devices/platform/{dev}/{name}"
        return self._gpio_dir

    def gpio_value(self, line: int) -> int:
        """The level the guest drives on BCM line ``line`` (or reads, for an input)."""
        return int(self.agent().read_file(f"{self._gpio()}/sim_gpio{line}/value").strip())

    def gpio_pull(self, line: int, up: bool) -> None:
        """What the outside world holds input ``line`` at: pulled up (1) or down (0)."""
        self.agent().write_file(
            f"{self._gpio()}/sim_gpio{line}/pull", b"pull-up" if up else b"pull-down"
        )
