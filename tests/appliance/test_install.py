"""``gasguard install`` and ``upgrade`` in a throwaway root (a temp prefix).

The installed "versions" are small venv stand-ins whose ``bin/python`` runs this checkout's
interpreter and whose ``bin/gasguard run`` starts the real controller (on the simulated
kitchen's ptys, mock pins) wired to a real NOTIFY_SOCKET: an upgrade is judged by the READY=1
datagram the new version sends, as systemd would judge it. Broken versions crash at start,
refuse the config, or migrate the event log to a schema the old version cannot read.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.appliance.install import (
    Installer,
    InstallError,
    Layout,
    Options,
    PiModel,
    detect_model,
    gpio_advice,
    model_family,
    share_dir,
    uart_advice,
)
from gateway.appliance.notify import NotifyListener
from gateway.paths import EVENTS_DB
from gateway.sim.kitchen import SimBus, SimDetector, SimulatedKitchen
from gateway.store.events import SCHEMA_VERSION, EventStore

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

RUN_CONTROLLER = """
import sys
from pathlib import Path
from gateway import log
from gateway.appliance.heartbeat import attach
from gateway.config import load_config
from gateway.safety.controller import Controller
log.setup()
controller = Controller(load_config(Path(sys.argv[2])), simulated=True)
link = attach(controller)
rc = controller.run()
link.close()
sys.exit(rc)
"""


def fake_venv(
    where: Path,
    version: str,
    *,
    run: str = "good",
    refuse_config: bool = False,
    bump_schema: bool = False,
    records_into: Path | None = None,
) -> Path:
    """A venv stand-in holding gasguard ``version``. ``run``: "good" (the real controller) or
    "crash" (exits 1 at start). ``bump_schema``: its migration leaves a newer schema behind.
    ``records_into``: a crashing version first records a fault in this event log."""
    venv = where / f"venv-{version}"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    bump = ""
    if bump_schema:
        bump = (
            'if [ "$rc" = 0 ] && [ "$2" = gateway.appliance.migrate ]; then '
            f'{PY} -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); '
            f"c.execute('PRAGMA user_version={SCHEMA_VERSION + 1}'); c.commit(); c.close()\" "
            '"$3"; fi\n'
        )
    python.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *importlib.metadata*) echo {version}; exit 0;; esac\n'
        f'{PY} "$@"; rc=$?\n' + bump + "exit $rc\n"
    )
    runs = {
        "good": f'shift; exec {PY} -c {shlex.quote(RUN_CONTROLLER)} "$@"',
        "crash": f'echo "gasguard {version}: cannot start" >&2; exit 1',
    }
    if records_into is not None:
        # As the newer version would, in the schema only it knows (plain SQL here).
        record = (
            f"import sqlite3; c = sqlite3.connect({str(records_into)!r}); "
            "c.execute(\"INSERT INTO events SELECT MAX(seq) + 1, 1.0, 'fault.raised', "
            '\'wok-1\', \'{\\"why\\": \\"failed version\\"}\' FROM events"); '
            "c.commit()"
        )
        runs["crash"] = f"{PY} -c {shlex.quote(record)}; " + runs["crash"]
    refuse = (
        f'if [ "$1" = check-config ]; then echo "gasguard {version}: unknown key" >&2; exit 1; fi\n'
        if refuse_config
        else ""
    )
    gasguard = venv / "bin" / "gasguard"
    gasguard.write_text(
        "#!/bin/sh\n"
        + refuse
        + f'if [ "$1" = run ]; then {runs[run]}; fi\n'
        + f'exec {PY} -m gateway.cli "$@"\n'
    )
    for exe in (python, gasguard):
        exe.chmod(0o755)
    return venv


class ProcessService:
    """systemd's part, played in the test: starts ``current/bin/gasguard run`` (resolved at
    each start, so a switch of ``current`` takes effect) with a NOTIFY_SOCKET, and calls it
    ready on READY=1."""

    def __init__(self, layout: Layout, config: Path, workdir: Path) -> None:
        self.layout = layout
        self.config = config
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.listener: NotifyListener | None = None
        self.started: list[str] = []
        self.ready: list[str] = []
        self._n = 0

    def is_active(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and bool(self.ready)

    def start(self) -> None:
        assert self.proc is None, "started twice"
        self._n += 1
        self.listener = NotifyListener(str(self.workdir / f"notify-{self._n}"))
        version = os.readlink(self.layout.current)
        self.started.append(Path(version).name)
        env = {**os.environ, **self.listener.environ(), "GPIOZERO_PIN_FACTORY": "mock"}
        self.proc = subprocess.Popen(
            [str(self.layout.current / "bin" / "gasguard"), "run", "--config", str(self.config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def wait_ready(self, timeout_s: float, settle_s: float) -> tuple[bool, str]:
        assert self.proc is not None and self.listener is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.listener.wait_for("READY", "1", 0.1) is not None:
                time.sleep(settle_s)
                if self.proc.poll() is not None:
                    return False, f"exited with {self.proc.returncode} after READY"
                self.ready.append(self.started[-1])
                return True, "READY=1"
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode} before READY"
        return False, f"no READY=1 within {timeout_s} s"


def options(prefix: Path, venv: Path) -> Options:
    return Options(prefix=prefix, venv=venv, yes=True, start_timeout_s=15.0, settle_s=0.5)


def install(prefix: Path, venv: Path, service: ProcessService | None = None) -> tuple[int, str]:
    lines: list[str] = []
    rc = Installer(options(prefix, venv), service, out=lines.append).run()
    return rc, "\n".join(lines)


def schema(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def event_count(db: Path) -> int:
    with EventStore.open_readonly(db) as reader:
        return reader.count()


# ---------------------------------------------------------------------------------------------
# First install
# ---------------------------------------------------------------------------------------------


def test_first_install_into_a_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    (prefix / "proc/device-tree").mkdir(parents=True)
    (prefix / "proc/device-tree/model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    venv = fake_venv(tmp_path, "0.1.0")
    rc, out = install(prefix, venv)
    assert rc == 0, out
    L = Layout(prefix)
    assert os.readlink(L.current) == "versions/0.1.0"
    assert (L.versions_dir / "0.1.0").resolve() == venv.resolve()
    assert os.readlink(L.bin_link) == "/opt/gasguard/current/bin/gasguard"
    # The config: the example, readable by its owner and its group (the uplinks read it).
    cfg = L.config_file
    assert cfg.read_bytes() == (REPO / "config/gasguard.example.toml").read_bytes()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640  # the uplinks' user reads it (group)
    shipped = sorted(p.name for p in (REPO / "config/profiles").glob("*.toml"))
    assert sorted(p.name for p in L.profiles_dir.glob("*.toml")) == shipped
    assert L.state_dir.is_dir() and stat.S_IMODE(L.state_dir.stat().st_mode) == 0o750
    for path in (
        "etc/systemd/system/gasguard-safety.service",
        "etc/systemd/system/gasguard-uplinks.service",
        "etc/systemd/system/gasguard-console@.service",
        "etc/systemd/system.conf.d/gasguard-watchdog.conf",
        "etc/systemd/journald.conf.d/gasguard.conf",
        "etc/udev/rules.d/99-gasguard-serial.rules",
    ):
        assert (prefix / path).is_file(), path
    unit = (prefix / "etc/systemd/system/gasguard-safety.service").read_text()
    assert unit == (REPO / "config/systemd/gasguard-safety.service").read_text()
    assert (L.state_dir / "uplinks").is_dir()  # the uplinks' own writable directory
    # Nothing system-wide was attempted in a prefix, and the person is told so.
    assert "skip    user and groups" in out and "would create system user 'gasguard'" in out
    assert "skip    udevadm reload, systemctl daemon-reload" in out
    # Pi 5 advice: its own overlay and GPIO backend.
    assert "dtoverlay=uart0-pi5" in out and "rpi-lgpio" in out and "RPi.GPIO does not work" in out
    assert "mini UART (/dev/ttyS0)" in out


def test_the_units_come_from_the_release_given_with_source(tmp_path: Path) -> None:
    """`sudo gasguard upgrade --source .` runs the INSTALLED gasguard, whose venv holds no
    config/: the new release's units, profiles and example come from the --source tree."""
    release = tmp_path / "release"
    shutil.copytree(REPO / "config", release / "config")
    unit = release / "config/systemd/gasguard-safety.service"
    unit.write_text(unit.read_text() + "# the new release's unit\n")
    prefix = tmp_path / "root"
    opts = options(prefix, fake_venv(tmp_path, "0.1.0"))
    opts.source = release
    lines: list[str] = []
    assert Installer(opts, out=lines.append).run() == 0, lines
    installed = prefix / "etc/systemd/system/gasguard-safety.service"
    assert installed.read_text().endswith("# the new release's unit\n")
    assert share_dir(release) == release.resolve() / "config"
    with pytest.raises(InstallError, match=r"not a gasguard source tree"):
        share_dir(tmp_path / "empty")


