"""The watch: silent sites and the escalation ladder, in its own process (the desk's web
server can be restarted without stopping either).

- **Silent sites.** A kitchen sends a heartbeat every minute; one that has sent nothing for
  ``silent_after_s`` becomes an incident of its own ("site silent"): a dead gateway, a cut
  network or a power cut look the same from here, and each needs someone to look.
- **Escalation.** An incident nobody acknowledged ``after_s`` after it was stored moves up the
  ladder: ``district`` (the district's duty phone by SMS, and its webhook), then ``fire`` (the
  fire centre's desk). Each step is on the incident's timeline, each message sent is in
  ``notifications`` with whether the receiver took it.

Each round claims its work in a transaction and commits before sending anything, so a second
watch (or a restart) never escalates the same step twice; a message that fails is logged on
the timeline, not retried forever.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import psycopg

from city import db
from city.config import CityConfig, District, EscalationStep
from city.incidents import MEDIUM, silent_titles
from city.log import error, log, warn
from city.store import log_step, notify

SEND_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Message:
    incident_id: int
    level: int
    channel: str  # sms or webhook
    target: str  # a phone number or a URL
    body: dict[str, Any]


class Watch:
    def __init__(self, cfg: CityConfig) -> None:
        self.cfg = cfg
        self._districts = {d.id: d for d in cfg.districts}
        self._conn: psycopg.Connection[Any] | None = None

    def run(self, stop: threading.Event) -> None:
        log(
            "watch.started",
            silent_after_s=self.cfg.desk.silent_after_s,
            ladder=[f"{s.to}@{s.after_s:g}s" for s in self.cfg.escalation],
        )
        while not stop.is_set():
            try:
                self.round()
            except psycopg.Error as e:
                error("watch.db_error", error=f"{type(e).__name__}: {e}"[:300])
                self._close()
            stop.wait(self.cfg.desk.watch_every_s)
        self._close()

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.cfg.dsn, autocommit=True)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def round(self) -> None:
        """One look: open silent-site incidents, escalate, send."""
        conn = self._db()
        self._silent_sites(conn)
        for message in self._escalate(conn):
            self._send(conn, message)

    def _silent_sites(self, conn: psycopg.Connection[Any]) -> None:
        after = self.cfg.desk.silent_after_s
        with conn.transaction():
            found = conn.execute(
                "SELECT s.site_id, extract(epoch FROM now() - s.last_seen)::float8 FROM sites s"
                " WHERE s.last_seen < now() - make_interval(secs => %s) AND NOT EXISTS ("
                "  SELECT 1 FROM incidents i WHERE i.site_id = s.site_id"
                "  AND i.category = 'silent' AND i.state <> 'closed' AND i.cleared_at IS NULL)"
                " FOR UPDATE OF s SKIP LOCKED",
                (after,),
            ).fetchall()
            opened = []
            for site_id, silent_s in found:
                title_zh, title_en = silent_titles(site_id, float(silent_s))
                row = conn.execute(
                    "INSERT INTO incidents (site_id, category, source, severity, title_zh,"
                    " title_en) VALUES (%s, 'silent', 'site', %s, %s, %s)"
                    " ON CONFLICT (site_id, category, source) WHERE state <> 'closed' DO UPDATE"
                    " SET cleared_at = NULL, repeats = incidents.repeats + 1,"
                    " updated_at = clock_timestamp() RETURNING id",
                    (site_id, MEDIUM, title_zh, title_en),
                ).fetchone()
                assert row is not None
                log_step(conn, row[0], "watch", "opened", title_zh, None)
                opened.append(int(row[0]))
            if opened:
                notify(conn, opened)
                warn("watch.silent_sites", sites=[r[0] for r in found][:50], count=len(found))

    def _escalate(self, conn: psycopg.Connection[Any]) -> list[Message]:
        messages: list[Message] = []
        for level, step in enumerate(self.cfg.escalation, 1):
            with conn.transaction():
                due = conn.execute(
                    "UPDATE incidents i SET escalation = %s, escalated_at = clock_timestamp(),"
                    " updated_at = clock_timestamp() FROM sites s"
                    " WHERE s.site_id = i.site_id AND i.state = 'new' AND i.escalation = %s"
                    " AND i.stored_at < now() - make_interval(secs => %s)"
                    " RETURNING i.id, i.site_id, s.district_id, i.title_zh, i.title_en,"
                    " i.severity, i.stored_at",
                    (level, level - 1, step.after_s),
                ).fetchall()
                for row in due:
                    targets = self._messages(level, step, row)
                    where = ", ".join(f"{m.channel} {m.target}" for m in targets) or "no receiver"
                    log_step(conn, row[0], "watch", f"escalated to {step.to}", where, None)
                    messages += targets
                if due:
                    notify(conn, [int(r[0]) for r in due])
            if due:
                warn("watch.escalated", level=level, to=step.to, incidents=[r[0] for r in due][:50])
        return messages

    def _messages(self, level: int, step: EscalationStep, row: tuple[Any, ...]) -> list[Message]:
        incident_id, site_id, district_id, title_zh, title_en, severity, stored_at = row
        district: District | None = self._districts.get(district_id) if district_id else None
        minutes = max(1, round(step.after_s / 60))
        sms = f"【燃气报警未确认】{title_zh}（站点 {site_id}，{minutes} 分钟无人确认）"
        body = {
            "incident": incident_id,
            "site_id": site_id,
            "district": district_id,
            "level": level,
            "to": step.to,
            "title_zh": title_zh,
            "title": title_en,
            "severity": severity,
            "stored_at": stored_at.isoformat(),
            "unacknowledged_s": step.after_s,
        }
        out: list[Message] = []
        if step.to == "district" and district is not None:
            if district.duty_phone and self.cfg.desk.sms_url:
                out.append(
                    Message(
                        incident_id,
                        level,
                        "sms",
                        district.duty_phone,
                        {"to": district.duty_phone, "text": sms},
                    )
                )
            if district.webhook:
                out.append(Message(incident_id, level, "webhook", district.webhook, body))
        if step.to == "fire":
            if self.cfg.desk.fire_phone and self.cfg.desk.sms_url:
                out.append(
                    Message(
                        incident_id,
                        level,
                        "sms",
                        self.cfg.desk.fire_phone,
                        {"to": self.cfg.desk.fire_phone, "text": sms},
                    )
                )
            if self.cfg.desk.fire_webhook:
                out.append(Message(incident_id, level, "webhook", self.cfg.desk.fire_webhook, body))
        return out

    def _send(self, conn: psycopg.Connection[Any], m: Message) -> None:
        url = self.cfg.desk.sms_url if m.channel == "sms" else m.target
        problem = ""
        try:
            request = urllib.request.Request(
                url,
                data=json.dumps(m.body, ensure_ascii=False).encode("utf-8"),
                headers={"Content-Type": "application/json; charset=utf-8"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as reply:
                if not 200 <= reply.status < 300:
                    problem = f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            problem = f"{type(e).__name__}: {e}"[:300]
        with conn.transaction():
            conn.execute(
                "INSERT INTO notifications (incident_id, level, channel, target, ok, error)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (m.incident_id, m.level, m.channel, m.target, not problem, problem),
            )
            if problem:
                log_step(
                    conn,
                    m.incident_id,
                    "watch",
                    f"{m.channel} failed",
                    f"{m.target}: {problem}",
                    None,
                )
                notify(conn, [m.incident_id])
        if problem:
            error("watch.send_failed", channel=m.channel, target=m.target, error=problem)
        else:
            log("watch.sent", channel=m.channel, target=m.target, incident=m.incident_id)
