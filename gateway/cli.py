"""The ``gasguard`` command.

gasguard run --config FILE          run the safety process (systemd: gasguard-safety)
gasguard uplinks --config FILE      run the uplinks process (systemd: gasguard-uplinks)
gasguard check-config FILE          validate a config; every error with key, value, range
gasguard status [--json]            ask the running controller
gasguard events [--json]            print the event log (works with the controller stopped)
gasguard trend DETECTOR [--png F]   a detector's hourly trend as a text chart (and a plot)
gasguard demo [--once]              the whole controller on a simulated kitchen
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Only what every subcommand needs at the top: ``gasguard run`` must not load the others.
from gateway.paths import events_db

if TYPE_CHECKING:
    from gateway.config import Config

DEFAULT_CONFIG = Path("/etc/gasguard/gasguard.toml")


def _load(path: Path) -> Config | None:
    from gateway.safety.main import load_or_explain

    return load_or_explain(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.busload import bus_loads
    from gateway.uplinks.config import uplink_config
    from gateway.validate import ConfigError

    cfg = _load(args.file)
    if cfg is None:
        return 1
    try:
        uplinks = uplink_config(cfg)
    except ConfigError as e:
        print(e.explain(args.file), file=sys.stderr)
        return 1
    print(f"{args.file}: OK")
    print(f"  site {cfg.site.id} ({cfg.site.name})")
    for b in cfg.buses:
        print(f"  bus {b.name}: {b.port} {b.baud} 8{b.parity}{b.stop_bits}")
    for d in cfg.detectors:
        print(
            f"  detector {d.name}: zone {d.zone}, {d.bus} address {d.address}, "
            f"{d.profile.name}, {d.gas.value}, low {d.low_lel:g} / high {d.high_lel:g} %LEL"
        )
    for v in cfg.valves:
        fb = "no feedback" if v.feedback_pin is None else f"feedback GPIO{v.feedback_pin}"
        print(
            f"  valve {v.name}: {v.kind} on GPIO{v.output_pin}, {fb}, "
            f"closes zones {', '.join(v.zones)}"
        )
    t = cfg.timings
    print(
        f"  poll every {t.poll_period_s:g} s, comm fault after {t.comm_fault_timeout_s:g} s, "
        f"alarm confirmed by {t.confirm_count} readings"
    )
    print(f"  uplinks: {', '.join(uplinks.channels()) or 'none'}")
    for load in bus_loads(cfg):
        print(f"  {load.summary()}")
        for text in load.warnings():
            print(f"WARNING: {text}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.safety.main import run

    return run(args.config)


def cmd_uplinks(args: argparse.Namespace) -> int:
    from gateway.uplinks.main import run

    return run(args.config)


def _socket(args: argparse.Namespace) -> Path | None:
    if args.socket is not None:
        return Path(args.socket)
    cfg = _load(args.config)
    return None if cfg is None else cfg.control_socket


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.api.control import ControlClient, ControlError
    from gateway.api.render import render_status

    path = _socket(args)
    if path is None:
        return 1
    try:
        status = ControlClient(path).call("status")
    except ControlError as e:
        print(f"gasguard status: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, ensure_ascii=False, indent=2))
    else:
        print(render_status(status))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from gateway.api.render import render_events
    from gateway.store.events import EventStore, EventStoreError

    if args.db is not None:
        db = Path(args.db)
    else:
        cfg = _load(args.config)
        if cfg is None:
            return 1
        db = events_db(cfg.data_dir)
    try:
        with EventStore.open_readonly(db) as reader:
            rows = reader.recent(args.limit)
    except EventStoreError as e:
        print(f"gasguard events: {e}", file=sys.stderr)
        return 1
    if args.json:
        for r in rows:
            line = {
                "seq": r.seq,
                "utc": r.utc,
                "kind": r.kind,
                "source": r.source,
                "details": r.details,
            }
            print(json.dumps(line, ensure_ascii=False))
    else:
        print(render_events(rows))
    return 0


def cmd_trend(args: argparse.Namespace) -> int:
    import time

    from gateway.store.trendfile import TrendFileError, read_hours, trend_path
    from gateway.trend import judge, text_chart
    from gateway.trendplot import PlotUnavailable, write_png

    cfg = _load(args.config)
    if cfg is None:
        return 1
    det = next((d for d in cfg.detectors if d.name == args.detector), None)
    if det is None:
        names = ", ".join(d.name for d in cfg.detectors)
        print(f"gasguard trend: no detector {args.detector!r} in {cfg.path}; one of {names}",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 1 <= args.days <= 90:
        print(f"gasguard trend: --days {args.days}: allowed 1 to 90", file=sys.stderr)
        return 2
    path = trend_path(cfg.data_dir, det.name)
    try:
        hours = read_hours(path)
    except TrendFileError as e:
        print(f"gasguard trend: {e}", file=sys.stderr)
        return 1
    now_hour = int(time.time() // 3600)  # the hour in progress: not stored yet, not shown
    shown = [h for h in hours if h.index >= now_hour - args.days * 24]
    print(f"{det.name}: {len(shown)} hours stored in the last {args.days} days ({path})")
    print(text_chart(shown, args.days, now_hour))
    warning = judge(det.name, hours, det.low_lel, now_hour)
    print(f"WARNING: {warning.text}" if warning else "no trend warning")
    if args.png is not None:
        try:
            print(f"plot written: {write_png(args.png, det.name, shown, det.low_lel)}")
        except PlotUnavailable as e:
            print(f"gasguard trend: {e}", file=sys.stderr)
            return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.sim.demo import run_demo  # the simulator is only imported when asked for

    return run_demo(once=args.once, speed=args.speed)


def build_parser() -> argparse.ArgumentParser:
    from gateway.appliance.cli import add_parsers as add_appliance_parsers
    from gateway.console.cli import add_parser as add_console_parser
    from gateway.uplinks.gb26875.centre import add_parser as add_gb_centre_parser
    from gateway.uplinks.receive import add_parser as add_receive_parser

    p = argparse.ArgumentParser(
        prog="gasguard",
        description="Gas-safety controller for restaurant kitchens.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the safety process (gas detection, valves)")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("uplinks", help="run the uplinks process (centres, SMS)")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.set_defaults(func=cmd_uplinks)

    s = sub.add_parser("check-config", help="validate a configuration file")
    s.add_argument("file", type=Path)
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("status", help="show the running controller's status")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.add_argument("--socket", help="control socket path (instead of reading it from --config)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("events", help="print the event log")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.add_argument("--db", help="event database path (instead of reading it from --config)")
    s.add_argument("--limit", type=int, default=100, help="newest N events (default 100)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=cmd_events)

    s = sub.add_parser("trend", help="a detector's hourly gas trend (90 days kept)")
    s.add_argument("detector", help="the detector's name")
    s.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    s.add_argument("--days", type=int, default=14, help="days shown, 1 to 90 (default 14)")
    s.add_argument("--png", type=Path, help="also write a plot to this PNG file")
    s.set_defaults(func=cmd_trend)

    add_appliance_parsers(sub)
    add_receive_parser(sub)
    add_console_parser(sub)
    add_gb_centre_parser(sub)

    s = sub.add_parser("demo", help="run the controller on a simulated kitchen")
    s.add_argument(
        "--once",
        action="store_true",
        help="run the scenario without the live view, print a summary, exit",
    )
    s.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="scenario pacing factor (2 = twice as fast); safety timings unchanged",
    )
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        # The safety process: parsed by its own module, so that it never imports the network
        # and console modules this command's other subcommands bring in.
        from gateway.safety.main import main as safety_main

        return safety_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "limit", 1) < 1:
        print("gasguard events: --limit must be at least 1", file=sys.stderr)
        return 2
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
