"""``gasguard-city``: the city desk's command.

    gasguard-city migrate  --config city.toml        apply the schema migrations
    gasguard-city ingest   --config city.toml [--name w1]   one ingest worker
    gasguard-city desk     --config city.toml        the duty page
    gasguard-city watch    --config city.toml        silent sites and escalation
    gasguard-city run      --config city.toml        all of them, N ingest workers (supervised)
    gasguard-city operator add NAME --role officer --district xihu --config city.toml
    gasguard-city ledger   --config city.toml [--district ID] [--month 2026-12] > ledger.csv

Exit status: 0 on a clean stop, 1 on a failure, 2 for a bad command line or config.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from city import db
from city.config import CityConfig, CityConfigError, load
from city.log import error, log

DEFAULT_CONFIG = Path("/etc/gasguard-city/city.toml")
RESTART_DELAY_S = 1.0


def _config(path: str) -> CityConfig:
    try:
        return load(Path(path))
    except CityConfigError as e:
        for problem in e.problems:
            print(f"gasguard-city: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_migrate(cfg: CityConfig, _args: argparse.Namespace) -> int:
    applied = db.prepare(cfg)
    print(f"schema {db.schema_version(cfg.dsn)}; applied now: {applied or 'none'}")
    return 0


def cmd_ingest(cfg: CityConfig, args: argparse.Namespace) -> int:
    from city.ingest import IngestWorker

    worker = IngestWorker(cfg, args.name)
    stop = threading.Event()
    _stop_on_signals(stop)

    def stop_worker() -> None:
        stop.wait()
        worker.stop()

    threading.Thread(target=stop_worker, daemon=True).start()
    worker.run()
    return 0


def cmd_desk(cfg: CityConfig, _args: argparse.Namespace) -> int:
    from city.desk.server import serve

    stop = threading.Event()
    _stop_on_signals(stop)
    return serve(cfg, stop)


def cmd_watch(cfg: CityConfig, _args: argparse.Namespace) -> int:
    from city.watch import Watch

    stop = threading.Event()
    _stop_on_signals(stop)
    Watch(cfg).run(stop)
    return 0


def cmd_run(cfg: CityConfig, args: argparse.Namespace) -> int:
    """Supervise N ingest workers, the desk and the watch as child processes; one that exits
    is started again after a second (systemd does the same for the separate units)."""
    db.prepare(cfg)
    me = [sys.executable, "-m", "city.cli", "--config", args.config]
    wanted = {
        f"ingest-w{n}": [*me, "ingest", "--name", f"w{n}"] for n in range(1, cfg.ingest.workers + 1)
    }
    wanted["desk"] = [*me, "desk"]
    wanted["watch"] = [*me, "watch"]
    stop = threading.Event()
    _stop_on_signals(stop)
    children: dict[str, subprocess.Popen[bytes]] = {}
    while not stop.is_set():
        for name, argv in wanted.items():
            child = children.get(name)
            if child is None or child.poll() is not None:
                if child is not None:
                    error("run.child_exited", child=name, status=child.returncode)
                children[name] = subprocess.Popen(argv)
                log("run.child_started", child=name, pid=children[name].pid)
        stop.wait(RESTART_DELAY_S)
    for child in children.values():
        child.terminate()
    for child in children.values():
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


def cmd_operator(cfg: CityConfig, args: argparse.Namespace) -> int:
    from city.desk.auth import OperatorError, add_operator

    password = os.environ.get("GASGUARD_CITY_PASSWORD") or getpass.getpass(
        f"password for {args.name}: "
    )
    db.prepare(cfg)
    try:
        with db.connect(cfg.dsn) as conn:
            add_operator(
                conn, args.name, args.display or args.name, args.role, args.district, password
            )
    except OperatorError as e:
        print(f"gasguard-city operator add: {e}", file=sys.stderr)
        return 2
    print(f"operator {args.name} ({args.role}) added")
    return 0


def cmd_ledger(cfg: CityConfig, args: argparse.Namespace) -> int:
    from city.ledger import write_csv

    with db.connect(cfg.dsn) as conn:
        write_csv(conn, sys.stdout, district=args.district, month=args.month)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gasguard-city", description="The city gas-safety desk.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the city's TOML config")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the database schema migrations")
    p = sub.add_parser("ingest", help="one ingest worker")
    p.add_argument("--name", default="w1", help="worker name (in logs and its MQTT client id)")
    sub.add_parser("desk", help="the duty page")
    sub.add_parser("watch", help="silent sites and escalation")
    sub.add_parser("run", help="everything, supervised")
    p = sub.add_parser("operator", help="manage desk operators")
    opsub = p.add_subparsers(dest="op", required=True)
    a = opsub.add_parser(
        "add", help="add an operator (password from GASGUARD_CITY_PASSWORD or asked)"
    )
    a.add_argument("name")
    a.add_argument("--display", default="")
    a.add_argument("--role", choices=("officer", "admin"), required=True)
    a.add_argument("--district", default=None)
    p = sub.add_parser("ledger", help="the hazard and commissioning ledger as CSV on stdout")
    p.add_argument("--district", default=None)
    p.add_argument("--month", default=None, help="YYYY-MM (default: all)")
    args = parser.parse_args(argv)
    cfg = _config(args.config)
    commands = {
        "migrate": cmd_migrate,
        "ingest": cmd_ingest,
        "desk": cmd_desk,
        "watch": cmd_watch,
        "run": cmd_run,
        "operator": cmd_operator,
        "ledger": cmd_ledger,
    }
    started = time.monotonic()
    try:
        return commands[args.command](cfg, args)
    except KeyboardInterrupt:
        return 0
    finally:
        log("cli.exit", command=args.command, ran_s=round(time.monotonic() - started, 1))


if __name__ == "__main__":
    raise SystemExit(main())
