"""The technician console over a real pty, against a real controller on the simulated kitchen:
a whole commissioning visit as a technician types it, brute force, idle logout, line editing."""

from __future__ import annotations

import re
import time

from gateway.console.commissioning import CommissioningBook, signature_ok
from gateway.console.configedit import previous_path
from gateway.console.hazards import HazardLedger
from gateway.console.store import ConsoleStore, site_key
from gateway.sim.kitchen import MAIN_VALVE
from tests.console.kit import (
    PIN,
    PROMPT,
    TECH,
    PtyConsole,
    Site,
    wait_for,
)


def test_a_technician_commissions_a_kitchen(site: Site, pty_console: PtyConsole) -> None:
    con = pty_console
    kitchen = site.kitchen
    before = site.config_path.read_text()
    welcome = con.login()
    assert f"Welcome, {TECH}." in welcome
    assert "SIM-KITCHEN-01 [SIM GAS OFF] tech-7> " in welcome

    # Scan finds the two configured detectors and the new one at address 3.
    out = con.answer_yes("scan bus0 1-4 configured")
    rows = {
        int(m[0]): m
        for m in re.findall(r"^(\d)\s+(\S+ \S+)\s+(\S+)\s+\S+ %LEL\s+(\S+)$", out, re.MULTILINE)
    }
    assert sorted(rows) == [1, 2, 3], out
    assert rows[3][2] == "generic-cn-kitchen" and rows[3][3] == "NEW"
    assert rows[1][3] == "wok-1" and rows[1][1] == "9600 8N1"
    assert "to add: detector add NAME bus=bus0 address=3 profile=generic-cn-kitchen" in out

    # Add it: staged, shown in the diff, nothing written yet.
    out = con.run(
        "detector add wok-3 zone=hot-kitchen bus=bus0 address=3 profile=generic-cn-kitchen "
        "gas=natural-gas low_lel=20 high_lel=50"
    )
    assert "staged: detector wok-3 added" in out
    assert site.config_path.read_text() == before
    assert '+name = "wok-3"' in con.run("config diff")
    # A set point outside GB 15322.1 is refused with the key, value and range.
    out = con.run("detector set wok-3 high_lel=60")
    assert "high_lel = 60: a number from 1 to 50" in out
    out = con.answer_yes("config apply")
    assert "applied: the controller reloaded it" in out
    assert 'name = "wok-3"' in site.config_path.read_text()
    assert previous_path(site.config_path).read_text() == before
    assert [d.name for d in site.controller.config.detectors].count("wok-3") == 1
    assert wait_for(
        lambda: any(
            d["name"] == "wok-3" and d["state"] == "normal" for d in site.status()["detectors"]
        ),
        5,
    )

    # Reset opens the gas; the valve test closes it and times the contact.
    assert not kitchen.valve_coil_energised()
    assert "reset accepted" in con.answer_yes("reset")
    assert wait_for(kitchen.valve_coil_energised, 3)
    assert wait_for(lambda: site.status()["valves"][0]["feedback"] == "open", 3)
    out = con.answer_yes(f"test valve {MAIN_VALVE}")
    match = re.search(r"main-inlet closed, confirmed by its position contact after ([\d.]+) s", out)
    assert match is not None, out
    assert 0.0 < float(match.group(1)) < 2.0
    assert not kitchen.valve_coil_energised()

    # The guided inspection: every item passes but the hose, which opens a hazard.
    con.type("commission")
    con.expect(r"(\d+) items\.")
    total = 4 + 1 + 13  # detectors, valve, site items
    for index in range(1, total + 1):
        question = con.expect(rf"\[{index}/{total}\] (.*)\n")
        if "Shutoff valve main-inlet" in question:
            evidence = con.expect(r"evidence: [^\[]*?after [\d.]+ s\n")
            assert "closed, confirmed" in " ".join(evidence.split())
            con.expect(r"\[Enter = pass\]: ")
            con.type("")
            con.expect("remark \\(optional\\): ")
            con.type("closed in the test")
        elif "Connecting hose" in question:
            con.expect("p/f/n")
            con.type("f")
            con.expect("remark \\(what you found\\): ")
            con.type("hose 2.5 m, runs through the wall")
            con.expect("responsible person")
            con.type("Manager Wang 13800000000")
            con.expect("deadline")
            con.type("14")
        else:
            con.expect("p/f/n")
            con.type("p")
            con.expect("remark \\(optional\\): ")
            con.type("")
    summary = con.expect("your PIN: ")
    assert f"pass {total - 1}, fail 1, n/a 0" in summary
    con.type(PIN)
    out = con.expect(PROMPT)
    record_id = re.search(r"record (C-\S+) signed by tech-7 and stored\nhazards opened: H-1", out)
    assert record_id is not None, out

    with ConsoleStore(site.data_dir) as store:
        stored = CommissioningBook(store).get(record_id.group(1))
        assert stored is not None
        assert stored.technician == TECH and stored.hazard_ids == (1,)
        assert signature_ok(stored.record, stored.signature, site_key(site.data_dir))
        hose = next(i for i in stored.record["items"] if i["id"] == "hose")
        assert hose["result"] == "fail" and hose["responsible"] == "Manager Wang 13800000000"
        valve_item = next(i for i in stored.record["items"] if i["id"] == "valve.main-inlet")
        assert valve_item["evidence"]["confirmed"] is True
        hazard = HazardLedger(store).get(1)
        assert hazard.status == "open" and hazard.remark == "hose 2.5 m, runs through the wall"
    assert "signature valid" in con.run(f"commissioning verify {record_id.group(1)}")

    # The hazard is listed, then closed by the technician who verified the fix.
    assert "H-1" in con.run("hazards")
    assert "H-1 closed, verified by tech-7" in con.answer_yes(
        "hazard close H-1 hose replaced by a 1.5 m certified hose"
    )

    # Final reset: the gas comes back only by the manual reset.
    assert wait_for(lambda: not site.status()["reset_blockers"], 5)
    assert "reset accepted" in con.answer_yes("reset")
    assert wait_for(kitchen.valve_coil_energised, 3)
    con.type("logout")
    con.expect(f"Goodbye, {TECH}.")
    con.expect("login: ")

    events = site.events()
    kinds = [e.kind for e in events]
    for kind in (
        "console.login",
        "console.scan_started",
        "console.scan_finished",
        "console.config_applied",
        "config.applied",
        "operator.reset",
        "operator.valve_test",
        "valve.closed",
        "commissioning.signed",
        "hazard.opened",
        "hazard.closed",
        "console.logout",
    ):
        assert kind in kinds, kind
    audited = [e.details["command"] for e in events if e.kind == "console.command"]
    assert "config apply" in audited and f"test valve {MAIN_VALVE}" in audited
    assert all(e.details["technician"] == TECH for e in events if e.kind == "console.command")
    signed = next(e for e in events if e.kind == "commissioning.signed")
    assert signed.details["record_id"] == record_id.group(1)
    assert signed.details["record"]["technician"] == TECH
    closed = next(e for e in events if e.kind == "hazard.closed")
    assert closed.source == "H-1" and closed.details["verified_by"] == TECH


