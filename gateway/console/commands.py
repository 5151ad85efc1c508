"""The console's commands: parsing, dispatch, completion, help, and what each one does.

``Console.execute(line)`` runs one line typed by a logged-in technician. It never raises for
anything the technician types (unknown commands, bad arguments, unbalanced quotes, garbage):
the answer is a clear error and nothing changes. Every recognised command is audited in the
controller's event log (``console.command``) with the technician's id and its outcome.

Everything that acts on the kitchen goes through the control socket (``ControllerLink``):
protection never pauses while a technician works. Actions that close or open the gas,
suppress alarms, write the configuration or change who may log in ask for a typed ``yes``
first; the question says what will happen.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shlex
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.api.control import ControlError
from gateway.api.records import MAX_DETAILS_BYTES
from gateway.api.render import detector_age, detector_reading, duration, iso_utc
from gateway.config import Config, load_config
from gateway.console import configedit as ce
from gateway.console.auth import AuthError, LoginResult, Technicians, id_problem
from gateway.console.commissioning import (
    Answer,
    ChecklistItem,
    CommissioningBook,
    build_record,
    checklist,
    new_record_id,
    sign,
    signature_ok,
)
from gateway.console.cylindercmds import (
    cmd_cylinder_add,
    cmd_cylinder_remove,
    cmd_cylinder_set,
    cmd_cylinders,
)
from gateway.console.cylinders import CylinderError, CylinderRegister
from gateway.console.hazards import (
    HazardError,
    HazardLedger,
    clean_text,
    hazard_id,
    local_today,
    overdue_details,
    parse_deadline,
)
from gateway.console.lineedit import Idle, printable
from gateway.console.link import ControllerLink
from gateway.console.store import ConsoleStore, site_key
from gateway.console.terminal import Hangup
from gateway.log import error
from gateway.profiles import Profile
from gateway.validate import ConfigError

MAX_EVENTS = 1000
VALVE_TEST_WINDOW_S = 3600.0  # commissioning accepts a valve test from the last hour
SIGN_ATTEMPTS = 3
CONFIRM_WORD = "yes"


class ConsoleIO(Protocol):
    """What a command needs from the terminal: write text, ask one line (None: cancelled)."""

    def write(self, text: str) -> None: ...

    def ask(self, prompt: str, *, secret: bool = False) -> str | None: ...


class Failed(Exception):
    """A command that could not do what was asked: its message is shown as the error, and
    nothing was changed by it."""


class Cancelled(Exception):
    """The technician declined a confirmation or abandoned a dialogue: nothing changed."""


Handler = Callable[["Console", list[str]], None]


@dataclass(frozen=True, slots=True)
class Command:
    """One command. ``words`` is how it is typed (``("config", "apply")``); ``args`` names
    what completes each positional argument; ``kv`` the table whose ``key=value`` words it
    takes."""

    words: tuple[str, ...]
    usage: str
    summary: str
    help: str
    handler: Handler
    args: tuple[str, ...] = ()
    kv: str | None = None
    audit: bool = True

    @property
    def name(self) -> str:
        return " ".join(self.words)


@dataclass(slots=True)
class Outcome:
    text: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)


def confirm(io_: ConsoleIO, question: str) -> None:
    """Show ``question``, ask for a typed 'yes'; Cancelled otherwise."""
    io_.write(wrap(question.rstrip("\n")) + "\n")
    answer = io_.ask(f"Type {CONFIRM_WORD} to go on: ")
    if answer is None or answer.strip().lower() != CONFIRM_WORD:
        raise Cancelled("not confirmed: nothing done")


def _int(text: str, what: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise Failed(f"{what} {text[:20]!r}: must be a whole number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise Failed(f"{what} {value}: must be from {lo} to {hi}")
    return value


def _utc(seconds: float | None) -> str:
    return "-" if seconds is None else iso_utc(seconds, "seconds")


WIDTH = 79  # a serial terminal is 80 columns; the last one is left free (no auto-wrap)


def wrap(text: str, width: int = WIDTH) -> str:
    """Each line of ``text`` wrapped at word boundaries to ``width`` columns; continuation
    lines are indented two more than the line they continue."""
    out: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip(" ")))
        out += textwrap.wrap(
            line,
            width,
            subsequent_indent=indent + "  ",
            break_long_words=False,
            break_on_hyphens=False,
        ) or [line]
    return "\n".join(out)


def _table(headers: list[str], rows: list[list[str]], width: int = WIDTH) -> str:
    """Left-aligned columns; the last column is cut to fit ``width``."""
    if rows:
        fixed = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
        room = max(12, width - sum(fixed) - 2 * len(fixed))
        rows = [[*r[:-1], r[-1] if len(r[-1]) <= room else r[-1][: room - 3] + "..."] for r in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in [headers, *rows]
    ]
    return "\n".join(lines) + "\n"


def gas_state(status: dict[str, Any]) -> str:
    """One word for the prompt: ALARM, FAULT, GAS OFF, INHIBIT or OK (SIM in front for the
    simulated kitchen)."""
    if status.get("alarms"):
        state = "ALARM"
    elif status.get("faults"):
        state = "FAULT"
    elif any(v.get("commanded") != "open" for v in status.get("valves") or []):
        state = "GAS OFF"
    elif any(d.get("state") == "inhibited" for d in status.get("detectors") or []):
        state = "INHIBIT"
    else:
        state = "OK"
    return f"SIM {state}" if status.get("simulated") else state


class Console:
    """One logged-in technician's console. ``io`` is the terminal (or a script in tests)."""

    def __init__(
        self,
        *,
        config_path: Path,
        data_dir: Path,
        store: ConsoleStore,
        link: ControllerLink,
        io: ConsoleIO,
        technician: str,
        technicians: Technicians,
        wall: Callable[[], float] = time.time,
        today: Callable[[], dt.date] = local_today,
        valve_wait_extra_s: float = 2.0,
    ) -> None:
        self.config_path = Path(config_path)
        self.data_dir = Path(data_dir)
        self.store = store
        self.link = link
        self.io = io
        self.technician = technician
        self.technicians = technicians
        self.wall = wall
        self.today = today
        self.valve_wait_extra_s = valve_wait_extra_s
        self.editor = ce.ConfigEditor(self.config_path)
        self.hazards = HazardLedger(store, wall=wall, today=today)
        self.cylinders = CylinderRegister(store, wall=wall)
        self.book = CommissioningBook(store)
        self.logged_in_at = wall()
        self.commands = build_commands()
        self._by_words = {c.words: c for c in self.commands}
        self._config_cache: tuple[tuple[int, int, int], Config] | None = None

    # -- helpers ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.io.write(text if text.endswith("\n") else text + "\n")

    def config(self) -> Config:
        """The configuration in force on disk (cached while the file is unchanged)."""
        try:
            st = self.config_path.stat()
            mtime = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError as e:
            raise Failed(f"{self.config_path}: cannot read the configuration: {e}") from None
        if self._config_cache is not None and self._config_cache[0] == mtime:
            return self._config_cache[1]
        try:
            cfg = load_config(self.config_path)
        except ConfigError as e:
            raise Failed(
                f"{self.config_path} has {len(e.problems)} problem(s): "
                + "; ".join(str(p) for p in e.problems[:3])
            ) from None
        self._config_cache = (mtime, cfg)
        return cfg

    def call(self, cmd: str, *, timeout_s: float | None = None, **args: Any) -> dict[str, Any]:
        try:
            return self.link.call(cmd, timeout_s=timeout_s, **args)
        except ControlError as e:
            raise Failed(f"controller: {e}") from None

    def record(self, kind: str, source: str, details: dict[str, Any]) -> None:
        details = {"technician": self.technician, **details}
        self.link.record(kind, source, details)

    def names(self, what: str) -> list[str]:
        """Names for completion: detectors, valves, buses, zones (staged ones included)."""
        try:
            doc = self.editor.document()
        except Exception:
            return []
        if what in ("detector", "valve", "bus"):
            return [n for n in ce.entry_names(doc, what) if n]
        if what == "zone":
            zones = set()
            arr = doc.get("detector")
            for t in arr if isinstance(arr, list) else []:
                zone = t.get("zone") if isinstance(t, dict) else None
                if isinstance(zone, str):
                    zones.add(zone)
            return sorted(zones)
        return []

    def profiles(self) -> dict[str, Profile]:
        from gateway.drivers.scan import profiles_for

        try:
            return profiles_for(self.config_path)
        except ConfigError as e:
            raise Failed(f"detector profiles: {e}") from None

    # -- dispatch --------------------------------------------------------------------------------

    def find(self, tokens: list[str]) -> tuple[Command | None, int]:
        """The command the tokens start with (longest match) and how many words it used."""
        for n in (3, 2, 1):
            cmd = self._by_words.get(tuple(t.lower() for t in tokens[:n]))
            if cmd is not None and len(tokens) >= n:
                return cmd, n
        return None, 0

    def execute(self, line: str) -> bool:
        """Run one line; False when the technician logged out."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        try:
            tokens = shlex.split(line)
        except ValueError as e:
            self.say(f'error: {e} (quote text with spaces in "...")')
            return True
        if not tokens:
            return True
        first = tokens[0].lower()
        if first in ("exit", "quit", "logout"):
            return False
        if first == "?":
            tokens[0] = "help"
        cmd, used = self.find(tokens)
        if cmd is None:
            group = [c for c in self.commands if c.words[0] == first]
            if group:
                self.say(
                    f"error: {first} what? one of: "
                    + ", ".join(" ".join(c.words[1:]) for c in group if len(c.words) > 1)
                    + f"  (help {first})"
                )
            else:
                self.say(
                    f"error: unknown command {printable(tokens[0])[:40]!r}; type help for the list"
                )
            return True
        args = tokens[used:]
        outcome = "ok"
        try:
            cmd.handler(self, args)
        except (Idle, Hangup):
            raise
        except Cancelled as e:
            outcome = "cancelled"
            self.say(str(e))
        except Failed as e:
            outcome = f"error: {e}"
            self.say(wrap(f"error: {e}"))
        except (ce.ConfigEditError, AuthError, HazardError, CylinderError) as e:
            outcome = f"error: {e}"
            self.say(wrap(f"error: {e}"))
            for p in getattr(e, "problems", []):
                self.say(f"  {p}")
        except Exception as e:  # a bug in one command must not end the console
            outcome = f"internal error: {type(e).__name__}: {e}"
            self.say(f"internal error (nothing more was done): {type(e).__name__}: {e}")
        if cmd.audit:
            try:
                self.record(
                    "console.command",
                    "console",
                    {"command": printable(line)[:300], "outcome": outcome[:300]},
                )
            except Exception as e:  # the disk under console.db failed: say so, go on
                error("console.audit_failed", command=printable(line)[:300], error=repr(e))
                self.say(f"WARNING: this command could not be recorded: {e}")
        return True

    # -- completion ------------------------------------------------------------------------------

    def complete(self, before: str) -> tuple[int, list[str]]:
        """(start of the word under the cursor, candidates) for Tab."""
        start = max(before.rfind(" ") + 1, 0)
        words = before[:start].split()
        word = before[start:]
        if not words:
            firsts = sorted({c.words[0] for c in self.commands} | {"logout", "exit"})
            return start, [w for w in firsts if w.startswith(word)]
        if words[0] == "help":
            firsts = sorted({c.words[0] for c in self.commands})
            return start, [w for w in firsts if w.startswith(word)] if len(words) == 1 else []
        # Subcommand words.
        subs = [
            c.words[len(words)]
            for c in self.commands
            if len(c.words) > len(words) and list(c.words[: len(words)]) == words
        ]
        if subs:
            return start, sorted({s for s in subs if s.startswith(word)})
        cmd, used = self.find(words)
        if cmd is None:
            return start, []
        position = len(words) - used
        if position < len(cmd.args):
            return start, [c for c in self._source(cmd.args[position]) if c.startswith(word)]
        if cmd.kv is not None:
            key, sep, _ = word.partition("=")
            if sep:
                return start, [f"{key}={v}" for v in self._values(key)]
            table = cmd.kv
            return start, [f"{k}=" for k in ce.SCHEMAS[table] if k.startswith(word)]
        return start, []

    def _source(self, name: str) -> list[str]:
        if name in ("detector", "valve", "bus"):
            return self.names(name)
        if name == "uplink":
            return list(ce.UPLINKS)
        if name == "hazard":
            return [h.label for h in self.hazards.hazards()]
        if name == "cylinder":
            return [cyl.code for cyl in self.cylinders.cylinders()]
        if name == "record":
            return [r.id for r in self.book.records()]
        if name == "format":
            return ["csv", "jsonl"]
        if name == "lines":
            return ["configured", "defaults", "all"]
        if name == "all":
            return ["all"]
        return []

    def _values(self, key: str) -> list[str]:
        if key == "profile":
            try:
                return sorted(self.profiles())
            except Failed:
                return []
        if key == "gas":
            return ["natural-gas", "lpg"]
        if key == "bus":
            return self.names("bus")
        if key in ("zone", "zones"):
            return self.names("zone")
        if key == "kind":
            return ["held-open", "trip-to-close"]
        if key == "parity":
            return ["N", "E", "O"]
        if key == "feedback_closed_level":
            return ["high", "low"]
        return []

    # -- the prompt ------------------------------------------------------------------------------

    def prompt(self) -> str:
        try:
            status = self.link.call("status", timeout_s=2.0)
            site = str(status.get("site", {}).get("id", "?"))
            state = gas_state(status)
        except ControlError:
            site, state = self._site_id(), "NO CONTROLLER"
        staged = " (config staged)" if self.editor.staged else ""
        return f"{printable(site)} [{state}] {self.technician}{staged}> "

    def _site_id(self) -> str:
        try:
            return self.config().site.id
        except Failed:
            return "?"

    def report_overdue(self) -> list[str]:
        """Lines about overdue hazards; the ones not yet reported upstream are reported."""
        today = self.today()
        for hazard in self.hazards.claim_overdue_reports():
            self.link.record("hazard.overdue", hazard.label, overdue_details(hazard, today))
        return [
            f"  OVERDUE {h.label} due {h.deadline}: {h.item}: {h.remark[:50]} "
            f"(responsible: {h.responsible})"
            for h in self.hazards.overdue()
        ]


# =============================================================================================
# The commands
# =============================================================================================


def cmd_help(c: Console, args: list[str]) -> None:
    if not args:
        lines = ["Commands (help COMMAND for details):"]
        entries = [(cmd.usage, cmd.summary) for cmd in c.commands]
        entries.append(("logout", "end the session (also exit, quit, ^D)"))
        for usage, summary in entries:
            if len(usage) <= 32:
                lines.append(f"  {usage:<32} {summary}")
            else:
                lines.append(f"  {usage}")
                lines.append(f"  {'':<32} {summary}")
        c.say("\n".join(lines))
        return
    words = [a.lower() for a in args]
    matches = [cmd for cmd in c.commands if list(cmd.words[: len(words)]) == words]
    if not matches:
        raise Failed(f"no command {' '.join(args)[:40]!r}; type help for the list")
    out = []
    for cmd in matches:
        out.append(f"{cmd.usage}\n  {cmd.summary}")
        if cmd.help:
            out.append("\n".join("  " + line for line in cmd.help.strip().splitlines()))
        out.append("")
    c.say("\n".join(out))


def cmd_status(c: Console, args: list[str]) -> None:
    if args:
        raise Failed("status takes no arguments")
    lines: list[str] = []
    try:
        st = c.link.call("status")
    except ControlError as e:
        lines.append(f"Controller: NOT REACHABLE ({e})")
        st = None
    if st is not None:
        site = st.get("site") or {}
        sim = "  (SIMULATED kitchen)" if st.get("simulated") else ""
        lines.append(f"Site:      {site.get('id', '?')}  {site.get('name', '')}{sim}")
        lines.append(f"Time:      {_utc(st.get('now_utc'))}  up {duration(st.get('uptime_s'))}")
        valves = st.get("valves") or []
        closed = [v for v in valves if v.get("commanded") != "open"]
        if closed:
            lines.append("Gas:       SHUT OFF at " + ", ".join(str(v.get("name")) for v in closed))
            lines += [f"           {v.get('name')}: {v.get('reason') or 'closed'}" for v in closed]
        else:
            lines.append("Gas:       on (every valve open)")
        for title, items in (("Alarms", st.get("alarms")), ("Faults", st.get("faults"))):
            listed = [str(i) for i in items or []] or ["none"]
            lines.append(f"{title + ':':<11}{listed[0]}")
            lines += [" " * 11 + i for i in listed[1:]]
        blockers = st.get("reset_blockers") or []
        if blockers:
            lines.append("Reset:     refused until:")
            lines += [" " * 11 + str(b) for b in blockers]
        else:
            lines.append("Reset:     possible (every detector normal)")
        inhibited = [
            f"{d.get('name')} ({duration(d.get('inhibited_s'))} left)"
            for d in st.get("detectors") or []
            if d.get("state") == "inhibited"
        ]
        if inhibited:
            lines.append("Inhibited: " + ", ".join(inhibited))
        uplinks = st.get("uplinks")
        if isinstance(uplinks, dict) and uplinks:
            for i, name in enumerate(sorted(uplinks)):
                state = uplinks[name] if isinstance(uplinks[name], dict) else {}
                link = "connected" if state.get("connected") else "NOT CONNECTED"
                if "connected" not in state:
                    link = "ready" if not state.get("last_error") else "FAILING"
                error = f" ({state['last_error']})" if state.get("last_error") else ""
                pending = state.get("pending")
                waiting = f", {pending} waiting" if isinstance(pending, int) else ""
                lines.append(f"{'Uplinks:' if i == 0 else '':<11}{name} {link}{waiting}{error}")
        sounder = "on" if st.get("sounder") else "off"
        lines.append(f"Sounder:   {sounder}{' (silenced)' if st.get('silenced') else ''}")
    open_hazards = c.hazards.hazards()
    overdue = c.hazards.overdue()
    lines.append(f"Hazards:   {len(open_hazards)} open, {len(overdue)} overdue")
    cylinders = c.cylinders.cylinders()
    if cylinders:
        stored = sum(x.kg for x in cylinders if x.state != "empty")
        lines.append(f"Cylinders: {len(cylinders)} recorded, {stored} kg of LPG not empty")
    lines += [f"           OVERDUE {h.label} due {h.deadline}: {h.remark[:50]}" for h in overdue]
    if c.editor.staged:
        lines.append("Config:    changes staged, not applied (config diff / config apply)")
    queued = c.link.waiting()
    if queued:
        lines.append(f"Console:   {queued} event(s) waiting for the controller")
    c.say(wrap("\n".join(lines)))


def cmd_detectors(c: Console, args: list[str]) -> None:
    if args:
        raise Failed("detectors takes no arguments")
    st = c.call("status")
    rows = [
        [
            str(d.get("name")),
            str(d.get("zone")),
            f"{d.get('bus')}/{d.get('address')}",
            str(d.get("gas")),
            detector_reading(d),
            str(d.get("state")),
            detector_age(d),
        ]
        for d in st.get("detectors") or []
    ]
    c.say(_table(["NAME", "ZONE", "BUS/ADDR", "GAS", "READING", "STATE", "LAST GOOD"], rows))


def cmd_events(c: Console, args: list[str]) -> None:
    limit, fmt = 20, "table"
    for a in args:
        if a.lower() in ("csv", "jsonl"):
            fmt = a.lower()
        else:
            limit = _int(a, "N", 1, MAX_EVENTS)
    events = c.call("events", limit=limit).get("events") or []
    if fmt == "jsonl":
        c.say("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events) or "\n")
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["seq", "utc", "kind", "source", "details"])
        for e in events:
            writer.writerow(
                [
                    e.get("seq"),
                    iso_utc(e.get("utc")),
                    e.get("kind"),
                    e.get("source"),
                    json.dumps(e.get("details"), ensure_ascii=False, separators=(",", ":")),
                ]
            )
        c.say(buf.getvalue())
        return
    if not events:
        c.say("no events")
        return
    rows = []
    for e in events:
        details = e.get("details") if isinstance(e.get("details"), dict) else {}
        assert isinstance(details, dict)
        # Who did it is in nearly every console event: shown last, where it may be cut.
        keys = sorted(details, key=lambda k: k == "technician")
        text = " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
            for k in keys
            if k not in ("diff", "record", "signature")
            for v in [details[k]]
        )
        rows.append(
            [
                iso_utc(e.get("utc"), "seconds")[5:].replace("T", " "),
                str(e.get("kind")),
                str(e.get("source")),
                text,
            ]
        )
    c.say(_table(["UTC", "KIND", "SOURCE", "DETAILS"], rows))


def cmd_time(c: Console, args: list[str]) -> None:
    if args:
        raise Failed("time takes no arguments")
    now = c.wall()
    local = dt.datetime.fromtimestamp(now).astimezone()
    lines = [
        f"Local:      {local.strftime('%Y-%m-%d %H:%M:%S %Z (UTC%z)')}",
        f"UTC:        {_utc(now)}",
    ]
    try:
        st = c.link.call("status", timeout_s=2.0)
        ctl = st.get("now_utc")
        if isinstance(ctl, int | float):
            skew = float(ctl) - now
            note = "" if abs(skew) < 2.0 else "  (clocks disagree: check NTP)"
            lines.append(f"Controller: {_utc(ctl)} ({skew:+.1f} s){note}")
    except ControlError as e:
        lines.append(f"Controller: not reachable ({e})")
    c.say("\n".join(lines))


def cmd_whoami(c: Console, args: list[str]) -> None:
    c.say(
        f"{c.technician}, logged in since {_utc(c.logged_in_at)} "
        f"({duration(c.wall() - c.logged_in_at)})"
    )


# -- operator actions ----------------------------------------------------------------------------


def _answer_text(answer: dict[str, Any]) -> str:
    if answer.get("accepted"):
        return "accepted"
    reasons = "; ".join(str(r) for r in answer.get("reasons") or [])
    return f"refused: {reasons}" if reasons else "refused"


def cmd_silence(c: Console, args: list[str]) -> None:
    if args:
        raise Failed("silence takes no arguments")
    c.say("silence: " + _answer_text(c.call("silence", operator=c.technician)))


def cmd_reset(c: Console, args: list[str]) -> None:
    if args:
        raise Failed("reset takes no arguments")
    st = c.call("status")
    if not st.get("reset_blockers"):
        closed = [v.get("name") for v in st.get("valves") or [] if v.get("commanded") != "open"]
        what = f"reopens the gas at {', '.join(map(str, closed))}" if closed else "clears latches"
        confirm(
            c.io,
            f"The manual reset {what}. Check on site that every burner is off and the "
            "cause of the alarm is gone.",
        )
    answer = c.call("reset", operator=c.technician)
    if answer.get("accepted"):
        c.say("reset accepted: latches cleared, valves may open")
    else:
        raise Failed(
            "reset refused (nothing opened): " + "; ".join(map(str, answer.get("reasons") or []))
        )


def cmd_clear_orphan(c: Console, args: list[str]) -> None:
    if len(args) < 2:
        raise Failed("usage: clear-orphan DETECTOR|BUS:ADDRESS REASON...")
    latch, reason = args[0], " ".join(args[1:])
    orphans = c.call("status").get("orphan_latches") or []
    if not orphans:
        raise Failed("there is no orphan latch")
    confirm(
        c.io,
        f"Clearing the orphan latch of {latch} lets a reset reopen the gas without that sensor. "
        "Check on site that the gas is gone at its old place and that the detector now there "
        "is configured. Your name and the reason are recorded.",
    )
    answer = c.call("clear_orphan", latch=latch, reason=reason, operator=c.technician)
    if not answer.get("accepted"):
        raise Failed(_answer_text(answer))
    c.say(f"{latch}: orphan latch cleared (recorded with your reason)")


def cmd_inhibit(c: Console, args: list[str]) -> None:
    if len(args) != 2:
        raise Failed("usage: inhibit DETECTOR MINUTES (0 ends it; at most 60)")
    detector, minutes_text = args
    minutes = _int(minutes_text, "MINUTES", 0, 60)
    known = [d.name for d in c.config().detectors]
    if detector not in known:
        raise Failed(f"no detector {detector[:40]!r}; detectors: {', '.join(known)}")
    if minutes:
        confirm(
            c.io,
            f"For {minutes} min the alarms of {detector} are reported as test alarms and do not "
            "close the gas (its faults still do). It ends by itself.",
        )
    answer = c.call("inhibit", detector=detector, minutes=minutes, operator=c.technician)
    if not answer.get("accepted"):
        raise Failed(_answer_text(answer))
    c.say(f"{detector}: inhibited for {minutes} min" if minutes else f"{detector}: inhibit ended")


@dataclass(frozen=True, slots=True)
class ValveTest:
    ok: bool
    text: str
    evidence: dict[str, Any] | None


def _last_seq(c: Console) -> int:
    events = c.call("events", limit=1).get("events") or []
    return int(events[-1]["seq"]) if events else 0


def _events_after(c: Console, seq: int) -> list[dict[str, Any]]:
    events = c.call("events", limit=200).get("events") or []
    return [e for e in events if int(e.get("seq", 0)) > seq]


def _not_open(c: Console, valve: str) -> str | None:
    """Why a valve test of ``valve`` cannot measure anything now, or None."""
    st = c.call("status")
    v = next((v for v in st.get("valves") or [] if v.get("name") == valve), None)
    if v is None:
        return f"the controller does not know valve {valve!r}"
    if v.get("commanded") != "open":
        return (
            f"{valve} is closed ({v.get('reason')}): nothing to test. Open it with a reset "
            "(every detector normal), then test again"
        )
    if v.get("feedback") == "closed":
        return (
            f"{valve} is commanded open but its contact still reads closed: wait until it "
            "has opened (status), then test again"
        )
    return None


def run_valve_test(c: Console, valve: str) -> ValveTest:
    """Close ``valve`` through the controller and watch for its position contact."""
    cfg = c.config()
    vc = next((v for v in cfg.valves if v.name == valve), None)
    if vc is None:
        raise Failed(f"no valve {valve[:40]!r}; valves: {', '.join(v.name for v in cfg.valves)}")
    problem = _not_open(c, valve)
    if problem:
        return ValveTest(False, problem, None)
    before = _last_seq(c)
    answer = c.call("test_valve", valve=valve, operator=c.technician)
    if not answer.get("accepted"):
        return ValveTest(False, _answer_text(answer), None)
    events = answer.get("events") or []
    test: dict[str, Any] = next((e for e in events if e.get("kind") == "operator.valve_test"), {})
    if not (test.get("details") or {}).get("was_open", False):
        return ValveTest(False, f"{valve} was already closed: nothing to test", None)
    if vc.feedback_pin is None:
        return ValveTest(
            True,
            f"{valve} commanded closed; it has no position contact: check at the valve that it "
            "closed",
            {"valve": valve, "confirmed": False, "contact": False},
        )
    deadline = time.monotonic() + vc.close_confirm_s + c.valve_wait_extra_s
    while time.monotonic() < deadline:
        for e in _events_after(c, before):
            if e.get("source") != valve:
                continue
            details = e.get("details") or {}
            if e.get("kind") == "valve.closed" and details.get("after_s") is not None:
                after = float(details["after_s"])
                slow = " (slower than 1 s: check the valve)" if after > 1.0 else ""
                return ValveTest(
                    True,
                    f"{valve} closed, confirmed by its position contact after {after:.2f} s{slow}",
                    {
                        "valve": valve,
                        "confirmed": True,
                        "after_s": after,
                        "seq": e.get("seq"),
                        "utc": e.get("utc"),
                    },
                )
            if e.get("kind") == "valve.failed":
                return ValveTest(
                    False,
                    f"{valve} FAILED: {details.get('text', 'valve fault')}",
                    {"valve": valve, "confirmed": False, "failed": details.get("text")},
                )
        time.sleep(0.1)
    return ValveTest(
        False,
        f"{valve}: no closed confirmation within {vc.close_confirm_s + c.valve_wait_extra_s:g} s",
        {"valve": valve, "confirmed": False},
    )


def cmd_test_valve(c: Console, args: list[str]) -> None:
    if len(args) != 1:
        raise Failed("usage: test valve VALVE")
    valve = args[0]
    names = [v.name for v in c.config().valves]
    if valve not in names:
        raise Failed(f"no valve {valve[:40]!r}; valves: {', '.join(names)}")
    problem = _not_open(c, valve)
    if problem:
        raise Failed(problem)
    confirm(
        c.io,
        f"This closes the gas at {valve} now. It stays closed until a manual reset.",
    )
    result = run_valve_test(c, valve)
    if not result.ok:
        raise Failed(result.text)
    c.say(result.text + "\nThe gas stays off until a manual reset (reset).")


def cmd_test_sounder(c: Console, args: list[str]) -> None:
    seconds = _int(args[0], "SECONDS", 1, 30) if args else 3
    if len(args) > 1:
        raise Failed("usage: test sounder [SECONDS]")
    confirm(c.io, f"The sounder sounds for {seconds} s (tell the kitchen first).")
    answer = c.call("test_sounder", seconds=seconds, operator=c.technician)
    if not answer.get("accepted"):
        raise Failed(_answer_text(answer))
    c.say(f"sounder on for {seconds} s")


def cmd_test_uplink(c: Console, args: list[str]) -> None:
    from gateway.console.uplinktest import run_uplink_test

    if args:
        raise Failed("test uplink takes no arguments")
    for line in run_uplink_test(c):
        c.say(wrap(line))


def cmd_scan(c: Console, args: list[str]) -> None:
    if not args:
        raise Failed("usage: scan BUS [FIRST-LAST] [configured|defaults|all]")
    bus = args[0]
    cfg = c.config()
    buses = {b.name: b for b in cfg.buses}
    if bus not in buses:
        raise Failed(f"no bus {bus[:40]!r}; buses: {', '.join(buses)}")
    first, last, lines = 1, 16, "defaults"
    for a in args[1:]:
        if a in ("configured", "defaults", "all"):
            lines = a
        elif "-" in a:
            lo, _, hi = a.partition("-")
            first = _int(lo, "FIRST", 1, 247)
            last = _int(hi, "LAST", first, 247)
        else:
            first = last = _int(a, "ADDRESS", 1, 247)
    budget = 60
    on_bus = [d.name for d in cfg.detectors if d.bus == bus]
    timeout = cfg.timings.comm_fault_timeout_s
    warn = (
        f"While scanning, {bus} is not polled: {', '.join(on_bus)} are not read.\n"
        f"After {timeout:g} s of silence they are comm faults and their valves close\n"
        "(fail safe); the gas then stays off until a manual reset."
        if on_bus
        else f"{bus} has no detectors configured; nothing stops."
    )
    confirm(
        c.io,
        f"Scan {bus} ({buses[bus].port}): addresses {first}-{last}, {lines} line settings,\n"
        f"at most {budget} s.\n{warn}",
    )
    c.say("scanning ...")
    answer = c.call(
        "scan",
        timeout_s=budget + 20.0,
        bus=bus,
        first=first,
        last=last,
        lines=lines,
        budget_s=budget,
        operator=c.technician,
    )
    found = answer.get("found") or []
    rows = [
        [
            str(f.get("address")),
            str(f.get("line")),
            str(f.get("profile") or "? (answers)"),
            "-" if f.get("lel") is None else f"{f['lel']:.1f} %LEL",
            str(f.get("configured_as") or "NEW"),
        ]
        for f in found
    ]
    out = [
        f"scan of {bus}: {len(found)} answering, {answer.get('probes')} probes in "
        f"{answer.get('elapsed_s')} s (lines tried: {', '.join(answer.get('lines_tried') or [])})"
    ]
    if rows:
        out.append(
            _table(["ADDR", "LINE", "PROFILE (guess)", "READING", "CONFIGURED AS"], rows).rstrip()
        )
    for err in answer.get("errors") or []:
        out.append(f"  port error: {err}")
    if answer.get("stopped"):
        out.append(f"  stopped early: {answer['stopped']}")
    new = [f for f in found if not f.get("configured_as") and f.get("profile")]
    for f in new:
        out.append(
            f"  to add: detector add NAME bus={bus} address={f['address']} "
            f"profile={f['profile']}\n          zone=ZONE gas=natural-gas|lpg low_lel=20 "
            "high_lel=50"
        )
    if not answer.get("poller_restarted") and on_bus:
        out.append(
            "  WARNING: the poller of this bus did not restart: its detectors stay in "
            "comm fault (gas off). Check the controller's log."
        )
    c.say("\n".join(out))


# -- configuration -------------------------------------------------------------------------------


def _edit(c: Console, change: Callable[[Any], str]) -> None:
    message, problems = c.editor.edit(change)
    c.say(f"staged: {message}")
    if problems:
        c.say("the staged config still has problem(s) to fix before 'config apply':")
        for p in problems:
            c.say(f"  {p}")
    else:
        c.say("(config diff to review, config apply to put it in force)")


def _entry_cmd(table: str, action: str) -> Handler:
    def handler(c: Console, args: list[str]) -> None:
        if not args:
            raise Failed(
                f"usage: {table} {action} NAME" + (" key=value ..." if action != "remove" else "")
            )
        name, rest = args[0], args[1:]
        if "=" in name:
            raise Failed(
                f"{table} {action}: the first word is the {table}'s NAME, not {name[:40]!r}"
            )
        if action == "remove":
            if rest:
                raise Failed(f"usage: {table} remove NAME")
            _edit(c, lambda doc: ce.remove_entry(doc, table, name))
            return
        fields = ce.parse_assignments(table, rest)
        if action == "add":
            _edit(c, lambda doc: ce.add_entry(doc, table, name, fields))
        else:
            _edit(c, lambda doc: ce.set_entry(doc, table, name, fields))

    return handler


def _table_cmd(table: str) -> Handler:
    def handler(c: Console, args: list[str]) -> None:
        fields = ce.parse_assignments(table, args)
        _edit(c, lambda doc: ce.set_table(doc, table, fields))

    return handler


def cmd_uplink_set(c: Console, args: list[str]) -> None:
    if not args or args[0] not in ce.UPLINKS:
        raise Failed(f"usage: uplink set {'|'.join(ce.UPLINKS)} key=value ...")
    table = f"uplink.{args[0]}"
    fields = ce.parse_assignments(table, args[1:])
    _edit(c, lambda doc: ce.set_table(doc, table, fields))


def cmd_uplink_remove(c: Console, args: list[str]) -> None:
    if len(args) != 1 or args[0] not in ce.UPLINKS:
        raise Failed(f"usage: uplink remove {'|'.join(ce.UPLINKS)}")
    _edit(c, lambda doc: ce.remove_table(doc, f"uplink.{args[0]}"))


def cmd_profiles(c: Console, args: list[str]) -> None:
    rows = [
        [
            p.name,
            f"{p.default_baud} 8{p.default_parity}{p.default_stop_bits}",
            f"FC{p.function_code:02d} {p.block[0]}+{p.block[1]}",
            p.description[:40],
        ]
        for p in sorted(c.profiles().values(), key=lambda p: p.name)
    ]
    c.say(_table(["PROFILE", "DEFAULT LINE", "READ", "DESCRIPTION"], rows))


def cmd_config_show(c: Console, args: list[str]) -> None:
    which = args[0] if args else ("staged" if c.editor.staged else "running")
    if which not in ("staged", "running"):
        raise Failed("usage: config show [staged|running]")
    text = c.editor.staged_text() if which == "staged" else c.editor.current_text()
    c.say(f"# {c.config_path} ({'staged' if which == 'staged' else 'in force'})\n{text}")


def cmd_config_diff(c: Console, args: list[str]) -> None:
    diff = c.editor.diff()
    c.say(diff if diff else "nothing staged")


def cmd_config_check(c: Console, args: list[str]) -> None:
    problems = c.editor.check()
    if problems:
        raise Failed(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
    c.say(
        "the staged configuration is valid"
        if c.editor.staged
        else "nothing staged; the configuration in force is valid"
    )


def cmd_config_discard(c: Console, args: list[str]) -> None:
    c.say("staged changes discarded" if c.editor.discard() else "nothing staged")


def _put_in_force(c: Console, prepared: ce.Prepared, action: str) -> None:
    """Write a prepared change, then have the controller reload it."""
    c.say(prepared.diff.rstrip("\n") or "(no difference)")
    _refuse_removing_a_latched_detector(c, prepared)
    restart = list(prepared.restart)
    note = ""
    if restart == ["uplink"]:
        note = (
            "\nThe uplink change takes effect when the uplinks restart "
            "(systemctl restart gasguard-uplinks; the gas protection is not touched)."
        )
    elif restart:
        note = (
            f"\n{', '.join(restart)} change(s) take effect only when the controller restarts "
            "(it starts with the gas off; systemctl restart gasguard-safety)."
        )
    confirm(c.io, f"Write this configuration to {c.config_path} and put it in force?{note}")
    c.editor.commit(prepared)
    details: dict[str, Any] = {
        "action": action,
        "old_sha256": ce.sha256_text(prepared.old_text),
        "new_sha256": ce.sha256_text(prepared.new_text),
        "restart_needed": restart,
        "diff": prepared.diff[:4000],
    }
    if restart:
        c.record("console.config_written", "site", {**details, "reloaded": False})
        c.say(
            f"written ({c.config_path}, previous kept as {ce.previous_path(c.config_path)}).\n"
            f"Restart the controller to apply: {', '.join(restart)}."
        )
        return
    try:
        answer = c.link.call("reload", timeout_s=10.0)
    except ControlError as e:
        c.record("console.config_written", "site", {**details, "reloaded": False, "error": str(e)})
        c.say(
            f"written, but the controller did not answer ({e}); it loads this file when it starts"
        )
        return
    if answer.get("applied"):
        c.record("console.config_applied", "site", {**details, "reloaded": True})
        c.say(
            "applied: the controller reloaded it without pausing protection\n"
            "(alarm latches and closed valves stay as they were)"
        )
        return
    problems = [str(p) for p in answer.get("problems") or []]
    c.editor.restore(prepared.old_text)
    c.record("console.config_refused", "site", {**details, "problems": problems[:20]})
    raise Failed(
        "the controller refused it; the file was put back as it was:\n  " + "\n  ".join(problems)
    )


def _refuse_removing_a_latched_detector(c: Console, prepared: ce.Prepared) -> None:
    """A latch is cleared only by the local manual reset: a configuration without a detector
    whose alarm is latched is refused here too (the controller would refuse the reload)."""
    try:
        status = c.link.call("status")
    except ControlError:
        return  # the controller refuses it itself when it reloads or starts
    kept = {d.name for d in prepared.config.detectors}
    gone = [
        f"detector {d.get('name')} has a latched {d.get('latched')} alarm: it cannot be removed "
        "until a local reset has cleared the latch"
        for d in status.get("detectors") or []
        if isinstance(d, dict)
        and d.get("latched") not in (None, "normal")
        and d.get("name") not in kept
    ]
    if gone:
        raise Failed("refused, nothing written:\n  " + "\n  ".join(gone))


def cmd_config_apply(c: Console, args: list[str]) -> None:
    _put_in_force(c, c.editor.prepare(), "apply")


def cmd_config_rollback(c: Console, args: list[str]) -> None:
    if c.editor.staged:
        raise Failed("changes are staged: config discard them first")
    _put_in_force(c, c.editor.prepare_rollback(), "rollback")


# -- technicians ---------------------------------------------------------------------------------


def _new_pin(c: Console, who: str) -> str:
    pin = c.io.ask(f"New PIN for {who} (6-12 digits): ", secret=True)
    if pin is None:
        raise Cancelled("cancelled: nothing changed")
    again = c.io.ask("Same PIN again: ", secret=True)
    if again != pin:
        raise Failed("the two PINs differ: nothing changed")
    return pin


def cmd_technician_list(c: Console, args: list[str]) -> None:
    rows = [[tid, _utc(c.technicians.last_login(tid))] for tid in c.technicians.ids()]
    c.say(_table(["TECHNICIAN", "LAST LOGIN (UTC)"], rows))


def cmd_technician_add(c: Console, args: list[str]) -> None:
    if len(args) != 1:
        raise Failed("usage: technician add ID")
    problem = id_problem(args[0])
    if problem:
        raise Failed(problem)
    if c.technicians.exists(args[0]):
        raise Failed(f"technician {args[0]!r} already exists")
    confirm(c.io, f"Add technician {args[0]}? They will be able to log in and act on the site.")
    pin = _new_pin(c, args[0])
    c.technicians.add(args[0], pin, created_by=c.technician)
    c.record("console.technician_added", "console", {"added": args[0]})
    c.say(f"technician {args[0]} added")


def cmd_technician_remove(c: Console, args: list[str]) -> None:
    if len(args) != 1:
        raise Failed("usage: technician remove ID")
    if not c.technicians.exists(args[0]):
        raise Failed(f"no technician {args[0][:40]!r}")
    confirm(c.io, f"Remove technician {args[0]}? They can no longer log in.")
    c.technicians.remove(args[0])
    c.record("console.technician_removed", "console", {"removed": args[0]})
    c.say(f"technician {args[0]} removed")


def _note_lockout(c: Console, result: LoginResult) -> None:
    """A PIN re-check that locked the console is recorded like a login lockout."""
    if result.lockout_started:
        c.record(
            "console.lockout",
            "console",
            {"failures": result.failures, "locked_s": result.locked_for_s, "by": "pin re-check"},
        )


def cmd_technician_pin(c: Console, args: list[str]) -> None:
    current = c.io.ask("Current PIN: ", secret=True)
    if current is None:
        raise Cancelled("cancelled: nothing changed")
    result = c.technicians.recheck(c.technician, current)
    if not result.ok:
        c.record("console.pin_change_refused", "console", {"failures": result.failures})
        _note_lockout(c, result)
        raise Failed(f"{result.message}: nothing changed")
    c.technicians.set_pin(c.technician, _new_pin(c, c.technician))
    c.record("console.pin_changed", "console", {})
    c.say("PIN changed")


# -- hazards -------------------------------------------------------------------------------------


def cmd_hazards(c: Console, args: list[str]) -> None:
    everything = bool(args) and args[0].lower() == "all"
    if args and not everything:
        raise Failed("usage: hazards [all]")
    today = c.today()
    hazards = c.hazards.hazards(include_closed=everything)
    if not hazards:
        c.say("no hazards" if everything else "no open hazards")
        return
    lines = []
    for h in hazards:
        state = "OVERDUE" if h.overdue(today) else h.status
        if h.status == "closed":
            state = f"closed, verified by {h.verified_by}"
        lines.append(f"{h.label:<5} {state}, due {h.deadline}: {h.item}: {h.remark}")
        lines.append(f"      responsible: {h.responsible}")
    c.say(wrap("\n".join(lines)))


def cmd_hazard_show(c: Console, args: list[str]) -> None:
    if len(args) != 1:
        raise Failed("usage: hazard show H-N")
    h = c.hazards.get(hazard_id(args[0]))
    lines = [
        f"{h.label}  {h.status.upper()}{'  OVERDUE' if h.overdue(c.today()) else ''}",
        f"  item:        {h.item}",
        f"  hazard:      {h.text}",
        f"  remark:      {h.remark}",
        f"  responsible: {h.responsible}",
        f"  deadline:    {h.deadline}",
        f"  opened:      {_utc(h.opened_utc)} by {h.opened_by}"
        + (f" (record {h.record_id})" if h.record_id else ""),
    ]
    if h.status == "closed":
        lines.append(f"  closed:      {_utc(h.closed_utc)}, verified by {h.verified_by}")
        lines.append(f"  how:         {h.close_remark}")
    c.say("\n".join(lines))


def cmd_hazard_close(c: Console, args: list[str]) -> None:
    if len(args) < 2:
        raise Failed("usage: hazard close H-N WHAT WAS DONE (you verify it, your id is recorded)")
    hid = hazard_id(args[0])
    remark = clean_text(" ".join(args[1:]), "remark", required=True)
    h = c.hazards.get(hid)
    if h.status != "open":
        raise Failed(f"{h.label} is already closed")
    confirm(c.io, f"Close {h.label} ({h.item}: {h.remark}) as verified by you, {c.technician}?")
    closed = c.hazards.close(hid, c.technician, remark)
    c.record(
        "hazard.closed",
        closed.label,
        {
            "item": closed.item,
            "text": closed.text,
            "verified_by": c.technician,
            "remark": remark,
            "deadline": closed.deadline,
            "overdue": dt.date.fromisoformat(closed.deadline) < c.today(),
        },
    )
    c.say(f"{closed.label} closed, verified by {c.technician}")


# -- commissioning -------------------------------------------------------------------------------


def _recent_valve_test(c: Console, valve: str) -> ValveTest | None:
    """A valve test of ``valve`` from the last hour in the event log, if one closed it."""
    events = c.call("events", limit=MAX_EVENTS).get("events") or []
    since = c.wall() - VALVE_TEST_WINDOW_S
    tests = [
        e
        for e in events
        if e.get("kind") == "operator.valve_test"
        and e.get("source") == valve
        and float(e.get("utc", 0)) >= since
        and (e.get("details") or {}).get("was_open")
    ]
    if not tests:
        return None
    test: dict[str, Any] = tests[-1]
    for e in events:
        if int(e.get("seq", 0)) <= int(test.get("seq", 0)) or e.get("source") != valve:
            continue
        details = e.get("details") or {}
        if e.get("kind") == "valve.closed" and details.get("after_s") is not None:
            after = float(details["after_s"])
            who = (test.get("details") or {}).get("operator")
            return ValveTest(
                True,
                f"valve test by {who} at {_utc(test.get('utc'))}: closed, confirmed after "
                f"{after:.2f} s",
                {"valve": valve, "confirmed": True, "after_s": after, "seq": e.get("seq")},
            )
        if e.get("kind") == "valve.failed":
            return ValveTest(
                False,
                f"valve test at {_utc(test.get('utc'))}: FAILED ({details.get('text')})",
                {"valve": valve, "confirmed": False, "failed": details.get("text")},
            )
    return None


def _ask_required(c: Console, prompt: str) -> str:
    while True:
        text = c.io.ask(prompt)
        if text is None or text.strip().lower() == "q":
            raise Cancelled("commissioning abandoned: nothing stored")
        try:
            return clean_text(text, "answer", required=True)
        except HazardError as e:
            c.say(f"  {e}")


def _ask_item(c: Console, index: int, total: int, item: ChecklistItem) -> Answer:
    evidence: ValveTest | None = None
    if item.valve is not None:
        evidence = _recent_valve_test(c, item.valve)
        if evidence is None:
            c.say(f"  No valve test of {item.valve} in the last hour.")
            reply = c.io.ask(
                f"  Run 'test valve {item.valve}' now? It closes the gas there. [yes/no]: "
            )
            if reply is None or reply.strip().lower() == "q":
                raise Cancelled("commissioning abandoned: nothing stored")
            if reply.strip().lower() == CONFIRM_WORD:
                evidence = run_valve_test(c, item.valve)
                if evidence.evidence is None:  # nothing could be measured: say why
                    c.say(wrap(f"  {evidence.text}"))
                    evidence = None
    c.say(wrap(f"[{index}/{total}] {item.text}"))
    suggestion = None
    if evidence is not None:
        c.say(wrap(f"  evidence: {evidence.text}"))
        suggestion = "pass" if evidence.ok else "fail"
    choices = {
        "p": "pass",
        "pass": "pass",
        "f": "fail",
        "fail": "fail",
        "n": "n/a",
        "n/a": "n/a",
        "na": "n/a",
    }
    hint = f" [Enter = {suggestion}]" if suggestion else ""
    while True:
        reply = c.io.ask(f"  pass / fail / n/a (p/f/n, q = abandon){hint}: ")
        if reply is None or reply.strip().lower() == "q":
            raise Cancelled("commissioning abandoned: nothing stored")
        key = reply.strip().lower()
        if not key and suggestion:
            result = suggestion
            break
        if key in choices:
            result = choices[key]
            break
        c.say("  answer p, f or n")
    needs_remark = result != "pass" or (
        item.valve is not None and (evidence is None or not evidence.ok)
    )
    if needs_remark:
        remark = _ask_required(c, "  remark (what you found): ")
    else:
        text = c.io.ask("  remark (optional): ")
        if text is None:
            raise Cancelled("commissioning abandoned: nothing stored")
        try:
            remark = clean_text(text, "remark", required=False)
        except HazardError:
            remark = ""
    responsible = deadline = None
    if result == "fail":
        responsible = _ask_required(c, "  responsible person (name, phone): ")
        while True:
            text = c.io.ask("  deadline (YYYY-MM-DD or days, Enter = 7): ")
            if text is None or text.strip().lower() == "q":
                raise Cancelled("commissioning abandoned: nothing stored")
            try:
                deadline = parse_deadline(text or "7", c.today())
                break
            except HazardError as e:
                c.say(f"  {e}")
    return Answer(
        item,
        result,
        remark,
        None if evidence is None else evidence.evidence,
        responsible,
        deadline,
    )


def cmd_commission(c: Console, args: list[str]) -> None:
    if args:
        raise Failed("commission takes no arguments")
    cfg = c.config()
    items = checklist(cfg)
    started = c.wall()
    c.say(
        f"Commissioning inspection of {cfg.site.id} ({cfg.site.name}) by {c.technician}.\n"
        f"{len(items)} items. Answer p (pass), f (fail) or n (not applicable), with a remark.\n"
        "A failed item opens a hazard: give the responsible person and a deadline.\n"
        "q abandons (nothing is stored). At the end you sign with your PIN."
    )
    answers = [_ask_item(c, i + 1, len(items), item) for i, item in enumerate(items)]
    counts = {r: sum(1 for a in answers if a.result == r) for r in ("pass", "fail", "n/a")}
    summary = [f"pass {counts['pass']}, fail {counts['fail']}, n/a {counts['n/a']}"]
    summary += [
        f"  FAIL {a.item.id}: {a.remark} -> {a.responsible}, by {a.deadline}"
        for a in answers
        if a.result == "fail"
    ]
    c.say(wrap("\n".join(summary)))
    for _ in range(SIGN_ATTEMPTS):
        pin = c.io.ask(f"Sign this record as {c.technician}: your PIN: ", secret=True)
        if pin is None:
            raise Cancelled("not signed: nothing stored")
        result = c.technicians.recheck(c.technician, pin)
        if result.ok:
            break
        _note_lockout(c, result)
        if result.locked_for_s:
            c.record("console.sign_refused", "console", {"what": "commissioning"})
            raise Failed(f"{result.message}: not signed, nothing stored")
        c.say(f"  {result.message}")
    else:
        c.record("console.sign_refused", "console", {"what": "commissioning"})
        raise Failed(f"{SIGN_ATTEMPTS} wrong PINs: not signed, nothing stored")
    try:
        config_sha = ce.sha256_text(c.config_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise Failed(f"{c.config_path}: {e}") from None
    signed = c.wall()
    record = build_record(
        record_id=new_record_id(signed),
        config=cfg,
        config_sha256=config_sha,
        technician=c.technician,
        started_utc=started,
        signed_utc=signed,
        answers=answers,
    )
    signature = sign(record, site_key(c.data_dir))
    stored = c.book.store_signed(record, signature, answers)
    details: dict[str, Any] = {
        "record_id": stored.id,
        "summary": record["summary"],
        "hazards": [f"H-{h}" for h in stored.hazard_ids],
        "config_sha256": config_sha,
        "signature": signature,
    }
    full = {**details, "record": record}
    fits = len(json.dumps(full, ensure_ascii=False).encode()) < MAX_DETAILS_BYTES - 512
    c.record("commissioning.signed", "site", full if fits else details)
    for hid, a in zip(stored.hazard_ids, [a for a in answers if a.result == "fail"], strict=True):
        c.record(
            "hazard.opened",
            f"H-{hid}",
            {
                "record_id": stored.id,
                "item": a.item.id,
                "text": a.item.text,
                "remark": a.remark,
                "responsible": a.responsible,
                "deadline": a.deadline,
            },
        )
    opened = ", ".join(f"H-{h}" for h in stored.hazard_ids) or "none (no hazard found)"
    c.say(f"record {stored.id} signed by {c.technician} and stored\nhazards opened: {opened}")


def _record_arg(c: Console, args: list[str], usage: str) -> Any:
    if len(args) != 1:
        raise Failed(f"usage: {usage}")
    rec = c.book.get(args[0])
    if rec is None:
        known = ", ".join(r.id for r in c.book.records()[:5]) or "none yet"
        raise Failed(f"no commissioning record {args[0][:40]!r}; latest: {known}")
    return rec


def cmd_commissioning_list(c: Console, args: list[str]) -> None:
    records = c.book.records()
    if not records:
        c.say("no commissioning records")
        return
    rows = [
        [
            r.id,
            _utc(r.signed_utc),
            r.technician,
            "pass {pass} fail {fail} n/a {n/a}".format(**r.record.get("summary", {})),
        ]
        for r in records
    ]
    c.say(_table(["RECORD", "SIGNED (UTC)", "TECHNICIAN", "RESULT"], rows))


def cmd_commissioning_show(c: Console, args: list[str]) -> None:
    rec = _record_arg(c, args, "commissioning show RECORD")
    body = rec.record
    lines = [
        f"{rec.id}  site {body['site']['id']} ({body['site']['name']})",
        f"signed {_utc(rec.signed_utc)} by {rec.technician}; config sha256 "
        f"{body['config_sha256'][:16]}...",
    ]
    for item in body["items"]:
        lines.append(f"  {item['result'].upper():<5} {item['id']}: {item['remark'] or '-'}")
    lines.append("hazards: " + (", ".join(f"H-{h}" for h in rec.hazard_ids) or "none"))
    c.say("\n".join(lines))


def cmd_commissioning_export(c: Console, args: list[str]) -> None:
    rec = _record_arg(c, args, "commissioning export RECORD")
    c.say(
        json.dumps({"record": rec.record, "signature": rec.signature}, ensure_ascii=False, indent=1)
    )


def cmd_commissioning_verify(c: Console, args: list[str]) -> None:
    rec = _record_arg(c, args, "commissioning verify RECORD")
    if signature_ok(rec.record, rec.signature, site_key(c.data_dir)):
        c.say(f"{rec.id}: signature valid (site key {rec.signature.get('key_id')})")
    else:
        raise Failed(
            f"{rec.id}: SIGNATURE DOES NOT MATCH: the record was altered or signed with another key"
        )


# =============================================================================================
# The table of commands
# =============================================================================================


def build_commands() -> list[Command]:
    kv_help = (
        "Values: text, numbers, true/false; lists comma-separated (zones=a,b).\n"
        "Changes are staged: config diff shows them, config apply puts them in force."
    )
    cmds = [
        Command(
            ("help",), "help [COMMAND]", "list commands, or explain one", "", cmd_help, audit=False
        ),
        Command(
            ("status",),
            "status",
            "the kitchen now: gas, alarms, faults",
            "Gas on or off and why, alarms, faults, what blocks a reset, inhibits,\n"
            "open and overdue hazards, staged configuration.",
            cmd_status,
        ),
        Command(
            ("detectors",),
            "detectors",
            "live readings of every detector",
            "A detector that does not answer shows 'no reply', never its last value.",
            cmd_detectors,
        ),
        Command(
            ("events",),
            "events [N] [csv|jsonl]",
            "the newest N events (default 20)",
            "csv or jsonl prints them for export: capture with your terminal's log\n"
            "(picocom --logfile FILE, PuTTY session logging).",
            cmd_events,
            args=("format",),
        ),
        Command(("time",), "time", "the Pi's clock and the controller's", "", cmd_time),
        Command(("whoami",), "whoami", "who is logged in", "", cmd_whoami, audit=False),
        Command(("silence",), "silence", "silence the sounder (resets nothing)", "", cmd_silence),
        Command(
            ("reset",),
            "reset",
            "the manual reset: reopen the gas",
            "Refused, with the reason, while any detector is not normal. Asks for yes.",
            cmd_reset,
        ),
        Command(
            ("clear-orphan",),
            "clear-orphan LATCH REASON",
            "clear a removed detector's latch",
            "An alarm latched on a detector that is no longer configured keeps every valve\n"
            "closed. LATCH is its old name or BUS:ADDRESS; the reason is recorded.",
            cmd_clear_orphan,
        ),
        Command(
            ("inhibit",),
            "inhibit DETECTOR MINUTES",
            "calibration inhibit (0-60 min)",
            "Its alarms are test alarms (reported upstream) and do not close the gas;\n"
            "its faults still do. Ends by itself; 0 ends it now.",
            cmd_inhibit,
            args=("detector",),
        ),
        Command(
            ("test", "valve"),
            "test valve VALVE",
            "close a valve, check its contact",
            "Closes the gas at VALVE and reports how long the position contact took.\n"
            "The gas stays off until a manual reset.",
            cmd_test_valve,
            args=("valve",),
        ),
        Command(
            ("test", "sounder"),
            "test sounder [SECONDS]",
            "sound the sounder (1-30 s)",
            "",
            cmd_test_sounder,
        ),
        Command(
            ("test", "uplink"),
            "test uplink",
            "send a test event to every centre",
            "Records a test event and waits for each uplink channel's acknowledgement.",
            cmd_test_uplink,
        ),
        Command(
            ("scan",),
            "scan BUS [FIRST-LAST] [configured|defaults|all]",
            "find detectors on a bus",
            "Probes addresses (default 1-16) at the bus's line setting and the profiles'\n"
            "defaults (or every baud rate: all) and guesses each detector's profile.\n"
            "The bus is not polled meanwhile: its detectors may go into comm fault and\n"
            "close their valves (fail safe). Asks for yes.",
            cmd_scan,
            args=("bus", "lines", "lines"),
        ),
        Command(
            ("profiles",),
            "profiles",
            "detector profiles known to this controller",
            "",
            cmd_profiles,
            audit=False,
        ),
        Command(
            ("detector", "add"),
            "detector add NAME key=value ...",
            "stage a new detector",
            "Keys: zone bus address profile gas low_lel high_lel (all needed);\n"
            "label (a display name in any language, optional).\n"
            "Set points (GB 15322.1): low_lel 1-25, high_lel at most 50 %LEL.\n" + kv_help,
            _entry_cmd("detector", "add"),
            kv="detector",
        ),
        Command(
            ("detector", "set"),
            "detector set NAME key=value ...",
            "stage a detector change",
            kv_help,
            _entry_cmd("detector", "set"),
            args=("detector",),
            kv="detector",
        ),
        Command(
            ("detector", "remove"),
            "detector remove NAME",
            "stage removing a detector",
            "",
            _entry_cmd("detector", "remove"),
            args=("detector",),
        ),
        Command(
            ("valve", "add"),
            "valve add NAME key=value ...",
            "stage a new valve",
            "Keys: kind output_pin pulse_ms feedback_pin feedback_closed_level\n"
            "close_confirm_s zones label. Valve changes apply at the next controller restart.\n"
            + kv_help,
            _entry_cmd("valve", "add"),
            kv="valve",
        ),
        Command(
            ("valve", "set"),
            "valve set NAME key=value ...",
            "stage a valve change (zones = mapping)",
            kv_help,
            _entry_cmd("valve", "set"),
            args=("valve",),
            kv="valve",
        ),
        Command(
            ("valve", "remove"),
            "valve remove NAME",
            "stage removing a valve",
            "",
            _entry_cmd("valve", "remove"),
            args=("valve",),
        ),
        Command(
            ("bus", "add"),
            "bus add NAME key=value ...",
            "stage a new RS-485 bus",
            kv_help,
            _entry_cmd("bus", "add"),
            kv="bus",
        ),
        Command(
            ("bus", "set"),
            "bus set NAME key=value ...",
            "stage a bus change",
            kv_help,
            _entry_cmd("bus", "set"),
            args=("bus",),
            kv="bus",
        ),
        Command(
            ("bus", "remove"),
            "bus remove NAME",
            "stage removing a bus",
            "",
            _entry_cmd("bus", "remove"),
            args=("bus",),
        ),
        Command(
            ("annunciator", "set"),
            "annunciator set key=value ...",
            "stage sounder/light/button pins",
            "Applies at the next controller restart.",
            _table_cmd("annunciator"),
            kv="annunciator",
        ),
        Command(
            ("site", "set"),
            "site set key=value ...",
            "stage site id, name, address",
            kv_help,
            _table_cmd("site"),
            kv="site",
        ),
        Command(
            ("timings", "set"),
            "timings set key=value ...",
            "stage poll and fault timings",
            "poll_period_s, comm_fault_timeout_s (at most 100, GB 16808), confirm_count,\n"
            "confirm_at_once (take the confirming readings at once; default true).",
            _table_cmd("timings"),
            kv="timings",
        ),
        Command(
            ("uplink", "set"),
            "uplink set mqtt|gb26875|sms key=value ...",
            "stage uplink settings",
            "mqtt: host port tls username password_file topic_prefix enabled\n"
            "gb26875: host port device_address centre_address enabled\n"
            "sms: port baud numbers (comma-separated) enabled",
            cmd_uplink_set,
            args=("uplink",),
        ),
        Command(
            ("uplink", "remove"),
            "uplink remove mqtt|gb26875|sms",
            "stage removing an uplink",
            "",
            cmd_uplink_remove,
            args=("uplink",),
        ),
        Command(
            ("config", "show"),
            "config show [staged|running]",
            "print the configuration",
            "",
            cmd_config_show,
            audit=False,
        ),
        Command(
            ("config", "diff"),
            "config diff",
            "staged changes against the file in force",
            "",
            cmd_config_diff,
            audit=False,
        ),
        Command(
            ("config", "check"),
            "config check",
            "validate the staged configuration",
            "",
            cmd_config_check,
            audit=False,
        ),
        Command(
            ("config", "apply"),
            "config apply",
            "validate, write atomically, reload",
            "Validated again, written atomically (the previous version kept as .prev),\n"
            "then the controller reloads it without pausing protection. An invalid\n"
            "change is refused and nothing is written. Asks for yes.",
            cmd_config_apply,
        ),
        Command(
            ("config", "rollback"),
            "config rollback",
            "put the previous version back",
            "Asks for yes.",
            cmd_config_rollback,
        ),
        Command(
            ("config", "discard"),
            "config discard",
            "drop the staged changes",
            "",
            cmd_config_discard,
        ),
        Command(
            ("technician", "list"),
            "technician list",
            "who may log in",
            "",
            cmd_technician_list,
            audit=False,
        ),
        Command(
            ("technician", "add"),
            "technician add ID",
            "add a technician (asks a PIN)",
            "",
            cmd_technician_add,
        ),
        Command(
            ("technician", "remove"),
            "technician remove ID",
            "remove a technician",
            "",
            cmd_technician_remove,
        ),
        Command(("technician", "pin"), "technician pin", "change your PIN", "", cmd_technician_pin),
        Command(
            ("commission",),
            "commission",
            "the guided commissioning inspection",
            "Every detector's placement, every valve's closing (from a valve test) and\n"
            "the site items of the city plan; pass/fail/n-a with a remark. Failed items\n"
            "open hazards. You sign with your PIN; the record is HMAC-signed with the\n"
            "site key, stored and forwarded upstream.",
            cmd_commission,
        ),
        Command(
            ("commissioning", "list"),
            "commissioning list",
            "signed records",
            "",
            cmd_commissioning_list,
            audit=False,
        ),
        Command(
            ("commissioning", "show"),
            "commissioning show RECORD",
            "one record",
            "",
            cmd_commissioning_show,
            args=("record",),
            audit=False,
        ),
        Command(
            ("commissioning", "export"),
            "commissioning export RECORD",
            "print a record and its signature as JSON",
            "",
            cmd_commissioning_export,
            args=("record",),
        ),
        Command(
            ("commissioning", "verify"),
            "commissioning verify RECORD",
            "check a record's signature",
            "",
            cmd_commissioning_verify,
            args=("record",),
        ),
        Command(
            ("hazards",),
            "hazards [all]",
            "open hazards (all: closed too)",
            "",
            cmd_hazards,
            args=("all",),
            audit=False,
        ),
        Command(
            ("hazard", "show"),
            "hazard show H-N",
            "one hazard",
            "",
            cmd_hazard_show,
            args=("hazard",),
            audit=False,
        ),
        Command(
            ("hazard", "close"),
            "hazard close H-N WHAT WAS DONE",
            "close a hazard you verified",
            "Records you as the one who verified it.",
            cmd_hazard_close,
            args=("hazard",),
        ),
        Command(
            ("cylinders",),
            "cylinders",
            "the LPG cylinders on site, and their hazards",
            "Each cylinder by its code (一瓶一码), with the city plan's checks: more than\n"
            "100 kg outside a cylinder room, a 50 kg dual-phase cylinder, in-use and\n"
            "spare together.",
            cmd_cylinders,
            audit=False,
        ),
        Command(
            ("cylinder", "add"),
            "cylinder add CODE kg=N state=S place=P [kind=K]",
            "record a cylinder by its scanned code",
            "kg: 2 5 10 15 50; state: in-use spare empty; place: where it stands\n"
            "(cylinder-room for a dedicated room); kind: single-phase (default) or\n"
            "dual-phase. A broken rule opens a hazard (you responsible, due in 7 days).",
            cmd_cylinder_add,
        ),
        Command(
            ("cylinder", "set"),
            "cylinder set CODE key=value ...",
            "change a cylinder's state, place, kg or kind",
            "",
            cmd_cylinder_set,
            args=("cylinder",),
        ),
        Command(
            ("cylinder", "remove"),
            "cylinder remove CODE",
            "a cylinder left the site",
            "",
            cmd_cylinder_remove,
            args=("cylinder",),
        ),
    ]
    return cmds
