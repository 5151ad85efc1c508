"""The console's parts on their own: technicians and lockout, the hazard ledger, signed
commissioning records, console events into the controller's log (and their durable queue),
the controller-side ``record`` and ``scan`` commands, the overdue-hazard watch, ``test uplink``
against a real outbox, and the first-time set-up command."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import select
import stat
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.api.control import ControlClient, ControlError
from gateway.api.records import RecordError, check_record
from gateway.console.auth import (
    LOCKOUT_S,
    MAX_FAILURES,
    AuthError,
    Technicians,
    pin_problem,
)
from gateway.console.commands import Console
from gateway.console.commissioning import (
    SITE_ITEMS,
    Answer,
    ChecklistItem,
    CommissioningBook,
    build_record,
    checklist,
    sign,
    signature_ok,
)
from gateway.console.hazards import HazardError, HazardLedger, hazard_id, parse_deadline
from gateway.console.hazardwatch import watch_site
from gateway.console.link import ControllerLink
from gateway.console.store import ConsoleStore, site_key
from gateway.console.uplinktest import run_uplink_test
from gateway.paths import console_db, events_db, outbox_db
from gateway.uplinks.outbox import Outbox
from gateway.uplinks.service import EventFollower
from tests.console.kit import (
    PIN,
    TECH,
    Site,
    wait_for,
)

# -- technicians ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pin", "problem"),
    [
        ("12345", "6 to 12 digits"),
        ("1234567890123", "6 to 12 digits"),
        ("12a456", "6 to 12 digits"),
        ("000000", "one digit repeated"),
        ("123456", "straight run"),
        ("987654", "straight run"),
        ("246810", None),
        ("19283746", None),
    ],
)
def test_pin_rules(pin: str, problem: str | None) -> None:
    found = pin_problem(pin)
    assert (found is None) if problem is None else (found is not None and problem in found)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_pins_are_stored_hashed_and_the_file_is_private(tmp_path: Path) -> None:
    with ConsoleStore(tmp_path) as store:
        techs = Technicians(store)
        techs.add("tech-1", "19283746", created_by="test")
        assert techs.check_pin("tech-1", "19283746")
        assert not techs.check_pin("tech-1", "19283747")
        assert not techs.check_pin("nobody", "19283746")
        with pytest.raises(AuthError, match="already exists"):
            techs.add("tech-1", "55667788", created_by="test")
        with pytest.raises(AuthError, match="technician id"):
            techs.add("bad id!", "55667788", created_by="test")
        with pytest.raises(AuthError, match="last technician"):
            techs.remove("tech-1")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("console"))
    assert b"19283746" not in raw
    assert stat.S_IMODE(console_db(tmp_path).stat().st_mode) == 0o600
    key = site_key(tmp_path)
    assert len(key) == 32 and site_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / "site.key").stat().st_mode) == 0o600


def test_five_failures_lock_for_five_minutes_then_it_opens_again(tmp_path: Path) -> None:
    clock = Clock()
    with ConsoleStore(tmp_path) as store:
        techs = Technicians(store, clock=clock)
        techs.add("tech-1", "19283746", created_by="test")
        techs.add("tech-2", "55667788", created_by="test")
        assert not techs.login("tech-1", "00000001").ok
        assert techs.login("tech-1", "19283746").ok  # a success resets the count
        results = [techs.login(tid, "00000001") for tid in ("x", "tech-2", "tech-1", "y", "z")]
        assert [r.failures for r in results] == [1, 2, 3, 4, 5]
        assert results[-1].lockout_started and not any(r.lockout_started for r in results[:-1])
        locked = techs.login("tech-1", "19283746")
        assert not locked.ok and "locked" in locked.message
        assert techs.locked_for() == pytest.approx(LOCKOUT_S)
        clock.now += LOCKOUT_S - 1
        assert not techs.login("tech-1", "19283746").ok
        clock.now += 2
        assert techs.locked_for() == 0
        assert techs.login("tech-1", "19283746").ok
    assert MAX_FAILURES == 5


def test_pin_rechecks_count_and_lock_like_logins(tmp_path: Path) -> None:
    """A PIN asked again (PIN change, commissioning signature) is no way to guess a PIN."""
    clock = Clock()
    with ConsoleStore(tmp_path) as store:
        techs = Technicians(store, clock=clock)
        techs.add("tech-1", "19283746", created_by="test")
        assert techs.login("tech-1", "19283746").ok
        before = techs.last_login("tech-1")
        results = [techs.recheck("tech-1", f"0000000{i}") for i in range(MAX_FAILURES)]
        assert [r.failures for r in results] == list(range(1, MAX_FAILURES + 1))
        assert results[-1].lockout_started
        # Locked: not even the right PIN is checked, at a re-check or at the login prompt.
        assert not techs.recheck("tech-1", "19283746").ok
        assert not techs.login("tech-1", "19283746").ok
        clock.now += LOCKOUT_S + 1
        assert techs.recheck("tech-1", "19283746").ok
        assert techs.last_login("tech-1") == before  # a re-check is not a login


# -- hazards -------------------------------------------------------------------------------------


def test_deadlines_and_hazard_ids() -> None:
    today = dt.date(2025, 3, 1)
    assert parse_deadline("7", today) == "2025-03-08"
    assert parse_deadline("14d", today) == "2025-03-15"
    assert parse_deadline("2025-04-01", today) == "2025-04-01"
    for bad in ("2025-02-28", "2025-02-30", "tomorrow", "400", "2027-01-01"):
        with pytest.raises(HazardError):
            parse_deadline(bad, today)
    assert hazard_id("H-12") == 12 and hazard_id("h12") == 12 and hazard_id("7") == 7
    with pytest.raises(HazardError):
        hazard_id("H-x")


def test_overdue_hazards_are_reported_once_and_closing_records_the_verifier(
    tmp_path: Path,
) -> None:
    today = [dt.date(2025, 3, 1)]
    with ConsoleStore(tmp_path) as store:
        ledger = HazardLedger(store, today=lambda: today[0])
        h = ledger.open_hazard(
            item="hose",
            text="Hose at most 2 m",
            remark="3 m",
            responsible="Wang",
            deadline="2025-03-05",
            opened_by="tech-1",
            record_id=None,
        )
        assert ledger.overdue() == [] and ledger.claim_overdue_reports() == []
        today[0] = dt.date(2025, 3, 6)
        assert [x.id for x in ledger.overdue()] == [h.id]
        assert [x.id for x in ledger.claim_overdue_reports()] == [h.id]
        assert ledger.claim_overdue_reports() == []  # once
        closed = ledger.close(h.id, "tech-2", "hose replaced")
        assert closed.status == "closed" and closed.verified_by == "tech-2"
        assert ledger.overdue() == []
        with pytest.raises(HazardError, match="already closed"):
            ledger.close(h.id, "tech-2", "again")
        with pytest.raises(HazardError, match="no hazard H-99"):
            ledger.close(99, "tech-2", "x")
        with pytest.raises(HazardError, match="remark: must not be empty"):
            ledger.open_hazard(
                item="x",
                text="t",
                remark="  ",
                responsible="r",
                deadline="2025-03-09",
                opened_by="a",
                record_id=None,
            )


# -- commissioning records ---------------------------------------------------------------------


def test_records_are_signed_and_tampering_shows(site: Site, tmp_path: Path) -> None:
    config = site.config()
    items = checklist(config)
    assert [i.id for i in items[:3]] == ["detector.wok-1", "detector.wok-2", "detector.fryer"]
    assert items[3].valve == "main-inlet" and len(items) == 3 + 1 + len(SITE_ITEMS)
    lpg = ChecklistItem("detector.lpg", "x")
    answers = [Answer(i, "pass", "") for i in items[:-1]]
    answers.append(Answer(items[-1], "fail", "no training", None, "Wang", "2099-01-01"))
    record = build_record(
        record_id="C-1",
        config=config,
        config_sha256="0" * 64,
        technician=TECH,
        started_utc=1.0,
        signed_utc=2.0,
        answers=answers,
    )
    key = site_key(tmp_path)
    signature = sign(record, key)
    assert signature_ok(record, signature, key)
    assert not signature_ok(record, signature, os.urandom(32))
    tampered = {**record, "technician": "someone-else"}
    assert not signature_ok(tampered, signature, key)
    with pytest.raises(ValueError, match="responsible person"):
        Answer(lpg, "fail", "found", None, None, None)
    with ConsoleStore(tmp_path) as store:
        book = CommissioningBook(store)
        stored = book.store_signed(record, signature, answers)
        assert len(stored.hazard_ids) == 1
        again = book.get("C-1")
        assert again is not None and signature_ok(again.record, again.signature, key)
        assert HazardLedger(store).get(stored.hazard_ids[0]).record_id == "C-1"
        # A bad hazard rolls the whole record back: both or neither.
        bad = [Answer(items[0], "fail", "found", None, "Wang", "2099-02-30")]
        record2 = {**record, "id": "C-2"}
        with pytest.raises(ValueError):
            book.store_signed(record2, sign(record2, key), bad)
        assert book.get("C-2") is None
        assert len(HazardLedger(store).hazards()) == 1


# -- console events into the controller's log -------------------------------------------------


def test_check_record_refuses_what_is_not_a_console_event() -> None:
    now = 1_800_000_000.0
    assert check_record("console.login", "console", {}, None, now)[3] == now
    bad: list[tuple[Any, Any, Any, Any, str]] = [
        ("alarm.raised", "wok-1", {}, None, "kind"),
        ("console.Login", "console", {}, None, "kind"),
        ("console.x", "a b", {}, None, "source"),
        ("console.x", "console", [], None, "JSON object"),
        ("console.x", "console", {"a": "x" * 20000}, None, "bytes"),
        ("console.x", "console", {"a": float("nan")}, None, "plain JSON"),
        ("console.x", "console", {}, now + 3600, "utc"),
        ("console.x", "console", {}, True, "utc"),
    ]
    for kind, source, details, utc, what in bad:
        with pytest.raises(RecordError, match=what):
            check_record(kind, source, details, utc, now)


def test_record_and_scan_commands_on_the_control_socket(site: Site) -> None:
    client = ControlClient(site.config().control_socket)
    utc = time.time() - 120
    assert client.call(
        "record", kind="console.test", source="console", details={"n": 1}, utc=utc
    ) == {"recorded": True}
    stored = [e for e in site.events() if e.kind == "console.test"]
    assert len(stored) == 1 and stored[0].details == {"n": 1}
    assert stored[0].utc == pytest.approx(utc)
    with pytest.raises(ControlError, match=r"record: kind 'valve\.closed'"):
        client.call("record", kind="valve.closed", source="main-inlet", details={})
    with pytest.raises(ControlError, match="scan: bus 'bus9': one of bus0, bus1"):
        client.call("scan", bus="bus9")
    with pytest.raises(ControlError, match="last = 3"):
        client.call("scan", bus="bus0", first=5, last=3)
    found = ControlClient(site.config().control_socket, timeout=30).call(
        "scan", bus="bus0", first=2, last=3, lines="configured", operator=TECH
    )
    assert [(f["address"], f["profile"], f["configured_as"]) for f in found["found"]] == [
        (2, "generic-cn-kitchen", "wok-2"),
        (3, "generic-cn-kitchen", None),
    ]
    assert found["poller_stopped"] and found["poller_restarted"]
    # The bus is polled again after the scan.
    wok1 = site.kitchen.detectors["wok-1"]
    seen = wok1.requests_seen
    assert wait_for(lambda: wok1.requests_seen > seen + 2, 3)
    assert sum(1 for p in site.controller.buses if p.bus.name == "bus0") == 1


def test_console_events_wait_durably_while_the_controller_is_away(site: Site) -> None:
    with ConsoleStore(site.data_dir) as store:
        away = ControllerLink(site.data_dir / "nobody.sock", store)
        assert away.record("console.first", "console", {"n": 1}) is False
        assert away.record("console.second", "console", {"n": 2}) is False
        assert away.waiting() == 2
        back = ControllerLink(site.config().control_socket, store)
        assert back.flush() == 0
    kinds = [e.kind for e in site.events() if e.kind in ("console.first", "console.second")]
    assert kinds == ["console.first", "console.second"]


def test_hazard_watch_reports_overdue_hazards_from_the_controller(site: Site) -> None:
    with ConsoleStore(site.data_dir) as store:
        HazardLedger(store).open_hazard(
            item="exits",
            text="Exits clear",
            remark="boxes in the corridor",
            responsible="Li",
            deadline="2020-01-01",
            opened_by=TECH,
            record_id=None,
        )
    watch = watch_site(site.config().path)  # as the console service runs it
    assert watch.check() == 1
    assert watch.check() == 0
    overdue = [e for e in site.events() if e.kind == "hazard.overdue"]
    assert len(overdue) == 1 and overdue[0].source == "H-1"
    assert overdue[0].details["responsible"] == "Li" and overdue[0].details["days_overdue"] > 0


class _IO:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def ask(self, prompt: str, *, secret: bool = False) -> str | None:
        return None


def test_uplink_test_waits_for_each_channels_acknowledgement(site: Site) -> None:
    # The uplinks process's part: its outbox follows the event log; no channel runs, the
    # receiver below plays MQTT's and the GB centre never answers.
    outbox = Outbox(outbox_db(site.data_dir), "SIM-KITCHEN-01", ["mqtt", "gb26875"])
    follower = EventFollower(events_db(site.data_dir), outbox)
    follower.start()
    stop = threading.Event()

    def mqtt_receiver() -> None:  # acknowledges what reaches it; the GB centre never does
        while not stop.wait(0.05):
            items = outbox.peek("mqtt", 100)
            if items:
                outbox.ack_many("mqtt", [i.seq for i in items])

    thread = threading.Thread(target=mqtt_receiver, daemon=True)
    thread.start()
    try:
        with ConsoleStore(site.data_dir) as store:
            io = _IO()
            console = Console(
                config_path=site.config_path,
                data_dir=site.data_dir,
                store=store,
                link=ControllerLink(site.config().control_socket, store),
                io=io,
                technician=TECH,
                technicians=Technicians(store),
            )
            lines = run_uplink_test(console, ack_wait_s=2.0)
    finally:
        stop.set()
        thread.join(2)
        follower.stopping.set()
        follower.join(2)
        outbox.close()
    assert any(line.startswith("  mqtt: acknowledged by the receiver after") for line in lines)
    assert "  gb26875: NO acknowledgement within 2 s" in lines
    tested = [e for e in site.events() if e.kind == "console.uplink_tested"]
    assert tested and tested[-1].details["missing"] == ["gb26875"]


def _take_terminal() -> None:
    """In the child: make stdin (a pty) its controlling terminal, as a login shell has."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_first_time_set_up_from_a_shell_on_the_pi(site: Site) -> None:
    # getpass reads the PIN from the controlling terminal: give the command a pty as one.
    script = (
        "import argparse, sys\n"
        "from gateway.console.cli import add_parser\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers(dest='c', required=True)\n"
        "add_parser(sub); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "console",
            "--config",
            str(site.config_path),
            "--add-technician",
            "tech-9",
        ],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    try:
        # getpass turns echo off (flushing what was typed ahead), then prompts: answer each
        # prompt once it shows.
        for prompt in (b"PIN for tech-9", b"Same PIN again"):
            shown = b""
            deadline = time.monotonic() + 20
            while prompt not in shown:
                assert time.monotonic() < deadline, shown
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    shown += os.read(master, 1024)
            os.write(master, b"55667788\n")
        out, err = proc.communicate(timeout=20)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert b"technician tech-9 added" in out
    with ConsoleStore(site.data_dir) as store:
        assert Technicians(store).check_pin("tech-9", "55667788")
    added = [e for e in site.events() if e.kind == "console.technician_added"]
    assert added and added[-1].details["added"] == "tech-9"
    assert PIN not in str(added[-1].details)
