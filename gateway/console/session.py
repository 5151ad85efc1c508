"""The console on one terminal: banner, login, the command loop, logout; again and again.

Safety- and security-relevant behaviour:

* the console is a client of the controller (control socket); if it hangs, crashes or is
  never started, protection is unaffected;
* login needs a technician id and PIN (``auth``); 5 failures lock the console for 5 minutes;
  each failure also waits ``failure_delay_s`` (1 s) before the next prompt;
* a session idle for ``idle_s`` (10 min) is logged out; staged configuration changes of a
  session that ends are discarded (never applied by the next technician unknowingly);
* login, failed login, lockout, logout and every command are recorded in the controller's
  event log with the technician's id (through ``ControllerLink``, durable while the controller
  is away). A failed login records the id only when it is a known technician's: a PIN typed
  into the id field never reaches the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.api.control import ControlError
from gateway.config import load_config
from gateway.console.auth import IDLE_LOGOUT_S, SCRYPT_N, Technicians
from gateway.console.commands import Console
from gateway.console.hazards import local_today
from gateway.console.lineedit import Idle, LineEditor
from gateway.console.link import ControllerLink
from gateway.console.store import ConsoleStore
from gateway.console.terminal import Hangup, Terminal
from gateway.validate import ConfigError, read_toml

LOGIN_IDLE_S = 3600.0
PIN_IDLE_S = 60.0
DEFAULT_DATA_DIR = "/var/lib/gasguard"


@dataclass(frozen=True, slots=True)
class Place:
    """Where the console finds the controller and its data (from the config file)."""

    data_dir: Path
    control_socket: Path
    site_id: str
    site_name: str
    config_ok: bool


def locate(config_path: Path) -> Place:
    """The data directory and control socket of ``config_path``. A config that does not
    validate still yields them (read leniently, same defaults), so the console can be used to
    fix it."""
    try:
        cfg = load_config(config_path)
        return Place(cfg.data_dir, cfg.control_socket, cfg.site.id, cfg.site.name, True)
    except ConfigError:
        pass
    base = config_path.parent
    try:
        data = read_toml(config_path)
    except ConfigError:
        data = {}
    storage = data.get("storage") if isinstance(data.get("storage"), dict) else {}
    control = data.get("control") if isinstance(data.get("control"), dict) else {}
    site = data.get("site") if isinstance(data.get("site"), dict) else {}
    assert isinstance(storage, dict) and isinstance(control, dict) and isinstance(site, dict)
    data_dir = base / str(storage.get("data_dir") or DEFAULT_DATA_DIR)
    sock = control.get("socket")
    socket_path = base / sock if isinstance(sock, str) and sock else data_dir / "control.sock"
    return Place(data_dir, socket_path, str(site.get("id", "?")), str(site.get("name", "")), False)


class EditorIO:
    """``ConsoleIO`` on a line editor: questions time out with the session's idle time."""

    def __init__(self, editor: LineEditor, idle_s: float) -> None:
        self.editor = editor
        self.idle_s = idle_s

    def write(self, text: str) -> None:
        self.editor.write(text)

    def ask(self, prompt: str, *, secret: bool = False) -> str | None:
        self.editor.discard_typeahead()
        return self.editor.read_line(
            prompt, idle_s=self.idle_s, secret=secret, history=False, cancel=None
        )


