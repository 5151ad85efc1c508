"""The uplinks of one site: the durable outbox and the channels that drain it.

The controller owns one ``Uplinks``. ``attach(recorder)`` subscribes the outbox to the recorder
(events reach it only after they are durable in the event log) and catches up anything the
event log has that the outbox missed; ``start(ctx)`` starts each enabled channel on its own
thread; ``stop()`` ends them and ``close()`` closes the outbox once the recorder is done.
Nothing here can slow the safety loop: the safety thread only ever puts items on the
recorder's queue. An uplink that cannot start is logged and left out: it never stops the
controller from protecting the kitchen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.log import error
from gateway.store.events import EventStore, EventStoreError
from gateway.store.recorder import Recorder
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.gb26875.channel import Gb26875Channel
from gateway.uplinks.gb26875.config import Gb26875Config
from gateway.uplinks.mqtt.channel import MqttChannel
from gateway.uplinks.mqtt.config import MqttConfig
from gateway.uplinks.outbox import Outbox, OutboxError, outbox_path
from gateway.uplinks.sms.channel import SmsChannel
from gateway.uplinks.sms.config import SmsConfig


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """``[uplink.mqtt]``, ``[uplink.gb26875]`` and ``[uplink.sms]``; each is optional."""

    mqtt: MqttConfig | None = None
    gb26875: Gb26875Config | None = None
    sms: SmsConfig | None = None

    def channels(self) -> list[str]:
        """The names of the enabled channels, in the outbox's terms."""
        names = []
        if self.mqtt is not None and self.mqtt.enabled:
            names.append("mqtt")
        if self.gb26875 is not None and self.gb26875.enabled:
            names.append("gb26875")
        if self.sms is not None and self.sms.enabled:
            names.append("sms")
        return names


class Uplinks:
    """The outbox and the enabled channels of one site (none when nothing is configured)."""

    def __init__(self, cfg: UplinkConfig, data_dir: Path, site_id: str) -> None:
        self.cfg = cfg
        self.outbox: Outbox | None = None
        self.channels: list[Any] = []
        names = cfg.channels()
        if not names:
            return
        try:
            self.outbox = Outbox(outbox_path(data_dir), site_id, names)
        except (OutboxError, ValueError) as e:
            error("uplink.outbox_failed", error=e)

    def attach(self, recorder: Recorder, events_path: Path) -> None:
        """Before the recorder starts: take in what the event log has and the outbox lacks,
        then receive every newly stored event."""
        if self.outbox is None:
            return
        try:
            with EventStore.open_readonly(events_path) as reader:
                self.outbox.catch_up(reader)
        except EventStoreError as e:
            error("uplink.catch_up_failed", error=e)
        recorder.subscribe(self.outbox.add)

    def start(self, ctx: UplinkContext, clock: Callable[[], float] = time.monotonic) -> None:
        outbox = self.outbox
        if outbox is None:
            return
        mqtt_cfg, gb_cfg, sms_cfg = self.cfg.mqtt, self.cfg.gb26875, self.cfg.sms
        # The SMS fallback texts when every IP channel is down: it watches these.
        ip_links: list[Callable[[], bool]] = []
        if mqtt_cfg is not None and mqtt_cfg.enabled:
            mqtt = self._start("mqtt", lambda: MqttChannel(mqtt_cfg, outbox, ctx, clock))
            if mqtt is not None:
                ip_links.append(lambda: bool(mqtt.state.connected))
        if gb_cfg is not None and gb_cfg.enabled:
            gb = self._start("gb26875", lambda: Gb26875Channel(gb_cfg, outbox, ctx, clock))
            if gb is not None:
                ip_links.append(lambda: bool(gb.link_up))
        if sms_cfg is not None and sms_cfg.enabled:
            links = tuple(ip_links)
            self._start("sms", lambda: SmsChannel(sms_cfg, outbox, ctx, clock, ip_links=links))

    def _start(self, name: str, make: Callable[[], Any]) -> Any:
        try:
            channel = make()
            channel.start()
        except (ValueError, OSError) as e:  # a bad certificate, an unusable port
            error("uplink.start_failed", channel=name, error=e)
            return None
        self.channels.append(channel)
        return channel

    def stop(self) -> None:
        """Stop the channels (before the recorder stops, so their last events are stored)."""
        for channel in self.channels:
            try:
                channel.stop()
            except Exception as e:  # stop the others regardless
                error("uplink.stop_failed", channel=getattr(channel, "channel", "?"), error=e)
        self.channels.clear()

    def close(self) -> None:
        """Close the outbox (after the recorder has stopped calling it)."""
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None

    def state(self) -> dict[str, Any]:
        """Each channel's state for ``gasguard status``."""
        out: dict[str, Any] = {}
        for channel in self.channels:
            state = channel.state
            out[str(getattr(channel, "channel", type(channel).__name__))] = state.as_dict()
        return out
