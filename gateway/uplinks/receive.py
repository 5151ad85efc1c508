"""``gasguard receive``: the reference receiving centre, for commissioning and tests.

Subscribes to one site's topics on a broker, prints every event as it arrives (one line, with
the Chinese text), acknowledges each on the site's ack topic (QoS 1) and de-duplicates by
event id, so a re-sent event is acknowledged again but shown once. Its MQTT session is
persistent (``clean_start`` off, fixed client id): events published while it is away are kept by
the broker and arrive when it comes back.

    gasguard receive --broker 127.0.0.1:1883 --site hz-001 --once 5 --timeout 60

Output lines::

    2025-01-31T08:15:02.125Z ALARM #12 alarm.raised wok-1 燃气泄漏高限报警：wok-1（62.0 %LEL）
    2025-01-31T08:15:02.300Z status online alarm=yes fault=no

Exit status: 0 once ``--once N`` distinct events are acknowledged (or on Ctrl-C), 1 when
``--timeout`` passes first or the broker cannot be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.uplinks.mqtt.channel import no_delay
from gateway.uplinks.mqtt.config import TOPIC_LEVEL_RE, TOPIC_PREFIX_RE
from gateway.uplinks.mqtt.schema import (
    MessageError,
    Topics,
    ack_message,
    encode,
    mqtt_properties,
    parse_event,
)

# Kept per run; a commissioning session sees far fewer events than this.
MAX_SEEN = 1_000_000
SESSION_EXPIRY_S = 7 * 86400


class ReceivingCentre:
    """Subscribes to ``<prefix>/<site>/event`` and ``/status``; prints, acknowledges and
    de-duplicates events.

    ``events`` holds the distinct events (parsed JSON) in arrival order; ``duplicates`` counts
    re-sent copies; ``rejected`` counts messages that failed the schema (logged, not acked).
    ``acking`` can be turned off to play a centre that has the events but does not confirm
    them (tests of re-sending). ``on_event(doc)`` is called for every distinct event.
    """

    def __init__(
        self,
        host: str,
        port: int,
        site_id: str,
        *,
        prefix: str = "gasguard",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        out: TextIO | None = None,
        acking: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.site_id = site_id
        self.topics = Topics(prefix, site_id)
        self.out = out
        self.acking = acking
        self.on_event = on_event
        self.events: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.duplicates = 0
        self.rejected = 0
        self.status: dict[str, Any] | None = None
        self.statuses: list[dict[str, Any]] = []
        self.connected = threading.Event()  # set once subscribed (ready to receive)
        self.last_error: str | None = None
        self._cond = threading.Condition()
        self._last_status_line = ""
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"gasguard-centre-{site_id}",
            protocol=mqtt.MQTTv5,
        )
        if tls:
            context = ssl.create_default_context(
                cafile=str(ca_file) if ca_file is not None else None
            )
            if cert_file is not None and key_file is not None:
                context.load_cert_chain(str(cert_file), str(key_file))
            self._client.tls_set_context(context)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(1, 5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._pending_acks: list[mqtt.MQTTMessageInfo] = []

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        props = mqtt_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self.host, self.port, keepalive=30, clean_start=False, properties=props
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for_events(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` distinct events have arrived (and been acked if acking)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.events) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_until(self, predicate: Callable[[ReceivingCentre], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked on every message)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def flush_acks(self, timeout: float = 5.0) -> bool:
        """Wait until the broker has every ack published so far (PUBACK)."""
        with self._cond:
            infos = list(self._pending_acks)
            self._pending_acks.clear()
        deadline = time.monotonic() + timeout
        for info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                return False
            if not info.is_published():
                return False
        return True

    def ack(self, seq: int) -> None:
        """Publish the acknowledgement of event ``seq`` (QoS 1)."""
        info = self._client.publish(self.topics.ack, encode(ack_message(self.site_id, seq)), qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            with self._cond:
                self._pending_acks.append(info)
                if len(self._pending_acks) > 10_000:
                    self._pending_acks = [i for i in self._pending_acks if not i.is_published()]

    # -- paho callbacks ---------------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            self._say(f"# {self.last_error}", err=True)
            return
        no_delay(client)
        client.subscribe([(self.topics.event, 1), (self.topics.status, 1)])
        self.last_error = None

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            # The broker's ACL does not let this account read the site's topics.
            self.last_error = f"subscription refused: {', '.join(refused)}"
            self._say(f"# {self.last_error}", err=True)
            return
        self.connected.set()  # ready: subscribed, events will arrive

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = f"cannot connect to {self.host}:{self.port}"

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        self.last_error = f"disconnected: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self.topics.event:
                self._event(bytes(message.payload))
            elif message.topic == self.topics.status:
                self._status(bytes(message.payload))
        except Exception as e:  # a bad message must never stop the centre
            self.rejected += 1
            self._say(f"# ignored a message on {message.topic}: {e}", err=True)
        with self._cond:
            self._cond.notify_all()

    def _event(self, payload: bytes) -> None:
        try:
            doc = parse_event(payload, self.site_id)
        except MessageError as e:
            self.rejected += 1
            self._say(f"# ignored an event: {e}", err=True)
            return
        event_id = str(doc["event_id"])
        new = event_id not in self.seen
        if new:
            if len(self.seen) >= MAX_SEEN:
                self.seen.clear()  # bounded memory; a very old re-send would show twice
            self.seen.add(event_id)
            label = "ALARM" if doc["class"] == "alarm" else "event"
            text = doc.get("text_zh") or doc.get("text") or ""
            self._say(f"{doc['utc']} {label} #{doc['seq']} {doc['kind']} {doc['source']} {text}")
        else:
            self.duplicates += 1
        # Ack duplicates too: the gateway re-sends because our earlier ack did not reach it.
        if self.acking:
            self.ack(int(doc["seq"]))
        if new:
            with self._cond:
                self.events.append(doc)
            if self.on_event is not None:
                self.on_event(doc)

    def _status(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise MessageError(f"status: not UTF-8 JSON ({e})") from None
        if not isinstance(doc, dict):
            raise MessageError("status: must be a JSON object")
        with self._cond:
            self.status = doc
            self.statuses.append(doc)
        state = doc.get("state", "?")
        line = f"status {state}"
        if state == "online":
            line += f" alarm={'yes' if doc.get('alarm') else 'no'}"
            line += f" fault={'yes' if doc.get('fault') else 'no'}"
        if line != self._last_status_line:
            self._last_status_line = line
            self._say(f"{doc.get('utc', '')} {line}".strip())

    def _say(self, line: str, err: bool = False) -> None:
        stream = sys.stderr if err else self.out
        if stream is None:
            return
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe must not stop the acknowledgements


# -- the CLI --------------------------------------------------------------------------------------


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) -> (host, port). Raises ValueError."""
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$", text) or re.match(
        r"^([A-Za-z0-9.-]+):(\d{1,5})$", text
    )
    if m is None:
        raise ValueError(f"--broker {text!r}: must be HOST:PORT, e.g. 127.0.0.1:1883")
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"--broker {text!r}: port {port} must be from 1 to 65535")
    return m.group(1), port


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``gasguard receive``."""
    s = sub.add_parser(
        "receive",
        help="reference receiving centre: show a site's MQTT alarms and acknowledge them",
    )
    s.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker")
    s.add_argument("--site", required=True, help="the site id (as in the site's [site] id)")
    s.add_argument("--once", type=int, metavar="N", help="exit after N distinct events")
    s.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 1)")
    s.add_argument("--prefix", default="gasguard", help="topic prefix (default gasguard)")
    s.add_argument("--client-id", help="MQTT client id (default gasguard-centre-SITE)")
    s.add_argument("--username")
    s.add_argument("--password-file", type=Path, help="file holding the broker password")
    s.add_argument("--tls", action="store_true", help="TLS, the server certificate checked")
    s.add_argument("--ca-file", type=Path, help="CA certificate(s) for --tls")
    s.add_argument("--cert-file", type=Path, help="client certificate for --tls")
    s.add_argument("--key-file", type=Path, help="client key for --tls")
    s.set_defaults(func=cmd_receive)


def _args_problem(args: argparse.Namespace) -> str | None:
    if not TOPIC_LEVEL_RE.match(args.site):
        return f"--site {args.site!r}: letters, digits, '_', '.', '-' (a site id)"
    if not TOPIC_PREFIX_RE.match(args.prefix):
        return f"--prefix {args.prefix!r}: topic levels separated by '/', no wildcards"
    if args.once is not None and not 1 <= args.once <= 10_000_000:
        return f"--once {args.once}: must be from 1 to 10000000"
    if args.timeout is not None and not 0 < args.timeout <= 30 * 86400:
        return f"--timeout {args.timeout}: must be more than 0 and at most 30 days"
    if (args.cert_file is None) != (args.key_file is None):
        return "--cert-file and --key-file go together"
    if (args.ca_file or args.cert_file) and not args.tls:
        return "--ca-file/--cert-file need --tls"
    for name in ("password_file", "ca_file", "cert_file", "key_file"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            return f"--{name.replace('_', '-')} {path}: no such file"
    return None


def cmd_receive(args: argparse.Namespace) -> int:
    """Run the receiving centre until ``--once`` events, ``--timeout`` or Ctrl-C."""
    try:
        host, port = parse_broker(args.broker)
    except ValueError as e:
        print(f"gasguard receive: {e}", file=sys.stderr)
        return 2
    problem = _args_problem(args)
    if problem:
        print(f"gasguard receive: {problem}", file=sys.stderr)
        return 2
    password = None
    if args.password_file is not None:
        password = args.password_file.read_text(encoding="utf-8").strip()
    done = threading.Event()
    centre = ReceivingCentre(
        host,
        port,
        args.site,
        prefix=args.prefix,
        client_id=args.client_id,
        username=args.username,
        password=password,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        out=sys.stdout,
    )

    def _signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, _signal)
    signal.signal(signal.SIGTERM, _signal)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    print(f"# receiving site {args.site} from {host}:{port}", file=sys.stderr)
    centre.start()
    status = 0
    try:
        while not done.is_set():
            if args.once is not None and centre.wait_for_events(args.once, 0.2):
                break
            if args.once is None:
                done.wait(0.2)
            if deadline is not None and time.monotonic() > deadline:
                got = len(centre.events)
                why = f", last error: {centre.last_error}" if centre.last_error else ""
                print(
                    f"gasguard receive: timeout after {args.timeout:g} s with {got} event(s){why}",
                    file=sys.stderr,
                )
                status = 1
                break
        if not centre.flush_acks(5.0):
            print("gasguard receive: some acknowledgements were not confirmed", file=sys.stderr)
            status = 1
    finally:
        centre.stop()
    print(
        f"# {len(centre.events)} event(s), {centre.duplicates} duplicate(s), "
        f"{centre.rejected} rejected",
        file=sys.stderr,
    )
    return status
