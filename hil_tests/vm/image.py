"""The vm rig's guest image: Debian bookworm (what Raspberry Pi OS is built on), built once with
debootstrap and cached under ``build/vm/<arch>-<key>/``; ``key`` hashes everything the image is
made from (this file, the package list, the kernel), so a change rebuilds it.

What the image holds beyond a minimal Debian:

* the pinned kernel (``KERNEL_ABI``) and its initrd, which QEMU boots directly;
* ``gpio-sim``, built from Debian's kernel source as an out-of-tree module (Debian's kernel
  lacks ``CONFIG_GPIO_SIM``): at boot ``gasguard-vm-pi.service`` makes a 54-line chip of it,
  ``/dev/gpiochip0``, whose lines the host reads and pulls through sysfs, and gives
  ``/proc/cpuinfo`` a Pi 4's revision so that gpiozero's lgpio pin factory accepts the board;
* lgpio in the system Python (the stand-in for Raspberry Pi OS's ``python3-lgpio``), and a
  wheelhouse with gasguard's dependencies and build backend: the guest has no network, so pip
  installs from it (``/etc/pip.conf``), as a Pi behind a firewall would from a local mirror;
* ``qemu-guest-agent``, through which the host runs commands in the guest;
* no getty on the serial ports: ``ttyS0`` is the console the host logs, ``ttyS1`` the bus.

Run ``python -m hil_tests.vm.image`` (as root: debootstrap, chroot) to build it and print its
directory; the vm rig calls ``ensure_image()`` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hil_tests.firmware_host import REPO

CACHE = REPO / "build" / "vm"
SUITE = "bookworm"
# The kernel the gpio-sim module is built for; Debian's mirror keeps the current ABI only, so
# when a point release replaces it, update this (the build says so).
KERNEL_ABI = "6.1.0-57"
IMAGE_SIZE = "3G"  # sparse; about 1.1 GB used
GPIO_LINES = 54  # as many as a Pi's BCM2711 bank 0
# A Pi 4 Model B's revision code, for gpiozero's board lookup (its header maps BCM 0-27).
PI_REVISION = "c03114"
# gasguard's build backend and dependencies, for the offline wheelhouse (pyproject.toml owns
# the versions; pip resolves them again here).
WHEEL_REQUIREMENTS = ("setuptools>=77", "wheel", "lgpio>=0.2.2.0")


@dataclass(frozen=True, slots=True)
class Arch:
    """One guest architecture: Debian's name, the kernel flavour, the QEMU binary."""

    name: str  # as platform.machine() says it
    debian: str
    flavour: str
    qemu: str
    kernel_file: str  # below /boot
    pip_platform: str


ARCHES = {
    "x86_64": Arch("x86_64", "amd64", "amd64", "qemu-system-x86_64", "vmlinuz", "x86_64"),
    "aarch64": Arch("aarch64", "arm64", "arm64", "qemu-system-aarch64", "vmlinuz", "aarch64"),
}


def packages(arch: Arch) -> tuple[str, ...]:
    """What debootstrap installs: systemd as on a Pi, Python with venv, the guest agent and
    what builds the gpio-sim module."""
    return (
        "systemd-sysv",
        "udev",
        "kmod",
        "procps",
        "python3",
        "python3-venv",
        "ca-certificates",
        "qemu-guest-agent",
        "e2fsprogs",
        "xz-utils",
        "gcc",
        "make",
        "libc6-dev",
    )


def kernel_packages(arch: Arch) -> tuple[str, ...]:
    """Installed after debootstrap, from the release, its updates and its security archive
    (debootstrap sees the release alone, which may hold an older kernel)."""
    abi = f"{KERNEL_ABI}-{arch.flavour}"
    return (f"linux-image-{abi}", f"linux-headers-{abi}", "linux-source-6.1")


class ImageError(RuntimeError):
    """The image cannot be built; the message says which step and why."""


@dataclass(frozen=True, slots=True)
class Image:
    """A built image: the root file system, and the kernel and initrd QEMU boots."""

    arch: Arch
    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def ready(self) -> bool:
        return (self.directory / "ready").exists()


