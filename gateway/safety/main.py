"""``gasguard-safety``: the safety process (bus pollers, safety core, valves, annunciator, event
log, control and uplink sockets), as systemd runs it.

It imports nothing from the uplinks or the console and no network library
(``tests/safety/test_imports.py`` checks it), so their bugs and load cannot reach it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import log
from gateway.appliance.cpus import apply_from_env, realtime_priority_from_env
from gateway.appliance.heartbeat import attach as attach_systemd
from gateway.appliance.notify import NotifyError
from gateway.config import Config, load_config
from gateway.safety.controller import Controller
from gateway.validate import ConfigError

DEFAULT_CONFIG = Path("/etc/gasguard/gasguard.toml")


def load_or_explain(path: Path) -> Config | None:
    """The config, or None after printing every problem (file, key, value, range)."""
    try:
        return load_config(path)
    except ConfigError as e:
        print(e.explain(path), file=sys.stderr)
        return None


def lock_memory() -> bool:
    """mlockall(MCL_CURRENT | MCL_FUTURE): no page of the safety process is ever paged out, so
    a reaction never waits for the SD card (the unit sets LimitMEMLOCK=infinity)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(1 | 2) != 0:
        log.warn("safety.mlock_failed", error=os.strerror(ctypes.get_errno()))
        return False
    log.log("safety.memory_locked")
    return True


def run(config_path: Path) -> int:
    """Run the safety process until SIGTERM; its exit status."""
    log.setup()
    if os.environ.get("GASGUARD_MLOCK") == "1":
        lock_memory()
    cpus = apply_from_env()  # before any thread starts: they inherit it
    if cpus is not None:
        log.log("safety.cpus", cpus=",".join(map(str, sorted(cpus))))
    cfg = load_or_explain(config_path)
    if cfg is None:
        log.error("safety.config_refused", path=config_path)
        return 1
    controller = Controller(cfg, realtime_priority=realtime_priority_from_env())
    try:
        # READY=1 after the first complete poll; WATCHDOG=1 only from the safety thread.
        link = attach_systemd(controller)
    except NotifyError as e:
        print(f"gasguard-safety: {e}", file=sys.stderr)
        return 1
    try:
        return controller.run()
    finally:
        link.stopping()
        link.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gasguard-safety", description="The gasguard safety process (gas detection, valves)."
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
