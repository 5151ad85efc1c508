"""MQTT uplink: alarm -> centre acknowledgement latency, and replay rate after an outage.

Everything real, over loopback: a mosquitto broker started here (apt package ``mosquitto``),
the recorder writing the event log (fsync), the uplinks' follower (woken by inotify), the
outbox (fsync), the MQTT channel, and the
reference receiving centre (``gateway.uplinks.receive.ReceivingCentre``) acknowledging each
event on the ack topic.

* ``mqtt_alarm_ack_median`` / ``_p99``: an alarm put into the recorder's queue (what the safety
  thread does) -> the centre's acknowledgement back at the gateway and stored in the outbox
  (delivered end to end). One alarm at a time. Target p99 <= 50 ms.
* ``mqtt_alarm_status_median`` / ``_p99``: an alarm put into the recorder's queue, with the
  controller's status saying so from that moment -> the retained status that carries it
  received from the broker by a subscriber (what Home Assistant's entities read). Target p99
  <= 100 ms (issue 19: it was 1-2 s).
* ``mqtt_replay_rate``: 10 000 events waiting in the outbox (queued during an outage) -> all
  acknowledged by the centre, from the moment the channel starts. Target >= 1 000 events/s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import Figure, emit, median, note, percentile
from gateway.core.model import Event
from gateway.paths import outbox_db
from gateway.store.events import StoredEvent
from gateway.store.recorder import Recorder, RecorderItem
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.mqtt import MqttChannel, MqttConfig
from gateway.uplinks.outbox import Outbox
from gateway.uplinks.receive import ReceivingCentre
from gateway.uplinks.service import EventFollower

SITE = "bench-site"


class Broker:
    """A mosquitto on a free loopback port, in ``workdir``; ``stop()`` ends it, ``start()``
    starts it again on the same port. ``nofile`` raises its open-files limit (one descriptor
    per connected client)."""

    def __init__(self, workdir: Path, nofile: int | None = None) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(binary, os.X_OK):
            raise RuntimeError(
                "mosquitto not found: install it with `apt-get install -y mosquitto`"
            )
        self.binary = binary
        self.nofile = nofile
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "log_dest none"]
        lines.append("max_queued_messages 100000")
        lines.append("set_tcp_nodelay true")  # see docs/uplinks.md: brokers should
        if nofile is not None:
            lines.append("max_connections -1")
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.start()

    def _limits(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=self._limits if self.nofile is not None else None,
        )
        self.pid = self._proc.pid
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


def _config(port: int) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, tls=False, reconnect_max_s=1)


def _context(
    inbox: queue.SimpleQueue[RecorderItem], status: Any = lambda: {}
) -> UplinkContext:
    return UplinkContext(SITE, "bench", "", status, lambda event: inbox.put((time.time(), event)))


@contextlib.contextmanager
def _pipeline(
    workdir: Path, port: int, status: Any = lambda: {}
) -> Iterator[tuple[queue.SimpleQueue[RecorderItem], MqttChannel]]:
    """The gateway's path from the recorder's queue to the broker, as in the split: recorder
    (event log, fsync), the uplinks' follower (woken by inotify), outbox, MQTT channel; and the
    reference centre acknowledging. Yields the recorder's queue and the connected channel."""
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    outbox = Outbox(outbox_db(workdir), SITE, ["mqtt"])
    recorder = Recorder(workdir / "events.db", 10_000, inbox)
    follower = EventFollower(workdir / "events.db", outbox)
    recorder.start()
    follower.start()
    centre = ReceivingCentre("127.0.0.1", port, SITE)
    channel = MqttChannel(_config(port), outbox, _context(inbox, status))
    centre.start()
    channel.start()
    try:
        if not centre.connected.wait(10):
            raise RuntimeError("the receiving centre did not connect")
        # Warm-up: connection, first SQLite pages, status publication.
        deadline = time.monotonic() + 10
        while not channel.state.connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the channel did not connect: {channel.state.last_error}")
            time.sleep(0.01)
        yield inbox, channel
    finally:
        channel.stop()
        centre.stop()
        follower.stopping.set()
        follower.join(5)
        recorder.stop()
        outbox.close()


def _alarm(n: int) -> tuple[float, Event]:
    return time.time(), Event("alarm.raised", "wok-1", time.monotonic(), {"n": n})


