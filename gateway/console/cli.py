"""``gasguard console``: the technician console on a serial line or on stdin/stdout.

    gasguard console --port /dev/ttyGS0            # USB gadget serial, 115200 8N1
    gasguard console --port /dev/ttyAMA1 --baud 115200
    gasguard console                               # stdin/stdout (serial-getty autologin)
    gasguard console --add-technician tech-7       # first-time set-up, on the Pi itself

On a serial port the console serves one session after another and survives the cable being
pulled or the device vanishing (it reopens the port every 2 s). On stdin/stdout it ends at end
of input. ``--tty`` is accepted as another name for ``--port``.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway import log

DEFAULT_CONFIG = Path("/etc/gasguard/gasguard.toml")
CONSOLE_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
REOPEN_S = 2.0


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``gasguard console``."""
    s = sub.add_parser(
        "console",
        help="technician console on a serial line (or stdin/stdout)",
        description="Technician console: login, status, tests, configuration, commissioning.",
    )
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.add_argument(
        "--port",
        "--tty",
        dest="port",
        metavar="DEV",
        help="serial device, e.g. /dev/ttyGS0 or /dev/ttyAMA1 (default: stdin/stdout)",
    )
    s.add_argument("--baud", type=int, default=115200, help="serial speed, 8N1 (default 115200)")
    s.add_argument("--cols", type=int, default=80, help="terminal width for line editing")
    s.add_argument(
        "--idle-min",
        type=float,
        default=10.0,
        help="log out after this many idle minutes (1-10, default 10)",
    )
    s.add_argument(
        "--add-technician",
        metavar="ID",
        help="first-time set-up: add a technician (PIN asked on this terminal), then exit",
    )
    s.set_defaults(func=cmd_console)


def _problem(args: argparse.Namespace) -> str | None:
    if args.baud not in CONSOLE_BAUDS:
        return f"--baud {args.baud}: one of {', '.join(map(str, CONSOLE_BAUDS))}"
    if not 20 <= args.cols <= 1000:
        return f"--cols {args.cols}: from 20 to 1000"
    if not 1.0 <= args.idle_min <= 10.0:
        return f"--idle-min {args.idle_min:g}: from 1 to 10 minutes"
    return None


def cmd_console(args: argparse.Namespace) -> int:
    problem = _problem(args)
    if problem:
        print(f"gasguard console: {problem}", file=sys.stderr)
        return 2
    if args.add_technician:
        return add_first_technician(args.config, args.add_technician)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda signum, frame: sys.exit(0))
    if args.port:
        if os.isatty(1):
            # stdout is a terminal (systemd StandardOutput=tty, or a shell): log lines must
            # not land on a screen; they go to stderr (the journal), or nowhere.
            _quiet_logs()
        else:
            log.setup()
        return run_on_port(args.config, args.port, args.baud, args.cols, args.idle_min * 60)
    _quiet_logs()
    return run_on_stdio(args.config, args.cols, args.idle_min * 60)


def _quiet_logs() -> None:
    """On stdin/stdout the log must not write into the technician's screen: to stderr only
    when stderr is not the same terminal (systemd sends it to the journal)."""
    logger = logging.getLogger("gasguard")
    if logger.handlers:
        return
    if os.isatty(2):
        logger.addHandler(logging.NullHandler())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run_on_port(config: Path, port: str, baud: int, cols: int, idle_s: float) -> int:
    from gateway.console.hazardwatch import watch_site
    from gateway.console.session import Session
    from gateway.console.terminal import Hangup, SerialTerminal

    log.log("console.started", port=port, baud=baud, config=config)
    watch_site(config).start()  # overdue hazards go upstream even when nobody logs in
    while True:
        try:
            term = SerialTerminal(port, baud)
        except Hangup as e:
            log.warn("console.port_unavailable", port=port, error=e)
            time.sleep(REOPEN_S)
            continue
        session = None
        try:
            session = Session(term, config, where=port, cols=cols, idle_s=idle_s)
            session.serve()
        except Hangup as e:
            log.warn("console.hangup", port=port, error=e)
        finally:
            if session is not None:
                session.close()
            term.close()
        time.sleep(REOPEN_S)


def run_on_stdio(config: Path, cols: int, idle_s: float) -> int:
    from gateway.console.session import Session
    from gateway.console.terminal import FdTerminal, Hangup

    term = FdTerminal(0, 1)
    session = None
    try:
        session = Session(term, config, where="stdio", cols=cols, idle_s=idle_s)
        session.serve()
    except Hangup:
        return 0
    finally:
        if session is not None:
            session.close()
        term.close()
    return 0


def add_first_technician(config: Path, tech_id: str) -> int:
    """Add a technician from a shell on the Pi (first-time set-up, or a lost PIN)."""
    from gateway.console.auth import AuthError, Technicians, id_problem
    from gateway.console.link import ControllerLink
    from gateway.console.session import locate
    from gateway.console.store import ConsoleStore, ConsoleStoreError

    problem = id_problem(tech_id)
    if problem:
        print(f"gasguard console: {problem}", file=sys.stderr)
        return 2
    place = locate(config)
    try:
        pin = getpass.getpass(f"PIN for {tech_id} (6-12 digits): ")
        again = getpass.getpass("Same PIN again: ")
    except (EOFError, KeyboardInterrupt):
        print("\ncancelled: nothing changed", file=sys.stderr)
        return 1
    if pin != again:
        print("gasguard console: the two PINs differ: nothing changed", file=sys.stderr)
        return 1
    try:
        with ConsoleStore(place.data_dir) as store:
            Technicians(store).add(tech_id, pin, created_by=f"setup:{getpass.getuser()}")
            waiting = ControllerLink(place.control_socket, store).record(
                "console.technician_added",
                "console",
                {"added": tech_id, "by": f"setup:{getpass.getuser()}"},
            )
    except (AuthError, ConsoleStoreError) as e:
        print(f"gasguard console: {e}", file=sys.stderr)
        return 1
    note = "" if waiting else " (the controller is not running: the event waits in console.db)"
    print(f"technician {tech_id} added to {place.data_dir / 'console.db'}{note}")
    return 0
