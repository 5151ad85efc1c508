"""The appliance subcommands of ``gasguard``: ``install``, ``upgrade``, ``doctor`` and
``safe-outputs``. ``gateway.cli`` adds them with one call: ``add_parsers(sub)``.

``safe-outputs`` is the unit's ``ExecStopPost=``: after any end of the controller process (an
orderly stop, a crash, a watchdog kill) it puts every valve output in its safe state. A killed
process cannot de-energise a held-open valve's coil itself, and the kernel may leave a released
GPIO line driven as it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/gasguard/gasguard.toml")


def cmd_install(args: argparse.Namespace) -> int:
    from gateway.appliance.install import run_install

    return run_install(args, upgrade_only=False)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from gateway.appliance.install import run_install

    return run_install(args, upgrade_only=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.appliance.doctor import main

    return main(args.config, json_output=args.json)


def safe_outputs(config_path: Path, pin_factory: Any = None) -> int:
    """Close every valve of the config at ``config_path``: a held-open valve's coil is
    de-energised, a trip-to-close valve gets its trip pulse. Returns 0, or 1 if a valve could
    not be reached (each failure printed; the others are still closed)."""
    from gateway.config import load_config
    from gateway.drivers.valve import make_valve
    from gateway.validate import ConfigError

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        print(f"gasguard safe-outputs: {config_path}: config not usable:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    rc = 0
    for vc in cfg.valves:
        try:
            valve = make_valve(vc, pin_factory)  # the coil output starts de-energised
            try:
                valve.command(False)
            finally:
                valve.close()  # waits for a trip pulse to finish, then releases the pins
        except Exception as e:  # keep closing the others
            print(
                f"gasguard safe-outputs: valve {vc.name} (GPIO{vc.output_pin}): {e}",
                file=sys.stderr,
            )
            rc = 1
            continue
        print(f"valve {vc.name}: closed ({vc.kind}, GPIO{vc.output_pin})")
    return rc


def cmd_safe_outputs(args: argparse.Namespace) -> int:
    return safe_outputs(args.config)


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``install``, ``upgrade``, ``doctor`` and ``safe-outputs`` to ``gasguard``."""
    from gateway.appliance.install import add_arguments

    s = sub.add_parser(
        "install", help="install gasguard on this Raspberry Pi (venv, user, config, units)"
    )
    add_arguments(s)
    s.set_defaults(func=cmd_install)

    s = sub.add_parser(
        "upgrade",
        help="install a new version beside the running one; roll back if it does not start",
    )
    add_arguments(s)
    s.set_defaults(func=cmd_upgrade)

    s = sub.add_parser("doctor", help="check the installation, one PASS/WARN/FAIL line each")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser(
        "safe-outputs", help="close every valve (the unit runs this after the controller ends)"
    )
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.set_defaults(func=cmd_safe_outputs)
