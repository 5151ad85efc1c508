"""The ledger roll-up: commissioning records and hazards as the kitchens' consoles send them,
listed per district with their state and signatures, exported as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import psycopg

from city.ledger import write_csv
from tests.city.conftest import SITE, Desk, RunningWorker
from tests.city.kitchens import BareKitchen
from tests.city.test_desk import Browser


def _commission(k: BareKitchen) -> None:
    """The events a technician's console sends for a commissioning with one failed item,
    whose hazard is then fixed and verified (shapes of gateway/console/commands.py)."""
    record = {
        "id": "CR-20261201-0001",
        "site": {"id": k.site_id, "name": "老王面馆", "address": "西湖区文三路 1 号"},
        "technician": "chen.tech",
    }
    k.event(
        1,
        "commissioning.signed",
        "site",
        record_id="CR-20261201-0001",
        summary="12 items, 1 failed",
        hazards=["H-1"],
        record=record,
    )
    k.event(
        2,
        "hazard.opened",
        "H-1",
        record_id="CR-20261201-0001",
        item="hose",
        text="软管老化 hose aged",
        remark="软管老化",
        responsible="王老板",
        deadline="2026-12-10",
    )
    k.event(3, "hazard.overdue", "H-1")
    k.event(
        4,
        "hazard.closed",
        "H-1",
        item="hose",
        verified_by="chen.tech",
        remark="换新管 new hose",
        deadline="2026-12-10",
        overdue=True,
    )
    assert k.wait_acks({1, 2, 3, 4})


def test_the_ledger_lists_records_and_hazards_with_who_signed_and_exports_csv(
    desk: Desk, workers: Callable[..., RunningWorker], kitchen: Callable[..., BareKitchen]
) -> None:
    workers()
    _commission(kitchen(SITE))
    other = kitchen("hz-gs-3")
    other.event(
        1,
        "hazard.opened",
        "H-1",
        item="valve",
        text="阀门锈蚀",
        remark='=HYPERLINK("http://x")',
        responsible="李",
        deadline="2026-12-20",
    )
    assert other.wait_acks({1})

    xihu = Browser(desk)
    xihu.login("li.wei")
    status, doc = xihu.get("/api/ledger")
    assert status == 200
    by_record = {(r["site_id"], r["record"]): r for r in doc["rows"]}
    assert set(by_record) == {(SITE, "CR-20261201-0001"), (SITE, "H-1")}  # own district only
    record = by_record[(SITE, "CR-20261201-0001")]
    assert record["state"] == "signed" and record["signed_or_verified_by"] == "chen.tech"
    assert record["site_name"] == "老王面馆" and record["district"] == "西湖区"
    hazard = by_record[(SITE, "H-1")]
    assert hazard["state"] == "closed" and hazard["responsible"] == "王老板"
    assert hazard["signed_or_verified_by"] == "chen.tech" and hazard["deadline"] == "2026-12-10"

    admin = Browser(desk)
    admin.login("admin")
    assert len(admin.get("/api/ledger")[1]["rows"]) == 3
    assert {r["state"] for r in admin.get("/api/ledger?district=gongshu")[1]["rows"]} == {"open"}
    assert admin.get("/api/ledger?month=2026-13")[0] == 400

    with xihu.opener.open(f"{desk.url}/ledger.csv", timeout=10) as reply:
        raw = reply.read()
        assert reply.headers["Content-Type"].startswith("text/csv")
    assert raw.startswith("\ufeff".encode())  # Excel reads it as UTF-8
    table = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [r["record"] for r in table] == ["CR-20261201-0001", "H-1"]
    assert table[1]["remark"] == "换新管 new hose"
    # A kitchen's text that looks like a spreadsheet formula is written as text.
    with psycopg.connect(desk.cfg.dsn) as conn:
        out = io.StringIO()
        write_csv(conn, out, "gongshu", None)
    (row,) = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["remark"] == '\'=HYPERLINK("http://x")'


def test_an_open_hazard_shows_in_the_month_it_was_opened(
    desk: Desk, workers: Callable[..., RunningWorker], kitchen: Callable[..., BareKitchen]
) -> None:
    workers()
    k = kitchen(SITE)
    k.event(
        1,
        "hazard.opened",
        "H-7",
        item="vent",
        text="排风不足",
        remark="",
        responsible="张",
        deadline="2026-12-31",
    )
    assert k.wait_acks({1})
    with psycopg.connect(desk.cfg.dsn) as conn:
        month = conn.execute("SELECT left(utc, 7) FROM events").fetchone()
        assert month is not None
        from city.ledger import ledger_rows

        assert [r["record"] for r in ledger_rows(conn, None, month[0])] == ["H-7"]
        assert ledger_rows(conn, None, "1999-01") == []
