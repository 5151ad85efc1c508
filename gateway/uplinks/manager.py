"""The uplinks of one site: the durable outbox and the channels that drain it.

The uplinks process (``service``) owns one ``Uplinks``. ``catch_up(events_path)`` takes in what
the event log has and the outbox lacks; ``start(ctx)`` starts each enabled channel on its own
thread; ``stop()`` ends them and ``close()`` closes the outbox. An uplink that cannot start is
logged and left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.core.model import Event
from gateway.log import error, warn
from gateway.paths import outbox_db
from gateway.store.events import EventStore, EventStoreError
from gateway.uplinks.config import UplinkConfig
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.delivery import DeliveryWatch
from gateway.uplinks.gb26875.channel import Gb26875Channel
from gateway.uplinks.mqtt.channel import MqttChannel
from gateway.uplinks.outbox import Outbox, OutboxError
from gateway.uplinks.sms.channel import SmsChannel


class Uplinks:
    """The outbox and the enabled channels of one site (none when nothing is configured)."""

    def __init__(self, cfg: UplinkConfig, data_dir: Path, site_id: str) -> None:
        self.cfg = cfg
        self.outbox: Outbox | None = None
        self.channels: list[Any] = []
        self._ctx: UplinkContext | None = None
        self._filling: str | None = None  # the outbox warning last recorded
        self.delivery: DeliveryWatch | None = None
        names = cfg.channels()
        if not names:
            return
        try:
            self.outbox = Outbox(outbox_db(data_dir), site_id, names)
        except (OutboxError, ValueError) as e:
            error("uplink.outbox_failed", error=e)

    def catch_up(self, events_path: Path) -> None:
        """Take in what the event log has and the outbox lacks (once, at start)."""
        if self.outbox is None:
            return
        try:
            with EventStore.open_readonly(events_path) as reader:
                self.outbox.catch_up(reader)
        except (EventStoreError, OutboxError) as e:
            error("uplink.catch_up_failed", error=e)

    def start(self, ctx: UplinkContext, clock: Callable[[], float] = time.monotonic) -> None:
        outbox = self.outbox
        if outbox is None:
            return
        self._ctx = ctx
        self.delivery = DeliveryWatch(outbox, ctx.record)
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

    def check_outbox(self) -> dict[str, Any] | None:
        """The outbox's fill for the status; records ``uplink.outbox_filling`` when it starts
        to fill (and ``uplink.outbox_ok`` when it is fine again), so that it reaches the event
        log, the centres and the status as a fault before anything is dropped."""
        if self.outbox is None:
            return None
        fill = self.outbox.fill()
        filling = fill.warning is not None
        if filling != (self._filling is not None):
            kind = "uplink.outbox_filling" if filling else "uplink.outbox_ok"
            details: dict[str, Any] = {"rows": fill.rows, "max_rows": fill.max_rows}
            if fill.warning is not None:
                details["text"] = fill.warning
            warn(kind, **details)
            if self._ctx is not None:
                try:
                    self._ctx.record(Event(kind, "outbox", time.monotonic(), details))
                except Exception as e:
                    error("uplink.record_failed", kind=kind, error=e)
        self._filling = fill.warning
        return fill.as_dict()

    def check_delivery(self, channels: dict[str, Any]) -> dict[str, Any] | None:
        """The delivery-time and availability summary (``gateway.uplinks.delivery``), with
        each channel's link state as ``channels`` (``state()``) says now."""
        if self.delivery is None:
            return None
        links = {name: _link_up(state) for name, state in channels.items()}
        try:
            return self.delivery.tick(links)
        except (OutboxError, ValueError) as e:
            error("uplink.delivery_failed", error=e)
            return None

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
        if self.delivery is not None:
            try:
                self.delivery.flush()
            except (OutboxError, ValueError) as e:
                error("uplink.delivery_failed", error=e)
            self.delivery = None
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


def _link_up(state: Any) -> bool:
    """Whether a channel's path is up, from its state: connected (MQTT, GB/T 26875.3), or the
    modem answering (SMS)."""
    if not isinstance(state, dict):
        return False
    if "connected" in state:
        return state.get("connected") is True
    return state.get("modem_ok") is True
