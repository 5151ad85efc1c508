"""Fixtures for the city side: one throwaway PostgreSQL cluster per test run, a fresh database
per test (migrated), a config file pointing at them and at the test's mosquitto."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from city import db
from city.config import CityConfig, load
from city.devcluster import Cluster
from city.ingest import IngestWorker
from tests.city.kitchens import BareKitchen
from tests.uplink_fixtures import Mosquitto

_numbers = itertools.count(1)
SITE = "hz-001"  # in district xihu (prefix "hz-00")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The run's cluster (initdb'd in a temporary directory, removed at the end)."""
    try:
        cluster = Cluster(durable=False).create()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def city_dsn(pg_cluster: Cluster) -> str:
    """A new, migrated database for this test."""
    name = f"t{next(_numbers)}"
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # name is ours: t<number>
    dsn = pg_cluster.dsn.replace(" dbname=city", f" dbname={name}")
    db.migrate(dsn)
    return dsn


CITY_TOML = """\
[database]
dsn = "{dsn}"

[broker]
host = "{host}"
port = {port}

[ingest]
workers = 2
batch_wait_s = 0.005

[desk]
listen_port = 0
silent_after_s = 5
watch_every_s = 0.2

[[district]]
id = "xihu"
name = "西湖区"
site_prefixes = ["hz-xh-", "hz-00"]
duty_phone = "+86 571 0000 0001"

[[district]]
id = "gongshu"
name = "拱墅区"
site_prefixes = ["hz-gs-"]
"""


@pytest.fixture
def city_config(tmp_path: Path, city_dsn: str, mosquitto: Mosquitto) -> Callable[..., CityConfig]:
    """Factory: the test's config (``extra`` TOML appended), written to a file and loaded."""

    def make(extra: str = "", **fields: Any) -> CityConfig:
        path = tmp_path / f"city{next(_numbers)}.toml"
        text = CITY_TOML.format(dsn=city_dsn, host=mosquitto.host, port=mosquitto.port)
        path.write_text(text + extra, encoding="utf-8")
        return load(path)

    return make


def rows(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Query helper for assertions."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


OPERATORS = {
    # name: (role, district, password)
    "li.wei": ("officer", "xihu", "xihu-duty-2026"),
    "zhang.min": ("officer", "gongshu", "gongshu-duty-2026"),
    "admin": ("admin", None, "city-admin-2026"),
}


class Desk:
    """The desk's HTTP server running in this test, its operators added."""

    def __init__(self, cfg: CityConfig) -> None:
        from city.desk.server import DeskServer, serve

        self.cfg = cfg
        self.stop = threading.Event()
        ready = threading.Event()
        box: list[DeskServer] = []
        self.thread = threading.Thread(target=serve, args=(cfg, self.stop, ready, box), daemon=True)
        self.thread.start()
        assert ready.wait(15), "the desk did not start"
        self.server = box[0]
        self.url = self.server.url
        assert self.server.hub.listening.wait(10), "the desk is not listening for changes"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def add_operators(cfg: CityConfig) -> None:
    from city.desk.auth import add_operator
    from city.store import sync_districts

    with psycopg.connect(cfg.dsn) as conn:
        sync_districts(conn, cfg)
        for name, (role, district, password) in OPERATORS.items():
            add_operator(conn, name, name.replace(".", " ").title(), role, district, password)


@pytest.fixture
def desk(city_config: Callable[..., CityConfig]) -> Iterator[Desk]:
    cfg = city_config()
    add_operators(cfg)
    running = Desk(cfg)
    yield running
    running.close()


class RunningWorker:
    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)
        self.thread.start()
        assert worker.connected.wait(10), "the ingest worker did not connect"
        time.sleep(0.1)  # its subscriptions are in

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def workers(city_config: Callable[..., CityConfig]) -> Iterator[Callable[..., RunningWorker]]:
    started: list[RunningWorker] = []

    def start(name: str = "w1", cfg: CityConfig | None = None) -> RunningWorker:
        running = RunningWorker(IngestWorker(cfg or city_config(), name))
        started.append(running)
        return running

    yield start
    for w in started:
        if w.thread.is_alive():
            w.stop()


@pytest.fixture
def kitchen(mosquitto: Mosquitto) -> Iterator[Callable[..., BareKitchen]]:
    made: list[BareKitchen] = []

    def make(site_id: str = SITE, **kw: Any) -> BareKitchen:
        k = BareKitchen(mosquitto, site_id, **kw)
        made.append(k)
        return k

    yield make
    for k in made:
        k.close()