def cache_key(arch: Arch) -> str:
    """What the image is made of, hashed: this file, the packages, the wheel list."""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(repr((arch, packages(arch), kernel_packages(arch), WHEEL_REQUIREMENTS)).encode())
    h.update((REPO / "pyproject.toml").read_bytes())
    return h.hexdigest()[:12]


def image_for(arch_name: str) -> Image:
    arch = ARCHES[arch_name]
    return Image(arch, CACHE / f"{arch.name}-{cache_key(arch)}")


def mirrors() -> tuple[str, str]:
    """The Debian archive and security archive apt already uses here (deb.debian.org's when
    none is found)."""
    found: dict[str, str] = {}
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for m in re.finditer(r"(?m)^URIs:\s*(\S+)|^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text):
            uri = (m.group(1) or m.group(2)).rstrip("/")
            # Debian's own archives, not a third-party repository (nodesource, ...).
            for tail in ("/debian", "/debian-security"):
                if uri.startswith("http") and uri.endswith(tail):
                    found.setdefault(tail, uri)
    return (
        found.get("/debian", "http://deb.debian.org/debian"),
        found.get("/debian-security", "http://deb.debian.org/debian-security"),
    )


def _sources(archive: str, security: str) -> str:
    return (
        f"deb {archive} {SUITE} main\n"
        f"deb {archive} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n"
    )


def _run(cmd: list[str], log: Path, what: str, timeout: float = 1800.0) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ImageError(f"{what}: {e} (log: {log})") from e
    if done.returncode != 0:
        raise ImageError(f"{what} failed with status {done.returncode}; see {log}")


# The module's Kbuild: gpio-sim.c and the IRQ simulator it needs (not built into Debian's
# kernel either) as one module named gpio-sim.
_KBUILD = "obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-main.o irq_sim.o\n"

_BUILD_GPIO_SIM = f"""set -e
cd /usr/src
tar -xf linux-source-6.1.tar.xz linux-source-6.1/drivers/gpio linux-source-6.1/kernel/irq/irq_sim.c
mkdir -p gpio-sim
cp linux-source-6.1/drivers/gpio/gpio-sim.c gpio-sim/gpio-sim-main.c
cp linux-source-6.1/drivers/gpio/gpiolib.h gpio-sim/
cp linux-source-6.1/kernel/irq/irq_sim.c gpio-sim/
# irq_to_desc() is not exported to modules: the same handler through generic_handle_irq().
grep -q 'handle_simple_irq(irq_to_desc(irqnum))' gpio-sim/irq_sim.c
sed -i 's/handle_simple_irq(irq_to_desc(irqnum))/generic_handle_irq(irqnum)/' gpio-sim/irq_sim.c
printf '{_KBUILD}' > gpio-sim/Kbuild
abi=$(ls /lib/modules)
make -C /usr/src/linux-headers-$abi M=/usr/src/gpio-sim modules
install -D -m 0644 gpio-sim/gpio-sim.ko /lib/modules/$abi/extra/gpio-sim.ko
depmod $abi
rm -rf linux-source-6.1 linux-source-6.1.tar.xz gpio-sim
"""

# Runs at boot before gasguard: the GPIO chip and a Pi's revision.
_PI_SCRIPT = f"""#!/bin/sh
# The vm rig's stand-in for a Raspberry Pi's GPIO header: a {GPIO_LINES}-line gpio-sim chip
# (/dev/gpiochip0; line N is BCM GPIO N) and a Pi 4's revision in /proc/cpuinfo.
set -e
modprobe gpio-sim
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
chip=/sys/kernel/config/gpio-sim/pi
if [ ! -d "$chip" ]; then
    mkdir "$chip" "$chip/bank0"
    echo {GPIO_LINES} > "$chip/bank0/num_lines"
    echo 1 > "$chip/live"
fi
if ! grep -q '^Revision' /proc/cpuinfo; then
    {{ cat /proc/cpuinfo
       printf 'Hardware\\t: BCM2835\\nRevision\\t: {PI_REVISION}\\n'
       printf 'Serial\\t\\t: 100000000000vm01\\n'
       printf 'Model\\t\\t: Raspberry Pi 4 Model B Rev 1.4\\n'; }} > /run/gasguard-vm-cpuinfo
    mount --bind /run/gasguard-vm-cpuinfo /proc/cpuinfo
fi
"""

_PI_UNIT = """[Unit]
Description=vm rig: simulated Raspberry Pi GPIO chip and board revision
DefaultDependencies=no
After=systemd-modules-load.service sys-kernel-config.mount
Before=sysinit.target gasguard-safety.service gasguard-uplinks.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/gasguard-vm-pi

[Install]
WantedBy=sysinit.target
"""


@contextlib.contextmanager
def _chroot_mounts(root: Path, debs: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside ``root`` while packages install (the kernel's postinst
    builds the initrd), and the host's package cache ``debs`` as apt's, unmounted after."""
    mounted: list[Path] = []
    try:
        for what, args in (
            ("proc", ["-t", "proc", "proc"]),
            ("sys", ["-t", "sysfs", "sysfs"]),
            ("dev", ["--bind", "/dev"]),
            ("var/cache/apt/archives", ["--bind", str(debs)]),
        ):
            target = root / what
            subprocess.run(["mount", *args, str(target)], check=True)
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)


def _configure(root: Path, arch: Arch) -> None:
    """The guest's own settings (see the module docstring)."""
    _write(root / "etc/hostname", "gasguard-vm\n")
    _write(root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 gasguard-vm\n")
    _write(root / "etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    _write(
        root / "etc/pip.conf",
        "[global]\nno-index = true\nfind-links = /var/cache/gasguard-wheels\n",
    )
    _write(root / "usr/local/sbin/gasguard-vm-pi", _PI_SCRIPT, 0o755)
    _write(root / "etc/systemd/system/gasguard-vm-pi.service", _PI_UNIT)
    # The safety unit's own mount namespace does not see the bind over /proc/cpuinfo (its
    # sandboxing mounts /proc afresh): give it the board's cpuinfo there too.
    _write(
        root / "etc/systemd/system/gasguard-safety.service.d/vm-pi.conf",
        "[Unit]\nAfter=gasguard-vm-pi.service\n\n"
        "[Service]\nBindReadOnlyPaths=/run/gasguard-vm-cpuinfo:/proc/cpuinfo\n",
    )
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "gasguard-vm-pi.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/gasguard-vm-pi.service")
    # The console (ttyS0; hvc0 on arm64) is the host's log and ttyS1 (ttyAMA0 on arm64, as on
    # a Pi) the bus: no login prompts, whose hangups would cut the console.
    for tty in ("ttyS0", "ttyS1", "ttyAMA0", "hvc0"):
        (root / f"etc/systemd/system/serial-getty@{tty}.service").unlink(missing_ok=True)
        (root / f"etc/systemd/system/serial-getty@{tty}.service").symlink_to("/dev/null")
    (root / "etc/systemd/system/getty@tty1.service").unlink(missing_ok=True)
    (root / "etc/systemd/system/getty@tty1.service").symlink_to("/dev/null")
    # As Raspberry Pi OS does (its 99-com.rules): the GPIO chips belong to group gpio, which
    # `gasguard install` adds the service user to.
    _write(
        root / "etc/udev/rules.d/60-gasguard-vm-gpio.rules",
        'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"\n',
    )
    # A root without a password: the host reaches the guest only through the guest agent.
    shadow = root / "etc/shadow"
    shadow.write_text(re.sub(r"(?m)^root:[^:]*:", "root::", shadow.read_text()))


def _wheels(root: Path, arch: Arch, log: Path) -> None:
    """The wheelhouse, and lgpio in the system Python (pip on this host, for the guest)."""
    house = root / "var/cache/gasguard-wheels"
    house.mkdir(parents=True, exist_ok=True)
    deps = _project_dependencies()
    common = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(house),
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "any",
    ]
    # Bookworm's glibc is 2.36: any manylinux wheel up to that (pip does not widen the tag).
    for minor in range(17, 37):
        common += ["--platform", f"manylinux_2_{minor}_{arch.pip_platform}"]
    _run([*common, *WHEEL_REQUIREMENTS, *deps], log, "downloading the wheels")
    lgpio = sorted(house.glob("lgpio-*.whl"))
    if not lgpio:
        raise ImageError(f"no lgpio wheel for {arch.name} in {house}")
    site = root / "usr/local/lib/python3.11/dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "zipfile", "-e", str(lgpio[-1]), str(site)],
        log,
        "unpacking lgpio into the guest's system Python",
    )