def test_the_config_is_never_overwritten_and_edited_profiles_are_kept(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    L = Layout(prefix)
    L.etc_dir.mkdir(parents=True)
    mine = "# this kitchen's config, written by its installer\n"
    L.config_file.write_text(mine)
    L.profiles_dir.mkdir()
    (L.profiles_dir / "generic-cn-kitchen.toml").write_text("# edited on site\n")
    # A config the version accepts is needed: a refusing check would stop the install.
    venv = fake_venv(tmp_path, "0.1.0")
    (venv / "bin" / "gasguard").write_text(
        '#!/bin/sh\nif [ "$1" = check-config ]; then exit 0; fi\nexit 1\n'
    )
    rc, out = install(prefix, venv)
    assert rc == 0, out
    assert L.config_file.read_text() == mine
    assert "kept    " in out and "(never overwritten)" in out
    assert (L.profiles_dir / "generic-cn-kitchen.toml").read_text() == "# edited on site\n"
    assert "differs from the shipped one" in out


def test_an_unusable_venv_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-venv"
    empty.mkdir()
    lines: list[str] = []
    with pytest.raises(InstallError, match="not a venv with gasguard installed"):
        Installer(options(tmp_path / "root", empty), out=lines.append).run()
    assert not (tmp_path / "root/opt/gasguard/current").exists()


# ---------------------------------------------------------------------------------------------
# Upgrades, with the real controller as the service
# ---------------------------------------------------------------------------------------------

DETECTORS = (
    SimDetector("wok-1", "hot-kitchen", "bus0", 1, "generic-cn-kitchen", "natural-gas"),
    SimDetector("fryer", "hot-kitchen", "bus1", 1, "honeywell-sensepoint-xcd", "natural-gas"),
)
BUSES = (SimBus("bus0", 9600, "N"), SimBus("bus1", 19200, "E"))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Layout, ProcessService]]:
    """A kitchen with gasguard 0.1.0 installed and running (its config in /etc/gasguard,
    its event log beside it)."""
    kitchen = SimulatedKitchen(
        tmp_path / "kitchen",
        buses=BUSES,
        detectors=DETECTORS,
        poll_period_s=0.2,
        comm_fault_timeout_s=2.0,
    )
    kitchen.start()
    kitchen.set_all_gas(1.0)
    prefix = tmp_path / "root"
    L = Layout(prefix)
    L.etc_dir.mkdir(parents=True)
    L.config_file.write_text(kitchen.config_path.read_text())  # data_dir "data" beside it
    rc, out = install(prefix, fake_venv(tmp_path, "0.1.0"))
    assert rc == 0, out
    service = ProcessService(L, L.config_file, tmp_path)
    service.start()
    ok, why = service.wait_ready(15.0, 0.2)
    assert ok, why
    try:
        yield L, service
    finally:
        service.stop()
        kitchen.stop()