class Session:
    """Serves one terminal until it hangs up (``Hangup`` propagates to the caller)."""

    def __init__(
        self,
        term: Terminal,
        config_path: Path,
        *,
        where: str = "console",
        cols: int = 80,
        idle_s: float = IDLE_LOGOUT_S,
        failure_delay_s: float = 1.0,
        scrypt_n: int = SCRYPT_N,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.term = term
        self.config_path = Path(config_path)
        self.where = where
        self.idle_s = idle_s
        self.failure_delay_s = failure_delay_s
        self.wall = wall
        self.editor = LineEditor(term, cols=cols, clock=clock)
        self.place = locate(self.config_path)
        self.store = ConsoleStore(self.place.data_dir)
        self.technicians = Technicians(self.store, clock=wall, scrypt_n=scrypt_n)
        self.link = ControllerLink(self.place.control_socket, self.store, wall=wall)
        self.io = EditorIO(self.editor, idle_s)
        self._show_banner = True

    def close(self) -> None:
        self.store.close()

    def say(self, text: str) -> None:
        self.editor.write(text if text.endswith("\n") else text + "\n")

    def _record(self, kind: str, details: dict[str, Any]) -> None:
        self.link.record(kind, "console", {"port": self.where, **details})

    # -- the loop --------------------------------------------------------------------------------

    def serve(self) -> None:
        """Login, commands, logout; forever (until the terminal hangs up)."""
        while True:
            technician = self.login()
            if technician is not None:
                self.shell(technician)
                self._show_banner = True

    def banner(self) -> None:
        place = locate(self.config_path)
        self.place = place
        lines = [
            "",
            f"gasguard technician console - site {place.site_id} {place.site_name}".rstrip(),
            "Protection runs on its own: this console only talks to the controller.",
        ]
        try:
            self.link.call("status", timeout_s=2.0)
        except ControlError as e:
            lines.append(f"NOTE: the controller does not answer ({e}).")
        if not place.config_ok:
            lines.append(f"NOTE: {self.config_path} does not validate; log in to fix it.")
        self.say("\n".join(lines))

    def login(self) -> str | None:
        """One login attempt; the technician's id, or None."""
        if self._show_banner:
            self.banner()
            self._show_banner = False
        try:
            typed = self.editor.read_line("login: ", idle_s=LOGIN_IDLE_S, history=False)
        except Idle:
            self._show_banner = True
            return None
        if typed is None or not typed.strip():
            self._show_banner = True
            return None
        tech_id = typed.strip()
        if self.technicians.count() == 0:
            self.say(
                "No technician is set up yet. First-time set-up, on the Pi itself:\n"
                f"  sudo -u gasguard gasguard console --config {self.config_path} "
                "--add-technician ID\n(see docs/console.md)"
            )
            return None
        locked = self.technicians.locked_for()
        if locked > 0:
            self.say(self.technicians.login(tech_id, "").message)
            return None
        try:
            pin = self.editor.read_line("PIN: ", idle_s=PIN_IDLE_S, secret=True, history=False)
        except Idle:
            self.say("")
            return None
        if pin is None:
            return None
        known = self.technicians.exists(tech_id)
        previous = self.technicians.last_login(tech_id) if known else None
        result = self.technicians.login(tech_id, pin)
        if result.ok:
            self._record("console.login", {"technician": tech_id})
            self.say(
                f"Welcome, {tech_id}."
                + (
                    f" Previous login {time.strftime('%Y-%m-%d %H:%M', time.localtime(previous))}."
                    if previous
                    else ""
                )
            )
            return tech_id
        self._record(
            "console.login_failed",
            {"technician": tech_id if known else "(unknown id)", "failures": result.failures},
        )
        if result.lockout_started:
            self._record(
                "console.lockout",
                {"failures": result.failures, "locked_s": round(result.locked_for_s)},
            )
        self.say(result.message)
        time.sleep(self.failure_delay_s)
        return None

    def shell(self, technician: str) -> None:
        console = Console(
            config_path=self.config_path,
            data_dir=self.place.data_dir,
            store=self.store,
            link=self.link,
            io=self.io,
            technician=technician,
            technicians=self.technicians,
            wall=self.wall,
            today=local_today,
        )
        started = self.wall()
        for overdue in console.report_overdue():
            self.say(overdue)
        self.say("Type help for the commands, logout (or ^D) to end.")
        reason = "logout"
        try:
            while True:
                self.link.flush()
                typed = self.editor.read_line(
                    console.prompt(), idle_s=self.idle_s, completer=console.complete
                )
                if typed is None or not console.execute(typed):
                    break
        except Idle:
            reason = "idle"
            self.say(f"\nLogged out: no key for {self.idle_s / 60:g} min.")
        except Hangup:
            reason = "hangup"
            raise
        except BaseException:  # SIGTERM (SystemExit), ^C of a foreground console
            reason = "stopped"
            raise
        finally:
            staged = console.editor.discard()
            if staged and reason in ("logout", "idle"):
                self.say("Staged configuration changes were discarded (not applied).")
            self.editor.history.clear()
            self._record(
                "console.logout",
                {
                    "technician": technician,
                    "reason": reason,
                    "session_s": round(self.wall() - started),
                    "staged_discarded": staged,
                },
            )
            if reason == "logout":
                self.say(f"Goodbye, {technician}.")