def _project_dependencies() -> list[str]:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return [str(d) for d in data["project"]["dependencies"]]


def build(image: Image, log: Path | None = None) -> Image:
    """Build ``image`` (about 2-3 minutes with a warm package cache; needs root)."""
    if os.geteuid() != 0:
        raise ImageError("building the vm image needs root (debootstrap, chroot): run as root")
    for tool in ("debootstrap", "mkfs.ext4", image.arch.qemu):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise ImageError(
                f"{tool} is missing: apt-get install qemu-system-x86 qemu-system-arm "
                "qemu-utils debootstrap e2fsprogs"
            )
    arch = image.arch
    CACHE.mkdir(parents=True, exist_ok=True)
    log = log or CACHE / f"build-{arch.name}.log"
    log.write_text(f"building {image.directory} at {time.ctime()}\n")
    debs = CACHE / f"debs-{arch.debian}"
    debs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{arch.name}-", dir=CACHE))
    root = work / "root"
    try:
        cmd = ["debootstrap", "--variant=minbase", f"--arch={arch.debian}"]
        cmd += [f"--cache-dir={debs}", f"--include={','.join(packages(arch))}"]
        if arch.name != os.uname().machine:
            cmd.append("--foreign")
        archive, security = mirrors()
        _run([*cmd, SUITE, str(root), archive], log, "debootstrap")
        if arch.name != os.uname().machine:
            _run(
                ["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"],
                log,
                "debootstrap's second stage under qemu-user",
            )
        _write(root / "etc/apt/sources.list", _sources(archive, security))
        with _chroot_mounts(root, debs):
            _run(["chroot", str(root), "apt-get", "-q", "update"], log, "apt-get update")
            _run(
                [
                    "chroot",
                    str(root),
                    "env",
                    "DEBIAN_FRONTEND=noninteractive",
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    *kernel_packages(arch),
                ],
                log,
                "installing the kernel",
            )
        abi = f"{KERNEL_ABI}-{arch.flavour}"
        if not (root / f"lib/modules/{abi}").is_dir():
            raise ImageError(
                f"the guest has no kernel {abi}: the mirror may have moved on; set KERNEL_ABI "
                f"in {Path(__file__).name} to the ABI of linux-image-{arch.flavour} there"
            )
        _run(["chroot", str(root), "sh", "-c", _BUILD_GPIO_SIM], log, "building gpio-sim")
        _configure(root, arch)
        _run(["chroot", str(root), "groupadd", "--system", "gpio"], log, "group gpio")
        _wheels(root, arch, log)
        _run(["chroot", str(root), "apt-get", "clean"], log, "apt-get clean")
        work_image = work / "root.img"
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-L",
                "gasguard-root",
                "-d",
                str(root),
                str(work_image),
                IMAGE_SIZE,
            ],
            log,
            "mkfs.ext4",
        )
        shutil.copy(root / f"boot/vmlinuz-{abi}", work / "vmlinuz")
        shutil.copy(root / f"boot/initrd.img-{abi}", work / "initrd.img")
        shutil.rmtree(root)
        if image.directory.exists():
            shutil.rmtree(image.directory)
        work.rename(image.directory)
        (image.directory / "ready").write_text(f"{time.ctime()}\n")
        # The images this one replaces (3 GB sparse each): their inputs are gone.
        for old in CACHE.glob(f"{arch.name}-*"):
            if old != image.directory and (old / "ready").exists():
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return image


def ensure_image(arch_name: str = "x86_64") -> Image:
    """The cached image for ``arch_name``, built first if its inputs changed."""
    image = image_for(arch_name)
    if image.ready:
        return image
    return build(image)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hil_tests.vm.image", description="Build the vm rig's cached guest image."
    )
    p.add_argument("--arch", choices=sorted(ARCHES), default="x86_64")
    args = p.parse_args(argv)
    started = time.monotonic()
    try:
        image = ensure_image(args.arch)
    except ImageError as e:
        print(f"vm image: {e}", file=sys.stderr)
        return 1
    print(f"{image.directory} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
