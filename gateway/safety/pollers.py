"""The bus pollers of the safety process: the one place where a ``DetectorBus`` is built.

One poller per RS-485 port that has detectors. ``apply(config)`` starts them (and, on a reload,
restarts only the buses whose line, detectors or poll period changed); ``paused(bus)`` stops one
for a scan and restarts it from the config then in force. Both take the same lock, so a reload
and a scan never race over a port.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from gateway.busload import bus_loads
from gateway.config import BusConfig, Config, DetectorConfig
from gateway.core.model import Input
from gateway.drivers.modbus_bus import DetectorBus
from gateway.log import error, warn


class Pollers:
    """The running ``DetectorBus`` threads; readings go to ``deliver`` (the safety inbox)."""

    def __init__(
        self,
        deliver: Callable[[Input], None],
        clock: Callable[[], float] = time.monotonic,
        on_thread_start: Callable[[], object] | None = None,
    ) -> None:
        self._deliver = deliver
        self._clock = clock
        self._on_thread_start = on_thread_start
        self._lock = threading.Lock()
        self._config: Config | None = None
        self.buses: list[DetectorBus] = []

    def _make(self, config: Config, bus: BusConfig) -> DetectorBus | None:
        detectors = _on(config, bus.name)
        if not detectors:
            return None
        poller = DetectorBus(
            bus,
            detectors,
            config.timings.poll_period_s,
            self._deliver,
            clock=self._clock,
            confirm_count=config.timings.bus_confirm_count,
        )
        poller.on_thread_start = self._on_thread_start
        poller.start()
        return poller

    def apply(self, config: Config) -> None:
        """Run the pollers ``config`` describes; keep the ones that did not change."""
        with self._lock:
            old = self._config
            current = {p.bus.name: p for p in self.buses}
            kept: list[DetectorBus] = []
            for bus in config.buses:
                poller = current.pop(bus.name, None)
                same = (
                    poller is not None
                    and old is not None
                    and poller.bus == bus
                    and _on(old, bus.name) == _on(config, bus.name)
                    and old.timings.poll_period_s == config.timings.poll_period_s
                    and old.timings.bus_confirm_count == config.timings.bus_confirm_count
                )
                if same and poller is not None:
                    kept.append(poller)
                    continue
                if poller is not None:
                    poller.stop()
                new = self._make(config, bus)
                if new is not None:
                    kept.append(new)
            for gone in current.values():
                gone.stop()
            self.buses = kept
            self._config = config
        for load in bus_loads(config):
            for text in load.warnings():
                warn("bus.load", bus=load.bus, load=round(load.load, 2), warning=text)

    @contextlib.contextmanager
    def paused(self, bus_name: str) -> Iterator[bool]:
        """Stop ``bus_name``'s poller (yields whether one ran), then start a fresh one from the
        config in force, whatever happened meanwhile."""
        with self._lock:
            poller = next((p for p in self.buses if p.bus.name == bus_name), None)
            if poller is not None:
                poller.stop(timeout=5.0)
            self.buses = [p for p in self.buses if p.bus.name != bus_name]
            try:
                yield poller is not None
            finally:
                config = self._config
                bus = (
                    None
                    if config is None
                    else next((b for b in config.buses if b.name == bus_name), None)
                )
                if config is not None and bus is not None:
                    try:
                        new = self._make(config, bus)
                    except Exception as e:
                        # Its detectors stay silent: the core raises comm faults and keeps
                        # their valves shut.
                        error("pollers.restart_failed", bus=bus_name, error=repr(e))
                        new = None
                    if new is not None:
                        self.buses = [*self.buses, new]

    def running(self, bus_name: str) -> bool:
        return any(p.bus.name == bus_name for p in self.buses)

    def stop(self) -> None:
        with self._lock:
            for poller in self.buses:
                poller.stop()
            self.buses = []


def _on(config: Config, bus_name: str) -> list[DetectorConfig]:
    return [d for d in config.detectors if d.bus == bus_name]
