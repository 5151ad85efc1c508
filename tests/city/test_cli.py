"""``gasguard-city``: migrate, operator add, and ``run`` supervising the workers, the desk and
the watch (a killed worker is started again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from city.config import CityConfig
from tests.city.conftest import OPERATORS, SITE, rows
from tests.city.kitchens import BareKitchen
from tests.uplink_fixtures import wait_for


def _cli(
    cfg: CityConfig, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "city.cli", "--config", str(cfg.path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_operator_add_checks_its_input_and_never_stores_the_password(
    city_config: Callable[..., CityConfig],
) -> None:
    cfg = city_config()
    assert "schema 1" in _cli(cfg, "migrate").stdout
    password = {"GASGUARD_CITY_PASSWORD": "long-enough-pw"}
    done = _cli(cfg, "operator", "add", "wang.fang", "--role", "officer", env=password)
    assert done.returncode == 2 and "needs --district" in done.stderr
    done = _cli(
        cfg,
        "operator",
        "add",
        "wang.fang",
        "--role",
        "officer",
        "--district",
        "nowhere",
        env=password,
    )
    assert done.returncode == 2 and "'nowhere' is not in the config" in done.stderr
    done = _cli(cfg, "operator", "add", "w", "--role", "admin", env=password)
    assert done.returncode == 2 and "name 'w'" in done.stderr
    done = _cli(
        cfg,
        "operator",
        "add",
        "wang.fang",
        "--role",
        "admin",
        env={"GASGUARD_CITY_PASSWORD": "short"},
    )
    assert done.returncode == 2 and "at least 10 characters" in done.stderr
    assert rows(cfg.dsn, "SELECT count(*) FROM operators") == [(0,)]
    done = _cli(
        cfg, "operator", "add", "wang.fang", "--role", "officer", "--district", "xihu", env=password
    )
    assert done.returncode == 0, done.stderr
    assert rows(cfg.dsn, "SELECT name, role, district_id FROM operators") == [
        ("wang.fang", "officer", "xihu")
    ]
    assert "long-enough-pw" not in str(rows(cfg.dsn, "SELECT * FROM operators"))
    again = _cli(cfg, "operator", "add", "wang.fang", "--role", "admin", env=password)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_a_bad_config_stops_the_command_with_its_reasons(tmp_path: Path) -> None:
    path = tmp_path / "city.toml"
    path.write_text('[database]\ndsn = "x"\n[ingest]\nworkers = 99\n', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "city.cli", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{path}: ingest.workers = 99: must be a whole number from 1 to 64" in done.stderr


def test_run_starts_everything_and_restarts_a_worker_that_dies(
    city_config: Callable[..., CityConfig],
    kitchen: Callable[..., BareKitchen],
    tmp_path: Path,
) -> None:
    cfg = city_config()
    out = tmp_path / "run.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "city.cli", "--config", str(cfg.path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def lines() -> list[dict[str, object]]:
            return [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]

        assert wait_for(
            lambda: (
                sum(1 for x in lines() if x["event"] == "ingest.connected") == 2
                and any(x["event"] == "desk.serving" for x in lines())
                and any(x["event"] == "watch.started" for x in lines())
            ),
            30,
        ), out.read_text()[-3000:]
        started = {x["child"]: x["pid"] for x in lines() if x["event"] == "run.child_started"}
        assert set(started) == {"ingest-w1", "ingest-w2", "desk", "watch"}
        os.kill(int(str(started["ingest-w1"])), signal.SIGKILL)
        assert wait_for(
            lambda: sum(1 for x in lines() if x["event"] == "ingest.connected") == 3, 30
        ), out.read_text()[-3000:]
        k = kitchen(SITE)
        k.event(1, "alarm.raised", "wok-1", level="high", lel=40.0)
        assert k.wait_acks({1})
        assert rows(cfg.dsn, "SELECT count(*) FROM incidents") == [(1,)]
        assert OPERATORS  # the desk is reachable: its URL was logged
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
