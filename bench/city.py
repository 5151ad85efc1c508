"""The city desk under a city's load: 10,000 simulated kitchens, an alarm storm, and faults.

Everything real on this machine: a durable PostgreSQL cluster (fsync on), mosquitto with its
open-files limit raised, two ``gasguard-city ingest`` workers and the desk as their own
processes, and a fleet of kitchens (``bench.city_fleet``: one MQTT connection each, a heartbeat
every ``heartbeat_s``, the outbox's re-send). The page's live feed is read by a client of the
desk's server-sent events as the duty page reads it.

Phases, each measured in the same run:

1. connect every kitchen; then ``baseline_s`` of heartbeats only (the baseline);
2. a clean storm: ``storm`` alarms from as many kitchens within ``storm_s``;
3. the same storm with one of the two workers SIGKILLed 30 % into it;
4. the same with PostgreSQL restarted 30 % into it;
5. the same with the broker stopped for ``outage_s`` 30 % into it.

Each storm uses kitchens of its own. Printed: ingest rates, publish -> stored and publish ->
on the page, worker CPU and RSS, PostgreSQL rows and bytes per event, lost and duplicate
counts, catch-up times, and what one worker and one PostgreSQL can carry.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import psycopg

from bench import Figure, emit, median, note, percentile
from bench.city_fleet import FleetProcess
from bench.procutil import child_env, python, read_cpu_s, read_status_kb, stop_child
from bench.uplink_mqtt import Broker
from city import db
from city.config import CityConfig, load
from city.desk.auth import add_operator
from city.devcluster import Cluster

ADMIN = ("bench.admin", "bench-admin-password")
DISTRICTS = 10
EVENTS_PER_KITCHEN_DAY = 50  # a busy kitchen's events a day (for the capacity figures)
KITCHEN_HEARTBEAT_S = 30.0  # the gateway's default [uplink.mqtt] heartbeat_s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(work: Path, dsn: str, broker_port: int) -> CityConfig:
    districts = "\n".join(
        f'[[district]]\nid = "d{d}"\nname = "District {d}"\nsite_prefixes = ["k{d}-"]\n'
        for d in range(DISTRICTS)
    )
    path = work / "city.toml"
    path.write_text(
        f'[database]\ndsn = "{dsn}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        "[ingest]\nworkers = 2\n"
        f"[desk]\nlisten_port = {_free_port()}\nsilent_after_s = 86400\n"
        # Nobody acknowledges during the bench: keep the ladder out of the figures.
        '[[escalation]]\nafter_s = 3600\nto = "district"\n' + districts,
        encoding="utf-8",
    )
    return load(path)


class PageFeed:
    """Reads the desk's live feed as the duty page does; records when each incident (by site
    and the seq that opened it) first reached the page, on this machine's wall clock."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.seen: dict[tuple[str, int], float] = {}
        self.reloads = 0
        self.errors = 0
        self._stop = threading.Event()
        self.token = self._login()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _login(self) -> str:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        body = urllib.parse.urlencode({"name": ADMIN[0], "password": ADMIN[1]})
        conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        reply = conn.getresponse()
        cookie = reply.getheader("Set-Cookie") or ""
        conn.close()
        if "gg_session=" not in cookie:
            raise RuntimeError(f"bench admin could not log in to the desk ({reply.status})")
        return cookie.split("gg_session=", 1)[1].split(";", 1)[0]

    def _get(self, path: str, timeout: float = 30) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.request("GET", path, headers={"Cookie": f"gg_session={self.token}"})
        return conn.getresponse()

    def _record(self, incidents: list[dict[str, Any]]) -> None:
        now = time.time()
        for i in incidents:
            if i.get("opened_seq") is not None:
                self.seen.setdefault((i["site_id"], int(i["opened_seq"])), now)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self._get("/api/events", timeout=60)
                event = ""
                for raw in reply:
                    if self._stop.is_set():
                        return
                    line = raw.decode("utf-8").rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        if event == "incidents":
                            self._record(json.loads(line[6:])["incidents"])
                        elif event in ("reload", "hello"):
                            self.reloads += event == "reload"
                            self._record(
                                json.loads(self._get("/api/incidents").read())["incidents"]
                            )
            except Exception:  # the desk lost its database or the stream: as a browser does
                self.errors += 1
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()


