"""The MQTT 5 channel: drains the outbox to a broker, end to end.

What "delivered" means here: the receiving centre published an acknowledgement on
``<prefix>/<site>/ack`` for the event (``{"event_id": ..., "seq": ...}``). The broker's PUBACK
only says the broker has it; an event is removed from this channel's queue in the outbox only
when the centre's ack arrives. Until then it is re-sent: ``ack_timeout_s`` after it was sent
(doubling per attempt, at most 5 min, so an absent centre is not flooded), and at once after
every reconnect. Receivers de-duplicate by ``event_id``.

Threads: paho's network thread (``loop_start``) only parses what arrives and hands it to the
channel thread through a queue; the channel thread owns the outbox calls and the publishing.
Neither ever touches the safety thread: events reach the outbox through the recorder.

Down-link: the channel subscribes to its ack topic and to ``cmd``, where the only accepted
request is ``{"cmd": "status"}`` (answered on the status topic). Anything else is ignored with
one log line; malformed JSON never raises out of a callback. Who may publish acks and commands
is the broker's business: its ACL must give ``<prefix>/<site>/ack`` and ``/cmd`` to the centre's
account only (a forged ack would mark an event delivered).
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway import __version__
from gateway.core.model import Event
from gateway.log import error, log, warn
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.mqtt.config import MqttConfig
from gateway.uplinks.mqtt.discovery import discovery_configs
from gateway.uplinks.mqtt.schema import (
    MessageError,
    Topics,
    encode,
    event_message,
    iso_utc,
    mqtt_properties,
    offline_message,
    parse_ack,
    parse_command,
    status_fingerprint,
    status_message,
)
from gateway.uplinks.outbox import Outbox, OutboxItem

CHANNEL = "mqtt"
CONNECT_FAILED = "connect failed"
MAX_RESEND_INTERVAL_S = 300.0
STATUS_CHECK_S = 1.0  # how often the status is compared with the last one published
# Events after which the status is published at once (it changed with them).
STATE_CHANGE_KINDS = ("alarm.", "fault.", "valve.", "operator.reset", "store.", "power.")
IDLE_WAKE_S = 1.0
ERROR_PAUSE_S = 1.0
MAX_ACKS_PER_TX = 1000


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context: the server certificate and host name are always checked
    (``create_default_context``: CERT_REQUIRED, check_hostname). Raises ValueError naming the
    file when a CA, certificate or key cannot be loaded."""
    try:
        context = ssl.create_default_context(
            cafile=str(cfg.ca_file) if cfg.ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as e:
        raise ValueError(
            f"uplink.mqtt.ca_file {cfg.ca_file}: not usable as CA certificates: {e}"
        ) from e
    if cfg.cert_file is not None and cfg.key_file is not None:
        try:
            context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"uplink.mqtt.cert_file {cfg.cert_file} / key_file {cfg.key_file}: "
                f"not a usable certificate and key: {e}"
            ) from e
    return context