def test_brute_force_locks_the_console(site: Site, pty_console: PtyConsole) -> None:
    con = pty_console
    for attempt in range(1, 6):
        con.expect("login: ")
        con.type(TECH)
        con.expect("PIN: ")
        con.type(f"{111110 + attempt}")
        if attempt < 5:
            con.expect(rf"wrong id or PIN \({5 - attempt} more before")
    con.expect("console locked for 5 min")
    # The right PIN does not help while locked: it is not even asked for.
    con.expect("login: ")
    con.type(TECH)
    out = con.expect(r"try again in \d+ min")
    assert "PIN:" not in out
    kinds = site.kinds()
    assert kinds.count("console.login_failed") == 5
    assert "console.lockout" in kinds and "console.login" not in kinds
    # The lock outlives the console process: a new console on the line is locked too.
    again = PtyConsole(site.config_path)
    try:
        again.expect("login: ")
        again.type(TECH)
        again.expect("console locked after 5 failed logins: try again in")
    finally:
        again.close()
    # A PIN typed into the id field is never recorded.
    failed = [e for e in site.events() if e.kind == "console.login_failed"]
    assert all(e.details["technician"] == TECH for e in failed)


def test_idle_session_is_logged_out_and_staged_changes_dropped(site: Site) -> None:
    con = PtyConsole(site.config_path, idle_s=1.0)
    try:
        con.login()
        assert "staged" in con.run("detector set wok-1 low_lel=15")
        con.expect(r"Logged out: no key for", timeout=5)
        con.expect("Staged configuration changes were discarded")
        con.expect("login: ")
        assert "low_lel = 15" not in site.config_path.read_text()
        logout = [e for e in site.events() if e.kind == "console.logout"]
        assert logout and logout[-1].details["reason"] == "idle"
        assert logout[-1].details["staged_discarded"] is True
    finally:
        con.close()


