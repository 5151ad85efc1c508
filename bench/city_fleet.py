"""Thousands of simulated kitchens as MQTT 5 clients in one process, for ``bench.city``.

Each kitchen is its own paho client with its own connection (client id = site id), driven by
one selector loop through paho's external-loop callbacks (no thread per client). Like a real
kitchen's gateway it subscribes to its ack topic, publishes a heartbeat every ``heartbeat_s``
(QoS 0), and keeps every event it published until the city acknowledges it, re-sending after
``ack_timeout_s`` and after a reconnect (the outbox's promise). Event documents are made by
the gateway's own schema code.

The fleet runs in a child process (``start_fleet``) and takes commands over a pipe:
``("storm", sites, over_s)``, ``("status",)``, ``("results",)``, ``("stop",)``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import resource
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.uplinks.mqtt.schema import encode, event_message
from gateway.uplinks.outbox import OutboxItem

# As a gateway's MQTT channel: paho waits reconnect_min_s after a lost connection and doubles
# the wait after each failed attempt, up to reconnect_max_s (the defaults, 1 s and 30 s).
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
CONNACK_WAIT_S = 10.0  # an attempt without an answer for this long has failed
MISC_EVERY_S = 1.0


@dataclass(slots=True)
class Kitchen:
    site_id: str
    client: mqtt.Client
    next_seq: int = 1
    connected: bool = False
    # seq -> (first published, last sent, payload)
    unacked: dict[int, tuple[float, float, bytes]] = field(default_factory=dict)
    next_heartbeat: float = 0.0
    heartbeats: int = 0
    reconnect_at: float = 0.0
    backoff_s: float = RECONNECT_MIN_S
    connecting_since: float = 0.0  # an attempt waiting for its CONNACK


class Fleet:
    def __init__(
        self,
        host: str,
        port: int,
        site_ids: list[str],
        heartbeat_s: float,
        ack_timeout_s: float,
        prefix: str = "gasguard",
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.heartbeat_s = heartbeat_s
        self.ack_timeout_s = ack_timeout_s
        self.selector = selectors.DefaultSelector()
        self.kitchens: dict[str, Kitchen] = {}
        self.published: dict[tuple[str, int], float] = {}
        self.acked: dict[tuple[str, int], float] = {}
        self.resent = 0
        self.reconnects = 0
        self.scheduled: list[tuple[float, str]] = []  # (when, site) alarms still to publish
        now = time.monotonic()
        for n, site in enumerate(site_ids):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=site, protocol=mqtt.MQTTv5)
            k = Kitchen(site, client, next_heartbeat=now + heartbeat_s * n / len(site_ids))
            client.user_data_set(k)
            client.on_socket_open = self._socket_open
            client.on_socket_close = self._socket_close
            client.on_socket_register_write = self._want_write
            client.on_socket_unregister_write = self._no_write
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            self.kitchens[site] = k

    # -- paho's external-loop callbacks -------------------------------------------------------

    def _socket_open(self, client: mqtt.Client, _k: Any, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _socket_close(self, _client: mqtt.Client, _k: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def _want_write(self, client: mqtt.Client, _k: Any, sock: Any) -> None:
        self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _no_write(self, client: mqtt.Client, _k: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, selectors.EVENT_READ, client)

    def _on_connect(self, client: mqtt.Client, k: Kitchen, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        k.connected = True
        k.connecting_since = 0.0
        k.backoff_s = RECONNECT_MIN_S
        client.subscribe(f"{self.prefix}/{k.site_id}/ack", qos=1)
        now = time.monotonic()
        for seq, (first, _last, payload) in list(k.unacked.items()):
            self._send(k, seq, first, payload, now)  # re-send at once after a reconnect
            self.resent += 1

    def _on_disconnect(self, _c: mqtt.Client, k: Kitchen, _f: Any, _rc: Any, _p: Any) -> None:
        k.connected = False
        self._retry_later(k, time.monotonic())

    def _retry_later(self, k: Kitchen, now: float) -> None:
        k.connecting_since = 0.0
        k.reconnect_at = now + k.backoff_s
        k.backoff_s = min(RECONNECT_MAX_S, k.backoff_s * 2)

    def _on_message(self, _c: mqtt.Client, k: Kitchen, message: mqtt.MQTTMessage) -> None:
        seq = int(json.loads(message.payload)["seq"])
        if k.unacked.pop(seq, None) is not None:
            self.acked[(k.site_id, seq)] = time.time()

    # -- kitchen behaviour ----------------------------------------------------------------------

    def _send(self, k: Kitchen, seq: int, first: float, payload: bytes, now: float) -> None:
        k.unacked[seq] = (first, now, payload)
        if k.connected:
            k.client.publish(f"{self.prefix}/{k.site_id}/event", payload, qos=1)

    def _alarm(self, site: str) -> None:
        k = self.kitchens[site]
        seq = k.next_seq
        k.next_seq += 1
        item = OutboxItem(
            seq,
            time.time(),
            "alarm.raised",
            "wok-1",
            {"level": "high", "lel": 61.5, "zone": "hot-kitchen"},
            f"{site}-{seq}",
        )
        payload = encode(event_message(site, item))
        self.published[(site, seq)] = time.time()
        self._send(k, seq, time.monotonic(), payload, time.monotonic())

    def _timers(self, now: float) -> None:
        for k in self.kitchens.values():
            if not k.connected:
                if k.connecting_since:
                    if now - k.connecting_since >= CONNACK_WAIT_S:
                        self._retry_later(k, now)
                elif k.reconnect_at and now >= k.reconnect_at:
                    k.reconnect_at = 0.0
                    self.reconnects += 1
                    try:
                        k.client.reconnect()
                        k.connecting_since = now
                    except OSError:
                        self._retry_later(k, now)
                continue
            k.client.loop_misc()
            if now >= k.next_heartbeat:
                k.next_heartbeat = now + self.heartbeat_s
                k.heartbeats += 1
                doc = {
                    "site_id": k.site_id,
                    "utc": "",
                    "seq": k.heartbeats,
                    "pending": len(k.unacked),
                }
                k.client.publish(f"{self.prefix}/{k.site_id}/heartbeat", encode(doc), qos=0)
            for seq, (first, last, payload) in list(k.unacked.items()):
                if now - last >= self.ack_timeout_s:
                    self._send(k, seq, first, payload, now)
                    self.resent += 1

    def connect_all(self) -> None:
        for k in self.kitchens.values():
            try:
                k.client.connect(self.host, self.port, keepalive=60)
                k.connecting_since = time.monotonic()
            except OSError:
                self._retry_later(k, time.monotonic())
            self._poll(0)

    def _poll(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            client = key.data
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE:
                client.loop_write()

    def status(self) -> dict[str, int]:
        return {
            "connected": sum(k.connected for k in self.kitchens.values()),
            "pending": sum(len(k.unacked) for k in self.kitchens.values()),
            "published": len(self.published),
            "acked": len(self.acked),
            "resent": self.resent,
            "reconnects": self.reconnects,
            "heartbeats": sum(k.heartbeats for k in self.kitchens.values()),
            "scheduled": len(self.scheduled),
            "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }

    def serve(self, pipe: multiprocessing.connection.Connection) -> None:
        self.connect_all()
        next_misc = time.monotonic()
        while True:
            now = time.monotonic()
            while self.scheduled and self.scheduled[0][0] <= now:
                self._alarm(self.scheduled.pop(0)[1])
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                self._timers(now)
            self._poll(0.005 if self.scheduled else 0.05)
            while pipe.poll():
                command = pipe.recv()
                if command[0] == "storm":
                    _, sites, over_s = command
                    start = time.monotonic()
                    step = over_s / max(1, len(sites))
                    self.scheduled += [(start + i * step, s) for i, s in enumerate(sites)]
                    self.scheduled.sort()
                    pipe.send("ok")
                elif command[0] == "status":
                    pipe.send(self.status())
                elif command[0] == "results":
                    pipe.send((dict(self.published), dict(self.acked)))
                elif command[0] == "stop":
                    for k in self.kitchens.values():
                        k.client.disconnect()
                    pipe.send("stopped")
                    return


def _child(
    pipe: multiprocessing.connection.Connection,
    host: str,
    port: int,
    site_ids: list[str],
    heartbeat_s: float,
    ack_timeout_s: float,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(site_ids) + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    socket.setdefaulttimeout(10)
    Fleet(host, port, site_ids, heartbeat_s, ack_timeout_s).serve(pipe)


class FleetProcess:
    """The fleet in a child process; methods send one command and wait for the answer."""

    def __init__(
        self, host: str, port: int, site_ids: list[str], heartbeat_s: float, ack_timeout_s: float
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_child,
            args=(child, host, port, site_ids, heartbeat_s, ack_timeout_s),
            daemon=True,
        )
        self.process.start()

    def _ask(self, *command: Any) -> Any:
        self._pipe.send(command)
        if not self._pipe.poll(120):
            raise RuntimeError(f"the kitchen fleet did not answer {command[0]!r} in 120 s")
        return self._pipe.recv()

    def storm(self, sites: list[str], over_s: float) -> None:
        self._ask("storm", sites, over_s)

    def status(self) -> dict[str, int]:
        result: dict[str, int] = self._ask("status")
        return result

    def results(self) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
        published, acked = self._ask("results")
        return published, acked

    def stop(self) -> None:
        try:
            self._ask("stop")
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