def test_upgrade_keeps_config_and_data_and_switches(
    site: tuple[Layout, ProcessService], tmp_path: Path
) -> None:
    L, service = site
    config_before = L.config_file.read_bytes()
    db = L.events_db()
    assert db == L.etc_dir / "data" / EVENTS_DB
    rc, out = install(L.prefix, fake_venv(tmp_path, "0.2.0"), service)
    assert rc == 0, out
    assert os.readlink(L.current) == "versions/0.2.0"
    assert service.started == ["0.1.0", "0.2.0"] and service.ready == ["0.1.0", "0.2.0"]
    assert service.is_active()
    assert L.config_file.read_bytes() == config_before
    # The event log survived, was backed up first and is at this version's schema.
    backups = list(L.backups_dir.glob("events-*-0.1.0-before-0.2.0.db"))
    assert len(backups) == 1
    assert event_count(backups[0]) >= 1  # the first start of 0.1.0, at least
    assert event_count(db) > event_count(backups[0])  # and 0.2.0 carried on in the same log
    assert schema(db) == SCHEMA_VERSION
    assert "migrate " in out and f"schema {SCHEMA_VERSION}, nothing to migrate" in out
    assert (L.versions_dir / "0.1.0").exists(), "the previous version stays for a rollback"


def test_a_version_that_does_not_start_is_rolled_back(
    site: tuple[Layout, ProcessService], tmp_path: Path
) -> None:
    L, service = site
    rc, out = install(L.prefix, fake_venv(tmp_path, "0.3.0", run="crash"), service)
    assert rc == 1, out
    assert "FAIL    0.3.0: exited with 1 before READY; rolling back to 0.1.0" in out
    assert os.readlink(L.current) == "versions/0.1.0"
    assert service.started == ["0.1.0", "0.3.0", "0.1.0"]
    assert service.is_active(), "the old version runs again"
    assert "rolled back to 0.1.0" in out