def measure_status_latency(workdir: Path, port: int, alarms: int) -> list[float]:
    """Seconds from each alarm entering the recorder's queue (the controller's status saying
    so from then on) to a status carrying it received from the broker by a subscriber."""
    alarm = [""]  # the controller's current alarm text
    seen: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()

    def _status(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with_alarms = json.loads(message.payload).get("alarms") or [""]
        seen.put((str(with_alarms[0]), time.perf_counter()))

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = _status
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    try:
        with _pipeline(workdir, port, lambda: {"alarms": [alarm[0]]}) as (inbox, channel):
            watcher.subscribe(channel.topics.status, qos=1)
            samples = []
            for n in range(alarms + 5):
                text = f"wok-1: high alarm #{n}"
                t0 = time.perf_counter()
                alarm[0] = text
                inbox.put(_alarm(n))
                wait_until = time.monotonic() + 10
                while True:
                    got, t1 = seen.get(timeout=max(0.0, wait_until - time.monotonic()))
                    if got == text:
                        break
                if n >= 5:
                    samples.append(t1 - t0)
                time.sleep(0.02)
            return samples
    finally:
        watcher.loop_stop()
        watcher.disconnect()


def measure_latency(workdir: Path, port: int, alarms: int) -> list[float]:
    """Seconds from each alarm entering the recorder's queue to its ack stored at the gateway."""
    with _pipeline(workdir, port) as (inbox, channel):
        delivered: queue.SimpleQueue[tuple[int, float]] = queue.SimpleQueue()
        channel.on_delivered(lambda seq: delivered.put((seq, time.perf_counter())))
        samples = []
        for n in range(alarms + 5):
            t0 = time.perf_counter()
            inbox.put(_alarm(n))
            _seq, t1 = delivered.get(timeout=10)
            if n >= 5:
                samples.append(t1 - t0)
            time.sleep(0.005)
        return samples


def measure_replay(workdir: Path, port: int, events: int) -> float:
    """Seconds to deliver ``events`` queued events once the channel starts."""
    inbox: queue.SimpleQueue[RecorderItem] = queue.SimpleQueue()
    outbox = Outbox(outbox_db(workdir), SITE, ["mqtt"], max_rows=max(1000, events))
    now = time.time()
    outbox.add_many(
        StoredEvent(seq, now, "alarm.raised" if seq % 10 == 0 else "fault.raised", "wok-1", {})
        for seq in range(1, events + 1)
    )
    centre = ReceivingCentre("127.0.0.1", port, SITE)
    channel = MqttChannel(_config(port), outbox, _context(inbox))
    done = threading.Event()
    count = [0]

    def _delivered(seq: int) -> None:
        count[0] += 1
        if count[0] >= events:
            done.set()

    channel.on_delivered(_delivered)
    centre.start()
    try:
        if not centre.connected.wait(10):
            raise RuntimeError("the receiving centre did not connect")
        started = time.perf_counter()
        channel.start()
        if not done.wait(120):
            raise RuntimeError(f"replay incomplete: {outbox.pending('mqtt')} events still waiting")
        elapsed = time.perf_counter() - started
        if len(centre.seen) != events:
            raise RuntimeError(f"the centre has {len(centre.seen)} distinct events, not {events}")
        return elapsed
    finally:
        channel.stop()
        centre.stop()
        outbox.close()


def run(out: TextIO, *, alarms: int = 300, replay: int = 10_000) -> list[Figure]:
    """Measure and print the figures."""
    if alarms < 1 or replay < 1:
        raise ValueError(f"alarms {alarms!r} and replay {replay!r} must both be at least 1")
    figures: list[Figure] = []
    # Thousands of "event" warnings from the recorder would drown the figures.
    logger = logging.getLogger("gasguard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        _run(out, alarms, replay, figures)
    finally:
        logger.setLevel(level)
    return figures


def _run(out: TextIO, alarms: int, replay: int, figures: list[Figure]) -> None:
    with tempfile.TemporaryDirectory(prefix="gasguard-bench-mqtt-") as tmp:
        work = Path(tmp)
        broker = Broker(work)
        try:
            note(out, f"MQTT over loopback mosquitto; {alarms} alarms one at a time")
            (work / "latency").mkdir()
            samples = measure_latency(work / "latency", broker.port, alarms)
            figures.append(
                emit(
                    out,
                    Figure(
                        "mqtt_alarm_ack_median",
                        median(samples) * 1000,
                        "ms",
                        "alarm into the recorder queue -> centre's ack stored at gateway, median",
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "mqtt_alarm_ack_p99",
                        percentile(samples, 99) * 1000,
                        "ms",
                        "the same, 99th percentile [target <= 50 ms]",
                    ),
                )
            )
            (work / "status").mkdir()
            status = measure_status_latency(work / "status", broker.port, alarms)
            figures.append(
                emit(
                    out,
                    Figure(
                        "mqtt_alarm_status_median",
                        median(status) * 1000,
                        "ms",
                        "alarm into the recorder queue -> the status carrying it received from "
                        "the broker (what Home Assistant reads), median",
                    ),
                )
            )
            figures.append(
                emit(
                    out,
                    Figure(
                        "mqtt_alarm_status_p99",
                        percentile(status, 99) * 1000,
                        "ms",
                        "the same, 99th percentile [target <= 100 ms]",
                    ),
                )
            )
            (work / "replay").mkdir()
            elapsed = measure_replay(work / "replay", broker.port, replay)
            figures.append(
                emit(
                    out,
                    Figure(
                        "mqtt_replay_rate",
                        replay / elapsed,
                        "events/s",
                        f"{replay} queued events -> all acknowledged by the centre, per second "
                        "[target >= 1000 events/s]",
                        decimals=0,
                    ),
                )
            )
        finally:
            broker.stop()


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    run(sys.stdout, **({"alarms": 5, "replay": 200} if quick else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
