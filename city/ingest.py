"""One ingest worker: the kitchens' topics through an MQTT 5 shared subscription, into
PostgreSQL, then the end-to-end acknowledgement.

Run several (``gasguard-city ingest --workers N`` or one per host): the broker hands each
message to one member of the share group, so a worker can die without stopping ingest.

The promise to the kitchen, in order:

1. a batch of messages is checked (city/messages.py); a bad one is logged with its reason,
   taken off the broker and changes nothing;
2. the good ones are stored in one transaction (city/store.py);
3. only after the commit is each event acknowledged on ``<prefix>/<site>/ack``, and only then
   is the broker's QoS 1 delivery acknowledged (paho's ``manual_ack``).

A worker that dies between 2 and 3 leaves events stored but not acknowledged: the kitchen
re-sends them, they are stored as duplicates of nothing, and acknowledged. A worker that dies
before 2 leaves them unstored and unacknowledged: the kitchen re-sends them. While PostgreSQL
is down nothing is acknowledged and the broker stops sending after ``receive_maximum``
unacknowledged messages: the backlog waits in the kitchens' outboxes, where it is durable.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from city import db
from city.config import CityConfig
from city.log import error, log, warn
from city.messages import Incoming, parse
from city.store import Written, sync_districts, write_batch
from gateway.uplinks.mqtt.schema import ack_message, encode

RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
STATS_EVERY_S = 10.0
# QoS 0 heartbeats are dropped (and counted) past this backlog: liveness is told by the next one.
MAX_QUEUED_QOS0 = 20_000


@dataclass(slots=True)
class Counters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped_heartbeats: int = 0
    batches: int = 0
    db_errors: int = 0
    failed_batches: int = 0  # a batch that raised something unforeseen (logged, not acked)


class IngestWorker:
    """One worker: an MQTT client and a PostgreSQL connection. ``run()`` until ``stop()``."""

    def __init__(self, cfg: CityConfig, name: str = "w1") -> None:
        self.cfg = cfg
        self.name = name
        self.counters = Counters()
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        b = cfg.broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{b.share_group}-{name}-{os.getpid()}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if b.username:
            self.client.username_pw_set(b.username, b.password or None)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # The broker is the city's own: try again soon (1 s, then every 2 s).
        self.client.reconnect_delay_set(1, 2)

    # -- MQTT (paho's network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            error("ingest.connect_refused", worker=self.name, reason=str(rc))
            return
        b = self.cfg.broker
        share = f"$share/{b.share_group}/{b.topic_prefix}/+"
        client.subscribe(
            [
                (f"{share}/event", SubscribeOptions(qos=1)),
                (f"{share}/status", SubscribeOptions(qos=1)),
                (f"{share}/heartbeat", SubscribeOptions(qos=0)),
            ]
        )
        self.connected.set()
        log("ingest.connected", worker=self.name, broker=f"{b.host}:{b.port}")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            warn("ingest.disconnected", worker=self.name, reason=str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.qos == 0 and self.inbox.qsize() > MAX_QUEUED_QOS0:
            self.counters.dropped_heartbeats += 1
            return
        self.inbox.put(message)

    # -- the worker loop ---------------------------------------------------------------------

    def start_mqtt(self) -> None:
        b = self.cfg.broker
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.ReceiveMaximum = self.cfg.ingest.receive_maximum
        # A dead worker's in-flight messages die with its session: the kitchens re-send them.
        props.SessionExpiryInterval = 0
        self.client.connect_async(
            b.host, b.port, keepalive=b.keepalive_s, clean_start=True, properties=props
        )
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Store and acknowledge until ``stop()``; then disconnect."""
        self._prepare_db()
        self.start_mqtt()
        last_stats = time.monotonic()
        try:
            while not self._stopping.is_set():
                batch = self._gather()
                if batch:
                    try:
                        self._handle(batch)
                    except Exception as e:  # a worker never dies of what kitchens send
                        self.counters.failed_batches += 1
                        error(
                            "ingest.batch_failed",
                            worker=self.name,
                            error=f"{type(e).__name__}: {e}"[:300],
                            note="not acknowledged: the kitchens re-send",
                        )
                if time.monotonic() - last_stats >= STATS_EVERY_S:
                    last_stats = time.monotonic()
                    log("ingest.stats", worker=self.name, **_as_dict(self.counters))
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            if self._conn is not None:
                self._conn.close()

    def _prepare_db(self) -> None:
        delay = RETRY_MIN_S
        while not self._stopping.is_set():
            try:
                sync_districts(self._db(), self.cfg)
                return
            except psycopg.Error as e:
                self._db_failed(e)
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _gather(self) -> list[mqtt.MQTTMessage]:
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.cfg.ingest.batch_wait_s
        while len(batch) < self.cfg.ingest.batch_max:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _handle(self, batch: list[mqtt.MQTTMessage]) -> None:
        self.counters.received += len(batch)
        good: list[tuple[Incoming, mqtt.MQTTMessage]] = []
        for message in batch:
            try:
                good.append(
                    (
                        parse(
                            message.topic,
                            bytes(message.payload),
                            self.cfg.broker.topic_prefix,
                            self.cfg.ingest.max_message_bytes,
                        ),
                        message,
                    )
                )
            except Exception as e:  # MessageError, or anything else a payload could raise
                self.counters.rejected += 1
                warn(
                    "ingest.rejected",
                    worker=self.name,
                    topic=message.topic[:200],
                    reason=str(e)[:300],
                )
                self._broker_ack(message)  # taken off the broker: it would only come back
        if good:
            self._store(good)

    def _store(self, good: list[tuple[Incoming, mqtt.MQTTMessage]]) -> None:
        try:
            written = self._write([item for item, _ in good])
        except psycopg.OperationalError:
            return  # stopped while the database was away: the kitchens re-send
        except Exception as e:
            # Not the connection: something in the batch the database (or the driver)
            # refuses. Store the messages one by one so only the bad one is refused.
            warn("ingest.batch_refused", worker=self.name, error=f"{type(e).__name__}: {e}"[:300])
            for item, message in good:
                self._store_one(item, message)
            return
        self._acknowledge(good, written)

    def _store_one(self, item: Incoming, message: mqtt.MQTTMessage) -> None:
        try:
            written = self._write([item])
        except psycopg.OperationalError:
            return
        except Exception as e:  # refused by the database or its driver: this message only
            self.counters.rejected += 1
            warn(
                "ingest.rejected",
                worker=self.name,
                topic=message.topic[:200],
                reason=f"the database refused it: {type(e).__name__}: {e}"[:300],
            )
            self._broker_ack(message)
            return
        self._acknowledge([(item, message)], written)

    def _write(self, items: list[Incoming]) -> Written:
        """One transaction; retried while the database is unreachable (nothing is stored and
        nothing acknowledged meanwhile). Raises OperationalError only when stopped."""
        delay = RETRY_MIN_S
        while True:
            try:
                return write_batch(self._db(), self.cfg, items)
            except psycopg.OperationalError as e:
                self._db_failed(e)
                if self._stopping.wait(delay):
                    raise
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception:
                if self._conn is not None and self._conn.broken:
                    self._db_failed_quietly()
                elif self._conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._conn.rollback()  # a half-done transaction must not linger
                raise

    def _acknowledge(self, good: list[tuple[Incoming, mqtt.MQTTMessage]], written: Written) -> None:
        self.counters.batches += 1
        self.counters.stored += written.stored
        self.counters.duplicates += written.duplicates
        prefix = self.cfg.broker.topic_prefix
        for item, message in good:
            if item.leaf == "event":
                seq = int(item.doc["seq"])
                self.client.publish(
                    f"{prefix}/{item.site_id}/ack", encode(ack_message(item.site_id, seq)), qos=1
                )
            self._broker_ack(message)

    def _broker_ack(self, message: mqtt.MQTTMessage) -> None:
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.cfg.dsn)
        return self._conn

    def _db_failed(self, e: psycopg.Error) -> None:
        self.counters.db_errors += 1
        error("ingest.db_error", worker=self.name, error=f"{type(e).__name__}: {e}"[:300])
        self._db_failed_quietly()

    def _db_failed_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _as_dict(counters: Counters) -> dict[str, int]:
    return {name: getattr(counters, name) for name in counters.__dataclass_fields__}