def test_rollback_restores_the_event_log_the_old_version_can_read(
    site: tuple[Layout, ProcessService], tmp_path: Path
) -> None:
    L, service = site
    db = L.events_db()
    venv = fake_venv(tmp_path, "0.4.0", run="crash", bump_schema=True, records_into=db)
    rc, out = install(L.prefix, venv, service)
    assert rc == 1, out
    # What 0.4.0 recorded before it failed is in the restored log, numbers and all.
    faults = [e for e in EventStore.open_readonly(db).recent(1000) if e.kind == "fault.raised"]
    assert [e.details.get("why") for e in faults][-1:] == ["failed version"]
    assert "1 event(s) the failed version recorded carried over" in out
    # 0.4.0 migrated the log to a newer schema, then failed: 0.1.0 could not read it, so the
    # pre-upgrade log is back and the migrated one kept as evidence.
    assert schema(db) == SCHEMA_VERSION
    kept = list(db.parent.glob(f"{EVENTS_DB}.failed-0.4.0-*"))
    assert kept and any(
        schema(p) == SCHEMA_VERSION + 1 for p in kept if not p.name.endswith(("-wal", "-shm"))
    )
    assert "restore " in out
    assert service.ready[-1] == "0.1.0" and service.is_active()


def test_a_version_that_refuses_the_config_changes_nothing(
    site: tuple[Layout, ProcessService], tmp_path: Path
) -> None:
    L, service = site
    lines: list[str] = []
    with pytest.raises(InstallError, match="refuses the site config"):
        Installer(
            options(L.prefix, fake_venv(tmp_path, "0.5.0", refuse_config=True)),
            service,
            out=lines.append,
        ).run()
    assert not (L.versions_dir / "0.5.0").exists()
    assert os.readlink(L.current) == "versions/0.1.0"
    assert service.started == ["0.1.0"], "the running controller was never stopped"
    assert service.is_active()
    assert "removed " in "\n".join(lines)


def test_upgrade_asks_before_turning_the_gas_off(
    site: tuple[Layout, ProcessService], tmp_path: Path
) -> None:
    L, service = site
    asked: list[str] = []
    opts = options(L.prefix, fake_venv(tmp_path, "0.6.0"))
    opts.yes = False
    lines: list[str] = []

    def answer_no(question: str) -> bool:
        asked.append(question)
        return False

    rc = Installer(opts, service, out=lines.append, confirm=answer_no).run()
    assert rc == 1
    assert asked and "gas stays off until a local manual reset" in asked[0]
    assert "upgrade cancelled: nothing changed" in lines
    assert os.readlink(L.current) == "versions/0.1.0"
    assert not (L.versions_dir / "0.6.0").exists()
    assert service.started == ["0.1.0"] and service.is_active()


# ---------------------------------------------------------------------------------------------
# Board advice
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family"),
    [
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3"),
        ("Raspberry Pi 4 Model B Rev 1.4", "pi4"),
        ("Raspberry Pi 400 Rev 1.0", "pi4"),
        ("Raspberry Pi 5 Model B Rev 1.0", "pi5"),
        ("Raspberry Pi Compute Module 5 Rev 1.0", "pi5"),
        ("Raspberry Pi Zero 2 W Rev 1.0", "zero2w"),
        ("Raspberry Pi Zero W Rev 1.1", "pi-other"),
        ("Generic x86 board", "none"),
    ],
)
def test_model_family(text: str, family: str) -> None:
    assert model_family(text) == family


def test_model_is_read_from_the_device_tree(tmp_path: Path) -> None:
    assert detect_model(tmp_path) == PiModel("", "none")
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi Zero 2 W Rev 1.0\0")
    assert detect_model(tmp_path) == PiModel("Raspberry Pi Zero 2 W Rev 1.0", "zero2w")


def test_uart_advice_per_model() -> None:
    pi4 = PiModel("Raspberry Pi 4 Model B Rev 1.4", "pi4")
    text = " ".join(uart_advice(pi4))
    assert "add 'dtoverlay=disable-bt'" in text and "/dev/ttyAMA0" in text
    assert "no parity" in text
    done = " ".join(uart_advice(pi4, "[all]\ndtoverlay=disable-bt\n"))
    assert "already in /boot/firmware/config.txt" in done
    commented = " ".join(uart_advice(pi4, "#dtoverlay=disable-bt\n"))
    assert "add 'dtoverlay=disable-bt'" in commented
    zero = " ".join(uart_advice(PiModel("Raspberry Pi Zero 2 W Rev 1.0", "zero2w")))
    assert "dtoverlay=disable-bt" in zero
    pi5 = " ".join(uart_advice(PiModel("Raspberry Pi 5 Model B Rev 1.0", "pi5")))
    assert "dtoverlay=uart0-pi5" in pi5 and "disable-bt" not in pi5
    assert "USB RS-485" in " ".join(uart_advice(PiModel("", "none")))


def test_gpio_advice_per_model() -> None:
    pi4 = " ".join(gpio_advice(PiModel("Raspberry Pi 4 Model B", "pi4")))
    assert "python3-lgpio" in pi4 and "rpi-lgpio" not in pi4
    pi5 = " ".join(gpio_advice(PiModel("Raspberry Pi 5 Model B", "pi5")))
    assert "python3-lgpio" in pi5 and "rpi-lgpio" in pi5
