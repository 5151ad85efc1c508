"""``gasguard-uplinks``: the uplinks process (MQTT, GB/T 26875.3, SMS), as systemd runs it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import log
from gateway.appliance.cpus import apply_from_env
from gateway.uplinks.config import load_site
from gateway.uplinks.service import UplinkService
from gateway.validate import ConfigError

DEFAULT_CONFIG = Path("/etc/gasguard/gasguard.toml")


def run(config_path: Path) -> int:
    """Run the uplinks until SIGTERM; exit status 1 for a config it cannot use."""
    log.setup()
    cpus = apply_from_env()  # off the safety process's core
    if cpus is not None:
        log.log("uplinks.cpus", cpus=",".join(map(str, sorted(cpus))))
    try:
        cfg, uplink_cfg = load_site(config_path)
    except ConfigError as e:
        print(e.explain(config_path), file=sys.stderr)
        log.error("uplinks.config_refused", path=config_path, problems=len(e.problems))
        return 1
    return UplinkService(cfg, uplink_cfg).run()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gasguard-uplinks", description="The gasguard uplinks process (centres, SMS)."
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    args = p.parse_args(argv)
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
