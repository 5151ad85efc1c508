"""The `gasguard` command as a technician runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gasguard.example.toml"


def gasguard(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_check_config_accepts_the_example_and_summarises_the_site() -> None:
    r = gasguard("check-config", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    assert "detector wok-1" in r.stdout and "valve main-inlet: held-open on GPIO17" in r.stdout


def test_check_config_lists_every_problem_with_key_value_and_range(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace("high_lel = 50", "high_lel = 60", 1).replace(
        "output_pin = 17", "output_pin = 4"
    )
    bad.write_text(text, encoding="utf-8")
    r = gasguard("check-config", str(bad))
    assert r.returncode == 1
    assert r.stdout == ""
    assert "2 problem(s), config not used" in r.stderr
    assert "detector[0].high_lel = 60: a number from 1 to 50" in r.stderr
    assert "valve[0].output_pin = 4: a BCM GPIO number" in r.stderr


def test_check_config_of_a_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    r = gasguard("check-config", str(tmp_path / "nope.toml"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "a readable TOML file" in r.stderr


def test_status_without_a_running_controller_says_so(tmp_path: Path) -> None:
    r = gasguard("status", "--socket", str(tmp_path / "control.sock"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("gasguard status:")


def test_events_of_a_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    r = gasguard("events", "--db", str(tmp_path / "events.db"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr


def test_demo_once_runs_the_leak_scenario_and_passes() -> None:
    r = gasguard("demo", "--once", "--speed", "4", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SIMULATION" in r.stdout
    assert "valve closed on the leak:       yes" in r.stdout
    assert "reopened before the reset:      no" in r.stdout
    assert r.stdout.rstrip().endswith("PASS")


def test_events_json_prints_one_object_per_line(tmp_path: Path) -> None:
    from gateway.core.model import Event
    from gateway.store.events import EventStore

    db = tmp_path / "events.db"
    with EventStore(db, 1000) as store:
        store.append(1_764_300_000.0, Event("alarm.raised", "wok-1", 1.0, {"level": "high"}))
        store.append(1_764_300_001.0, Event("valve.closing", "main-inlet", 1.1, {}))
    r = gasguard("events", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["kind"], x["source"]) for x in rows] == [
        ("alarm.raised", "wok-1"),
        ("valve.closing", "main-inlet"),
    ]
    assert rows[1]["seq"] == rows[0]["seq"] + 1


def test_run_stops_cleanly_on_sigterm_and_records_its_start(tmp_path: Path) -> None:
    import signal
    import threading
    import time

    from gateway.sim.kitchen import SimulatedKitchen
    from gateway.store.events import EventStore

    kitchen = SimulatedKitchen(tmp_path)
    config = kitchen.start()
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        ready = False
        while time.monotonic() < deadline and not ready:
            line = proc.stdout.readline()
            ready = "event=controller.ready" in line
        assert ready, "no controller.ready line"
        # Keep reading both pipes: a child blocked on a full pipe cannot exit, and on a
        # failure its last words say where it hung.
        tail: list[str] = []
        for pipe in (proc.stdout, proc.stderr):
            threading.Thread(target=lambda f=pipe: tail.extend(f), daemon=True).start()
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack
            time.sleep(1.0)
            raise AssertionError(
                "no exit 20 s after SIGTERM; last output:\n" + "".join(tail[-60:])
            ) from None
        assert status == 0, "".join(tail[-40:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        kitchen.stop()
    with EventStore.open_readonly(config.data_dir / "events.db") as reader:
        kinds = [e.kind for e in reader.recent(100)]
    assert "controller.started" in kinds
