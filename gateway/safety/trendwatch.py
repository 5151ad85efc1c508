"""The trend thread of the safety process: it samples each detector's current reading from the
published snapshot (never from the safety thread, never a stale value), and writes each
finished hour to the detector's trend file (``gateway.store.trendfile``).

It only reads the snapshot reference: nothing it does, not even a broken SD card, can delay or
stop the safety thread. A write that fails is logged and the hour is lost; sampling goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.config import Config
from gateway.log import error
from gateway.safety.loop import Snapshot
from gateway.store.trendfile import TrendFileError, read_hours, trend_path, write_hour
from gateway.trend import Hour, HourBuckets, TrendWarning, judge

SAMPLE_S = 1.0


class TrendWatch:
    """Samples every ``sample_s``; ``warnings(config)`` judges the stored hours."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot | None],
        data_dir: Path,
        *,
        wall: Callable[[], float] = time.time,
        sample_s: float = SAMPLE_S,
    ) -> None:
        self._snapshot = snapshot
        self.data_dir = Path(data_dir)
        self._wall = wall
        self._sample_s = sample_s
        self._buckets = HourBuckets()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.write_errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trend", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; the hour in progress is kept if it has samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for hour in self._buckets.close(2**62).items():
            self._write(*hour)

    def _run(self) -> None:
        while not self._stop.wait(self._sample_s):
            try:
                self.sample()
            except Exception as e:  # never stop sampling for one bad pass
                error("trend.sample_failed", error=repr(e))

    def sample(self) -> None:
        """One pass: add each current reading, write the hours that ended."""
        snap = self._snapshot()
        if snap is None:
            return
        hour = int(snap.wall // 3600)
        for d in snap.view.detectors:
            # A silent detector has no current value (lel None); an inhibited one is being
            # calibrated with test gas: neither belongs in its trend.
            if d.lel is None or d.inhibited_until is not None:
                continue
            done = self._buckets.add(d.name, hour, d.lel)
            if done is not None:
                self._write(d.name, done)
        for name, done in self._buckets.close(hour).items():
            self._write(name, done)

    def _write(self, detector: str, hour: Hour) -> None:
        try:
            write_hour(trend_path(self.data_dir, detector), hour)
        except (OSError, TrendFileError) as e:
            self.write_errors += 1
            error("trend.write_failed", detector=detector, error=repr(e))

    def hours(self, detector: str) -> list[Hour]:
        return read_hours(trend_path(self.data_dir, detector))

    def warnings(self, config: Config) -> list[TrendWarning]:
        """Each detector's trend warning now, from its stored hours."""
        now_hour = int(self._wall() // 3600)
        out = []
        for det in config.detectors:
            try:
                hours = self.hours(det.name)
            except TrendFileError as e:
                error("trend.read_failed", detector=det.name, error=str(e))
                continue
            warning = judge(det.name, hours, det.low_lel, now_hour)
            if warning is not None:
                out.append(warning)
        return out