class Processes:
    """The city's processes this bench starts: ingest workers and the desk."""

    def __init__(self, cfg: CityConfig, work: Path) -> None:
        self.cfg = cfg
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, ready: str) -> subprocess.Popen[bytes]:
        log = self.work / f"{name}.log"
        seen = log.read_text(errors="replace").count(ready) if log.exists() else 0
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [python(), "-m", "city.cli", "--config", str(self.cfg.path), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        self.procs[name] = proc
        deadline = time.monotonic() + 60
        while log.read_text(errors="replace").count(ready) <= seen:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return proc

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        return self.start(name, "ingest", "--name", name, ready="ingest.connected")

    def cpu(self, names: list[str]) -> float:
        return sum(read_cpu_s(self.procs[n].pid) for n in names)

    def rss_mb(self, names: list[str]) -> float:
        return max(read_status_kb(self.procs[n].pid, "VmRSS") for n in names) / 1024

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_child(proc, 10)


def _postgres_cpu(cluster: Cluster) -> float:
    """CPU seconds of the postmaster and its children (the backends, the writer, the WAL)."""
    try:
        master = int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if int(entry.name) == master or ppid == master:
                total += read_cpu_s(int(entry.name))
    return total


def _wait(fleet: FleetProcess, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fleet.status()
        if status["pending"] == 0 and status["scheduled"] == 0:
            return True
        time.sleep(0.2)
    return False


def _stored(dsn: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], float]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT site_id, seq, extract(epoch FROM stored_at)::float8 FROM events"
            " WHERE site_id = ANY(%s) AND kind = 'alarm.raised'",
            ([s for s, _ in keys],),
        ).fetchall()
    wanted = set(keys)
    return {(s, q): t for s, q, t in rows if (s, q) in wanted}


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


@contextlib.contextmanager
def _city(kitchens: int, out: TextIO) -> Iterator[tuple[Cluster, Broker, CityConfig, Processes]]:
    work = Path(tempfile.mkdtemp(prefix="gasguard-city-bench-"))
    cluster = Cluster(durable=True, max_connections=50).create()
    broker = None
    procs = None
    try:
        broker = Broker(work, nofile=kitchens + 4096)
        cfg = _config(work, cluster.dsn, broker.port)
        db.prepare(cfg)
        with psycopg.connect(cfg.dsn) as conn:
            add_operator(conn, ADMIN[0], "Bench", "admin", None, ADMIN[1])
        procs = Processes(cfg, work)
        procs.worker("w1")
        procs.worker("w2")
        procs.start("desk", "desk", ready="desk.listening")
        note(
            out,
            f"PostgreSQL (fsync on) at {cluster.dir}, mosquitto on port {broker.port}, "
            "2 ingest workers and the desk as their own processes",
        )
        yield cluster, broker, cfg, procs
    finally:
        if procs is not None:
            procs.stop()
        if broker is not None:
            broker.stop()
        cluster.remove()