def test_line_editing_history_and_completion(site: Site, pty_console: PtyConsole) -> None:
    con = pty_console
    con.login()
    # Backspace (DEL, as picocom sends it) fixes a typo.
    out = con.run("whoamx\x7fi")
    assert f"{TECH}, logged in since" in out
    # ^C abandons a line: nothing runs.
    con.send("reset\x03")
    con.expect(r"\^C\n")
    con.expect(PROMPT)
    # Up arrow recalls the previous command (the line is redrawn with it); Enter runs it.
    con.send("\x1b[A")
    con.expect("whoami")
    con.send("\r")
    con.expect(f"{TECH}, logged in since")
    con.expect(PROMPT)
    # Tab completes a unique word.
    con.send("profi\t")
    con.expect("profiles ")
    con.send("\r")
    con.expect("generic-cn-kitchen")
    con.expect(PROMPT)
    # A detector name: the common part first, a second tab lists the choices.
    con.send("inhibit wo\t")
    con.expect("inhibit wok-")
    con.send("\t\t")
    con.expect(r"wok-1\s+wok-2")
    con.send("\x03")
    con.expect(PROMPT)
    # Editing in the middle of the line: Home (^A), then type in front.
    con.send("ami\x01who\r")
    con.expect(f"{TECH}, logged in since")
    con.expect(PROMPT)
    # Garbage control bytes and escape sequences are ignored.
    con.send("\x1b[99~\x00\x1f\x1bOwho\x1b\x1b[Dami\x1b[C\r")
    con.expect(r"logged in since|unknown command")
    con.expect(PROMPT)
    # help names every command; help CMD explains one.
    assert "commission" in con.run("help") and "config apply" in con.run("help")
    assert "previous version kept as .prev" in con.run("help config apply")
    assert "unknown command 'frobnicate'" in con.run("frobnicate now")
    con.type("exit")
    con.expect("Goodbye")


def test_pin_is_never_echoed_and_wrong_pin_is_refused(site: Site, pty_console: PtyConsole) -> None:
    con = pty_console
    con.expect("login: ")
    con.type(TECH)
    con.expect("PIN: ")
    con.type(PIN[:3] + "999")
    out = con.expect("login: ")
    assert PIN[:3] + "999" not in con.raw
    assert "******" in out and "wrong id or PIN" in out
    con.type(TECH)
    con.expect("PIN: ")
    con.type(PIN)
    con.expect(PROMPT)
    assert PIN not in con.raw


def test_status_and_time_show_the_kitchen(site: Site, pty_console: PtyConsole) -> None:
    con = pty_console
    con.login()
    out = con.run("status")
    assert "Gas:       SHUT OFF at main-inlet" in out
    assert "Hazards:   0 open, 0 overdue" in out
    out = con.run("detectors")
    assert re.search(r"wok-1\s+hot-kitchen\s+bus0/1\s+natural-gas\s+1\.0 %LEL\s+normal", out)
    site.kitchen.detectors["fryer"].silent = True
    assert wait_for(
        lambda: (
            next(d for d in site.status()["detectors"] if d["name"] == "fryer")["state"]
            == "comm-fault"
        ),
        8,
    )
    out = con.run("detectors")
    fryer = next(line for line in out.splitlines() if line.startswith("fryer"))
    assert "no reply" in fryer and "%LEL" not in fryer
    con.run("time")
    assert con.screen.rstrip().endswith("SIM-KITCHEN-01 [SIM FAULT] tech-7>")
    out = con.run("events 5 csv")
    assert out.splitlines()[1] == "seq,utc,kind,source,details"
    assert "Controller:" in con.run("time")
    site.kitchen.detectors["fryer"].silent = False
    time.sleep(0.1)


def test_overdue_hazards_show_at_login_and_in_status(site: Site) -> None:
    with ConsoleStore(site.data_dir) as store:
        HazardLedger(store).open_hazard(
            item="cylinders.apart",
            text="In-use and spare cylinders kept apart",
            remark="spare cylinder beside the stove",
            responsible="Li Na",
            deadline="2020-06-01",
            opened_by="tech-1",
            record_id=None,
        )
    con = PtyConsole(site.config_path)
    try:
        out = con.login()
        assert "OVERDUE H-1 due 2020-06-01: cylinders.apart: spare cylinder beside the stove" in out
        status = con.run("status")
        assert "Hazards:   1 open, 1 overdue" in status
        assert "OVERDUE H-1 due 2020-06-01" in status
        out = con.run("hazards")
        assert "H-1   OVERDUE, due 2020-06-01" in out and "responsible: Li Na" in out
    finally:
        con.close()
    overdue = [e for e in site.events() if e.kind == "hazard.overdue"]
    assert len(overdue) == 1 and overdue[0].details["responsible"] == "Li Na"