def no_delay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off on the client's socket: an alarm is one small packet, and
    Nagle holding it back until the previous one is acknowledged (delayed ACK) costs 40 ms a
    hop. paho does not do it itself."""
    sock = client.socket()
    if not isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as e:  # e.g. a websocket or unix transport
        log("mqtt.nodelay_unavailable", error=e)


@dataclass(frozen=True, slots=True)
class MqttState:
    """What ``gasguard status`` and the doctor show about the channel."""

    channel: str
    broker: str
    connected: bool
    last_error: str | None
    pending: int
    in_flight: int
    sent: int
    resent: int
    acked: int
    last_ack_utc: float | None
    connects: int
    delivery: str  # "centre": the centre's end-to-end ack; "broker": the broker's PUBACK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Sent:
    at: float
    attempts: int


class MqttChannel:
    """Forwards the outbox to an MQTT 5 broker (QoS 1, persistent session, retained status with
    a Last Will, heartbeat, optional Home Assistant discovery) and takes the centre's acks.

    ``clock`` is the monotonic clock used for re-send timing. ``start()`` returns at once (the
    broker may be down: paho keeps retrying with back-off); ``stop()`` publishes the retained
    ``offline`` status, disconnects and ends the thread.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        outbox: Outbox,
        ctx: UplinkContext,
        clock: Callable[[], float] = time.monotonic,
        *,
        channel: str = CHANNEL,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.ctx = ctx
        self.channel = channel
        self._clock = clock
        self.topics = Topics(cfg.topic_prefix, ctx.site_id)
        self.client_id = cfg.client_id or f"gasguard-{ctx.site_id}"
        outbox.pending(channel)  # ValueError now if the outbox does not know this channel
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # paho's thread -> channel thread
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        # PUBACKs by message id (delivery = "broker"), mapped to events on the channel thread.
        self._pubacks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._mids: dict[int, int] = {}  # message id -> event seq, for events in flight
        self._links: queue.SimpleQueue[tuple[bool, str | None]] = queue.SimpleQueue()
        self._status_wanted = threading.Event()
        self._connected = False
        self._last_error: str | None = None
        self._in_flight: dict[int, _Sent] = {}
        self._delivered: list[Callable[[int], None]] = []
        self._sent = 0
        self._resent = 0
        self._acked = 0
        self._connects = 0
        self._last_ack_utc: float | None = None
        self._down_since: float | None = None
        self._down_recorded = False
        self._connect_fail_logged = False
        self._diagnosis = ""
        self._last_status_fp: str | None = None
        self._last_status_at = -1e18
        self._next_status_check = 0.0
        self._next_heartbeat = 0.0
        self._heartbeats = 0
        self._started_at = clock()
        self._ssl_context: ssl.SSLContext | None = None
        self._client = self._make_client()
        outbox.watch(self._wake.set)

    # -- set-up -----------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
        )
        if cfg.tls:
            context = tls_context(cfg)
            client.tls_set_context(context)
            self._ssl_context = context
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        will = mqtt_properties(PacketTypes.WILLMESSAGE)
        will.ContentType = "application/json"
        client.will_set(
            self.topics.status,
            encode(offline_message(self.ctx.site_id)),
            qos=1,
            retain=True,
            properties=will,
        )
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        if cfg.delivery == "broker":
            client.on_publish = self._on_publish
        return client

    def on_delivered(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(seq)`` on the channel thread when the centre's ack for ``seq`` is
        stored in the outbox (used by benchmarks and fallbacks; must return quickly)."""
        self._delivered.append(callback)

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start draining the outbox."""
        if self._thread is not None:
            raise RuntimeError(f"{self.channel} channel already started")
        self._stop.clear()
        props = mqtt_properties(PacketTypes.CONNECT)
        # The broker keeps the session (subscriptions, queued acks) this long while we are away.
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        self._client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()
        self._thread = threading.Thread(
            target=self._run, name=f"uplink-{self.channel}", daemon=True
        )
        self._thread.start()
        log(
            "mqtt.started",
            broker=f"{self.cfg.host}:{self.cfg.port}",
            tls=self.cfg.tls,
            client_id=self.client_id,
            pending=self.outbox.pending(self.channel),
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the retained ``offline`` status, disconnect, end both threads."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        if self._connected:
            try:
                info = self._client.publish(
                    self.topics.status, encode(offline_message(self.ctx.site_id)), 1, retain=True
                )
                info.wait_for_publish(min(2.0, timeout))
            except (RuntimeError, ValueError) as e:
                warn("mqtt.offline_not_published", error=e)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False
        log("mqtt.stopped", sent=self._sent, acked=self._acked)

    @property
    def state(self) -> MqttState:
        try:
            pending = self.outbox.pending(self.channel)
        except Exception as e:  # status must still answer with a broken outbox
            pending = -1
            self._last_error = f"outbox: {e}"
        return MqttState(
            channel=self.channel,
            broker=f"{self.cfg.host}:{self.cfg.port}",
            connected=self._connected,
            last_error=self._last_error,
            pending=pending,
            in_flight=len(self._in_flight),
            sent=self._sent,
            resent=self._resent,
            acked=self._acked,
            last_ack_utc=self._last_ack_utc,
            connects=self._connects,
            delivery=self.cfg.delivery,
        )

    # -- paho callbacks (paho's thread: parse, queue, wake; nothing else) -------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._links.put((False, f"broker refused the connection: {reason}"))
        else:
            no_delay(client)
            # Every time: the session may be new (expired, or a broker without persistence).
            client.subscribe([(self.topics.ack, 1), (self.topics.cmd, 1)])
            self._links.put((True, None))
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._links.put((False, CONNECT_FAILED))
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._links.put((False, f"disconnected: {reason}"))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self.topics.ack:
                self._acks.put(parse_ack(bytes(message.payload), self.ctx.site_id))
                self._wake.set()
            elif message.topic == self.topics.cmd:
                parse_command(bytes(message.payload))
                self._status_wanted.set()
                self._wake.set()
                log("mqtt.cmd", cmd="status")
            else:
                warn("mqtt.unexpected_topic", topic=message.topic)
        except MessageError as e:
            warn("mqtt.downlink_ignored", topic=message.topic, reason=str(e)[:300])
        except Exception as e:  # nothing from the network may kill paho's thread
            error("mqtt.downlink_failed", topic=message.topic, error=repr(e)[:300])

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # The broker has the message (delivery = "broker"). A refusal (reason >= 0x80, e.g.
        # not authorised) is not a delivery: the event stays and is re-sent.
        if reason_code.is_failure:
            warn("mqtt.publish_refused", mid=mid, reason=str(reason_code))
            return
        self._pubacks.put(mid)
        self._wake.set()

    # -- the channel thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._cycle()
            except Exception as e:  # keep forwarding: log, pause, try again
                self._last_error = str(e)
                error("mqtt.cycle_failed", error=repr(e)[:300])
                wait = ERROR_PAUSE_S
            self._wake.wait(wait)
            self._wake.clear()

    def _cycle(self) -> float:
        """One round: link changes, acks, status, heartbeat, (re-)sends. Returns how long the
        thread may sleep if nothing wakes it."""
        now = self._clock()
        self._take_link_changes(now)
        self._take_acks()
        if not self._connected:
            return IDLE_WAKE_S
        self._publish_status(now)
        self._heartbeat(now)
        return self._send_due(now)

    def _take_link_changes(self, now: float) -> None:
        while True:
            try:
                up, why = self._links.get_nowait()
            except queue.Empty:
                return
            if up:
                self._connected = True
                self._connects += 1
                self._connect_fail_logged = False
                down_s = None if self._down_since is None else round(now - self._down_since, 3)
                log("mqtt.connected", broker=f"{self.cfg.host}:{self.cfg.port}", down_s=down_s)
                if self._down_recorded:
                    self._record("uplink.up", {"down_s": down_s})
                self._down_since = None
                self._down_recorded = False
                self._last_error = None
                # Re-send everything not yet acknowledged at once, in order; a receiver
                # de-duplicates what it already had.
                self._in_flight.clear()
                self._mids.clear()
                self._last_status_fp = None
                self._next_heartbeat = now
                self._publish_discovery()
            else:
                was_up = self._connected
                self._connected = False
                if why == CONNECT_FAILED:
                    # paho does not say why; find out once per outage (refused, no route,
                    # certificate not trusted ...) so the technician sees the cause.
                    if self._down_since is None or not self._connect_fail_logged:
                        self._diagnosis = self._diagnose()
                    why = f"cannot connect to {self.cfg.host}:{self.cfg.port}: {self._diagnosis}"
                self._last_error = why
                if self._down_since is None:
                    self._down_since = now
                if was_up or not self._connect_fail_logged:
                    warn("mqtt.down", broker=f"{self.cfg.host}:{self.cfg.port}", reason=why)
                    self._connect_fail_logged = True
                if not self._down_recorded:
                    self._down_recorded = True
                    self._record("uplink.down", {"reason": why})

    def _diagnose(self) -> str:
        """Why a connection to the broker fails, by trying one (TCP, then TLS) ourselves."""
        try:
            with socket.create_connection((self.cfg.host, self.cfg.port), timeout=5.0) as sock:
                if self._ssl_context is not None:
                    with self._ssl_context.wrap_socket(sock, server_hostname=self.cfg.host):
                        pass
        except (OSError, ssl.SSLError) as e:
            return str(e) or type(e).__name__
        return "the broker accepted a test connection; it may refuse the MQTT session"

    def _record(self, kind: str, details: dict[str, Any]) -> None:
        try:
            self.ctx.record(
                Event(kind, self.channel, self._clock(), {"channel": self.channel, **details})
            )
        except Exception as e:
            error("mqtt.record_failed", kind=kind, error=e)

    def _take_acks(self) -> None:
        while True:  # the broker's PUBACKs count as acks only in delivery = "broker"
            try:
                mid = self._pubacks.get_nowait()
            except queue.Empty:
                break
            seq = self._mids.pop(mid, None)
            if seq is not None:
                self._acks.put(seq)
        seqs: list[int] = []
        while len(seqs) < MAX_ACKS_PER_TX:
            try:
                seqs.append(self._acks.get_nowait())
            except queue.Empty:
                break
        if not seqs:
            return
        self.outbox.ack_many(self.channel, seqs)
        for seq in seqs:
            if self._in_flight.pop(seq, None) is not None:
                self._acked += 1
        self._last_ack_utc = time.time()
        for seq in seqs:
            for callback in self._delivered:
                try:
                    callback(seq)
                except Exception as e:
                    error("mqtt.delivered_callback_failed", seq=seq, error=e)
        if len(seqs) == MAX_ACKS_PER_TX:
            self._wake.set()  # more waiting: come straight back

    def _send_due(self, now: float) -> float:
        """Publish what is waiting and not in flight, and re-send what timed out. Returns the
        time until the next re-send is due (capped)."""
        items = self.outbox.peek(self.channel, self.cfg.max_inflight)
        resent: list[int] = []
        changed = False
        next_due = now + IDLE_WAKE_S
        for item in items:
            sent = self._in_flight.get(item.seq)
            if sent is not None:
                due = sent.at + self._resend_interval(sent.attempts)
                if now < due:
                    next_due = min(next_due, due)
                    continue
                resent.append(item.seq)
            if not self._publish_event(item):
                return IDLE_WAKE_S  # connection just dropped; the link change comes next
            attempts = 1 if sent is None else sent.attempts + 1
            self._in_flight[item.seq] = _Sent(now, attempts)
            changed = changed or (sent is None and item.kind.startswith(STATE_CHANGE_KINDS))
            next_due = min(next_due, now + self._resend_interval(attempts))
        if changed:
            # An alarm, fault, valve or reset event: the entities that read the status (Home
            # Assistant) see the new state now, not at the next periodic check.
            self._status_wanted.set()
            self._publish_status(now)
        if resent:
            self._resent += len(resent)
            warn(
                "mqtt.resent",
                events=len(resent),
                first_seq=resent[0],
                last_seq=resent[-1],
                reason="no acknowledgement from the centre"
                if self.cfg.delivery == "centre"
                else "no PUBACK from the broker",
            )
        return max(0.0, next_due - now)

    def _resend_interval(self, attempts: int) -> float:
        return min(self.cfg.ack_timeout_s * 2.0 ** max(0, attempts - 1), MAX_RESEND_INTERVAL_S)

    def _publish_event(self, item: OutboxItem) -> bool:
        payload = encode(event_message(self.ctx.site_id, item))
        props = mqtt_properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        info = self._client.publish(self.topics.event, payload, qos=1, properties=props)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sent += 1
            if self.cfg.delivery == "broker":
                # Mapped here, on this thread, before its PUBACK is taken (also this thread).
                self._mids[info.mid] = item.seq
            return True
        # Not connected: paho keeps QoS 1 messages and sends them on reconnect; we re-send
        # from the outbox then as well.
        self._last_error = f"publish event {item.seq}: {mqtt.error_string(info.rc)}"
        return False

    def _publish_status(self, now: float) -> None:
        wanted = self._status_wanted.is_set()
        if not wanted and now < self._next_status_check:
            return
        self._next_status_check = now + STATUS_CHECK_S
        try:
            status = self.ctx.status()
            document = status_message(self.ctx.site_id, status, time.time())
        except Exception as e:  # controller not started yet, or a broken status
            document = {**offline_message(self.ctx.site_id), "state": "online"}
            warn("mqtt.status_unavailable", error=repr(e)[:200])
        fp = status_fingerprint(document)
        if (
            wanted
            or fp != self._last_status_fp
            or now - self._last_status_at >= self.cfg.status_interval_s
        ):
            self._status_wanted.clear()
            info = self._client.publish(self.topics.status, encode(document), qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._last_status_fp = fp
                self._last_status_at = now

    def _heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.cfg.heartbeat_s
        self._heartbeats += 1
        document = {
            "site_id": self.ctx.site_id,
            "utc": iso_utc(time.time()),
            "seq": self._heartbeats,
            "uptime_s": round(now - self._started_at, 1),
            "pending": self.outbox.pending(self.channel),
            "delivery": self.cfg.delivery,
        }
        self._client.publish(self.topics.heartbeat, encode(document), qos=0)

    def _publish_discovery(self) -> None:
        if not self.cfg.homeassistant:
            return
        try:
            status = self.ctx.status()
        except Exception as e:
            warn("mqtt.discovery_skipped", error=repr(e)[:200])
            return
        configs = discovery_configs(
            self.cfg.homeassistant_prefix,
            self.topics,
            self.ctx.site_id,
            self.ctx.site_name,
            status,
            version=__version__,
            language=self.cfg.homeassistant_language,
        )
        for topic, config in configs.items():
            self._client.publish(topic, json.dumps(config, ensure_ascii=False), qos=1, retain=True)
        log("mqtt.discovery_published", entities=len(configs))