def run(
    out: TextIO,
    kitchens: int = 10_000,
    storm: int = 1_000,
    storm_s: float = 10.0,
    baseline_s: float = 60.0,
    heartbeat_s: float = 60.0,
    outage_s: float = 30.0,
    catchup_timeout_s: float = 240.0,
) -> list[Figure]:
    if kitchens < 4 * storm:
        raise ValueError(f"kitchens {kitchens}: at least 4 x storm ({4 * storm}), one set a storm")
    figures: list[Figure] = []
    sites = [f"k{n % DISTRICTS}-{n:05d}" for n in range(kitchens)]
    with _city(kitchens, out) as (cluster, broker, cfg, procs):
        feed = PageFeed(cfg.desk.listen_host, cfg.desk.listen_port)
        workers = ["w1", "w2"]
        started = time.monotonic()
        fleet = FleetProcess("127.0.0.1", broker.port, sites, heartbeat_s, ack_timeout_s=10.0)
        try:
            deadline = time.monotonic() + max(120.0, kitchens / 20)
            while fleet.status()["connected"] < kitchens:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {fleet.status()['connected']} kitchens connected")
                time.sleep(0.5)
            connect_s = time.monotonic() - started
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_connect_s",
                        connect_s,
                        "s",
                        f"{kitchens} kitchens connected, one MQTT connection each",
                        1,
                    ),
                )
            )

            # -- baseline: heartbeats only ----------------------------------------------------
            hb0 = fleet.status()["heartbeats"]
            cpu0, pg0, t0 = procs.cpu(workers), _postgres_cpu(cluster), time.monotonic()
            time.sleep(baseline_s)
            hb = fleet.status()["heartbeats"] - hb0
            span = time.monotonic() - t0
            base_cpu = procs.cpu(workers) - cpu0
            base_pg = _postgres_cpu(cluster) - pg0
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_heartbeats_per_s",
                        hb / span,
                        "msg/s",
                        f"baseline: heartbeats ingested per second ({kitchens} kitchens, every "
                        f"{heartbeat_s:g} s)",
                        1,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_baseline_worker_cpu",
                        100 * base_cpu / span,
                        "%",
                        "baseline: both ingest workers' CPU, % of one core",
                        1,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_baseline_worker_rss",
                        procs.rss_mb(workers),
                        "MB",
                        "baseline: an ingest worker's resident memory",
                        1,
                    ),
                )
            )
            per_heartbeat_worker = base_cpu / max(1, hb)
            per_heartbeat_pg = base_pg / max(1, hb)

            storms: list[tuple[str, str]] = [
                ("clean", "no fault"),
                ("worker_killed", "one of the two ingest workers SIGKILLed"),
                ("postgres_restarted", "PostgreSQL restarted (pg_ctl restart -m fast)"),
                ("broker_down", f"the broker stopped for {outage_s:g} s"),
            ]
            per_alarm_worker = per_alarm_pg = 0.0
            for n, (name, what) in enumerate(storms):
                chosen = sites[n * storm : (n + 1) * storm]
                hb0 = fleet.status()["heartbeats"]
                cpu0, pg0 = (
                    procs.cpu([w for w in workers if w in procs.procs]),
                    _postgres_cpu(cluster),
                )
                t_start = time.time()
                fleet.storm(chosen, storm_s)
                fault_end = t_start + storm_s
                if name != "clean":
                    time.sleep(storm_s * 0.3)
                    if name == "worker_killed":
                        os.kill(procs.procs["w1"].pid, signal.SIGKILL)
                        procs.procs["w1"].wait(10)
                        fault_end = time.time()
                    elif name == "postgres_restarted":
                        cluster.restart()
                        fault_end = time.time()
                    else:
                        broker.stop()
                        time.sleep(outage_s)
                        broker.start()
                        fault_end = time.time()
                drained = _wait(fleet, catchup_timeout_s)
                published, acked = fleet.results()
                keys = [(s, q) for (s, q) in published if s in set(chosen)]
                stored = _stored(cfg.dsn, keys)
                lost = len([k for k in keys if k not in stored])
                if not drained:
                    note(out, f"storm {name}: not all acknowledged within {catchup_timeout_s:g} s")
                with psycopg.connect(cfg.dsn) as conn:
                    dup_rows = conn.execute(
                        "SELECT count(*) - count(DISTINCT (site_id, seq)) FROM events"
                    ).fetchone()
                    dup_incidents = conn.execute(
                        "SELECT count(*) FROM (SELECT site_id FROM incidents WHERE"
                        " category = 'gas' GROUP BY site_id, source HAVING count(*) > 1) t"
                    ).fetchone()
                duplicates = int(dup_rows[0] if dup_rows else 0) + int(
                    dup_incidents[0] if dup_incidents else 0
                )
                last_ack = max((acked[k] for k in keys if k in acked), default=time.time())
                last_published = max((published[k] for k in keys), default=t_start)
                to_store = [stored[k] - published[k] for k in keys if k in stored]
                to_page = [feed.seen[k] - published[k] for k in keys if k in feed.seen]
                label = f"storm {name} ({what})"
                figures.append(
                    emit(
                        out,
                        Figure(
                            f"city_{name}_lost",
                            lost,
                            "alarms",
                            f"{label}: alarms published and never stored [target 0]",
                            0,
                        ),
                    )
                )
                figures.append(
                    emit(
                        out,
                        Figure(
                            f"city_{name}_duplicates",
                            duplicates,
                            "rows",
                            f"{label}: duplicate event rows + duplicate open incidents [target 0]",
                            0,
                        ),
                    )
                )
                figures.append(
                    emit(
                        out,
                        Figure(
                            f"city_{name}_catch_up_s",
                            max(0.0, last_ack - max(fault_end, last_published)),
                            "s",
                            f"{label}: from the later of the fault's end and the storm's last "
                            "alarm to the last alarm acknowledged to its kitchen",
                            1,
                        ),
                    )
                )
                if to_store:
                    figures.append(
                        emit(
                            out,
                            Figure(
                                f"city_{name}_stored_p50",
                                median(_ms(to_store)),
                                "ms",
                                f"{label}: alarm published -> stored, median",
                                1,
                                samples=tuple(_ms(to_store)),
                            ),
                        )
                    )
                    figures.append(
                        emit(
                            out,
                            Figure(
                                f"city_{name}_stored_p99",
                                percentile(_ms(to_store), 99),
                                "ms",
                                f"{label}: alarm published -> stored, p99",
                                1,
                            ),
                        )
                    )
                if to_page:
                    figures.append(
                        emit(
                            out,
                            Figure(
                                f"city_{name}_page_p99",
                                percentile(_ms(to_page), 99),
                                "ms",
                                f"{label}: alarm published -> on the duty page's live feed, p99"
                                + (" [target <= 2000 ms]" if name == "clean" else ""),
                                1,
                            ),
                        )
                    )
                figures.append(
                    emit(
                        out,
                        Figure(
                            f"city_{name}_on_page",
                            len(to_page),
                            "alarms",
                            f"{label}: alarms that reached the page (of {len(keys)})",
                            0,
                        ),
                    )
                )
                if name == "clean":
                    span = max(1e-3, last_ack - t_start)
                    hb = fleet.status()["heartbeats"] - hb0
                    worker_cpu = procs.cpu(workers) - cpu0
                    pg_cpu = _postgres_cpu(cluster) - pg0
                    per_alarm_worker = max(0.0, worker_cpu - hb * per_heartbeat_worker) / storm
                    per_alarm_pg = max(0.0, pg_cpu - hb * per_heartbeat_pg) / storm
                    figures.append(
                        emit(
                            out,
                            Figure(
                                "city_storm_ingest_rate",
                                storm / span,
                                "alarms/s",
                                f"{label}: alarms stored and acknowledged per second, start to "
                                "last ack",
                                1,
                            ),
                        )
                    )
                    figures.append(
                        emit(
                            out,
                            Figure(
                                "city_storm_worker_cpu",
                                100 * worker_cpu / span,
                                "%",
                                f"{label}: both ingest workers' CPU, % of one core",
                                1,
                            ),
                        )
                    )
                    figures.append(
                        emit(
                            out,
                            Figure(
                                "city_storm_worker_rss",
                                procs.rss_mb(workers),
                                "MB",
                                f"{label}: an ingest worker's resident memory",
                                1,
                            ),
                        )
                    )
                if name == "worker_killed":
                    procs.worker("w1")  # as `gasguard-city run` would, for the next storms

            # -- storage and capacity ---------------------------------------------------------
            with psycopg.connect(cfg.dsn) as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM events), pg_total_relation_size('events'),"
                    " (SELECT count(*) FROM incidents), pg_total_relation_size('incidents')"
                    " + pg_total_relation_size('incident_log'),"
                    " (SELECT count(*) FROM incident_log)"
                ).fetchone()
            assert row is not None
            events, events_bytes, incidents, incident_bytes, steps = (int(v) for v in row)
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_pg_bytes_per_event",
                        events_bytes / max(1, events),
                        "bytes",
                        "PostgreSQL: the events table with its indexes, per event stored",
                        0,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_pg_rows_per_alarm",
                        (events + incidents + steps) / max(1, events),
                        "rows",
                        "PostgreSQL: rows written per alarm (event, incident, timeline step)",
                        2,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_pg_bytes_per_incident",
                        incident_bytes / max(1, incidents),
                        "bytes",
                        "PostgreSQL: an incident with its timeline, tables and indexes",
                        0,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_worker_ms_per_heartbeat",
                        per_heartbeat_worker * 1000,
                        "ms",
                        "ingest worker CPU per heartbeat (baseline)",
                        3,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_worker_ms_per_alarm",
                        per_alarm_worker * 1000,
                        "ms",
                        "ingest worker CPU per alarm (clean storm, heartbeats taken off)",
                        3,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_pg_ms_per_heartbeat",
                        per_heartbeat_pg * 1000,
                        "ms",
                        "PostgreSQL CPU per heartbeat (baseline)",
                        3,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_pg_ms_per_alarm",
                        per_alarm_pg * 1000,
                        "ms",
                        "PostgreSQL CPU per alarm (clean storm, heartbeats taken off)",
                        3,
                    ),
                )
            )
            # A kitchen's steady load: a heartbeat every 30 s and 50 events a day.
            load_worker = per_heartbeat_worker / KITCHEN_HEARTBEAT_S + (
                per_alarm_worker * EVENTS_PER_KITCHEN_DAY / 86400
            )
            load_pg = per_heartbeat_pg / KITCHEN_HEARTBEAT_S + (
                per_alarm_pg * EVENTS_PER_KITCHEN_DAY / 86400
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_kitchens_per_worker",
                        1.0 / max(load_worker, 1e-9),
                        "kitchens",
                        f"kitchens one ingest worker carries at one full core (a heartbeat every "
                        f"{KITCHEN_HEARTBEAT_S:g} s, {EVENTS_PER_KITCHEN_DAY} events a day each)",
                        0,
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "city_kitchens_per_postgres_core",
                        1.0 / max(load_pg, 1e-9),
                        "kitchens",
                        "kitchens one PostgreSQL core carries at the same load",
                        0,
                    ),
                )
            )
            status = fleet.status()
            note(
                out,
                f"fleet: {status['resent']} re-sends, {status['reconnects']} reconnect "
                f"attempts, peak RSS {status['rss_kb'] / 1024:.0f} MB; the page feed "
                f"reloaded {feed.reloads} times, {feed.errors} stream errors",
            )
        finally:
            feed.stop()
            fleet.stop()
    return figures
