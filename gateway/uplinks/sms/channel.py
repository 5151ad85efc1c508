"""The SMS fallback: texts an alarm to the configured numbers when no centre has it.

The channel is one more outbox channel (``sms``), so it sees every event in the outbox's order
(alarm-class first) and nothing is lost across restarts. For each event:

* a kind not in ``cfg.kinds`` (default ``alarm.raised``, ``valve.failed``): acknowledged at
  once, nothing sent;
* an alarm that every watched channel (``cfg.watch``, default every other outbox channel) has
  acknowledged: acknowledged, nothing sent (a centre has it);
* an alarm still unacknowledged by a watched channel ``unacked_after_s`` (60 s) after it
  happened, or at once when every IP link is down (``ip_links``), or at once when there is no
  watched channel at all: texted to every number, then acknowledged.

Sending is bounded: ``attempts`` tries ``retry_delay_s`` apart (each try re-opens and checks the
modem), only to the numbers that have not got it yet. Success is recorded as ``sms.sent``;
giving up as ``sms.failed`` with the modem's error (no SIM, no network, no prompt ...), and the
event is then acknowledged: the alarm itself stays in the event log and on the other channels.

Nothing comes down this channel: received SMS are never read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.core.model import Event
from gateway.log import error, log, warn
from gateway.uplinks.context import UplinkContext
from gateway.uplinks.outbox import Outbox, OutboxItem
from gateway.uplinks.sms.config import SmsConfig
from gateway.uplinks.sms.modem import Modem, ModemError, ModemStatus

CHANNEL = "sms"
PEEK = 200
LEVELS = {"low": "低限", "high": "高限"}


@dataclass(frozen=True, slots=True)
class SmsState:
    """What ``gasguard status`` and doctor show for the SMS fallback."""

    channel: str
    port: str
    modem_ok: bool
    registration: str | None
    signal_dbm: int | None
    last_error: str | None
    pending: int
    texted: int
    failed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local(utc: float, offset_h: float) -> str:
    return datetime.fromtimestamp(utc, timezone(timedelta(hours=offset_h))).strftime("%m-%d %H:%M")


def sms_text(item: OutboxItem, ctx: UplinkContext, offset_h: float) -> str:
    """The message for one event, in Chinese and short (one SMS holds 70 characters): what,
    where, when, and the event id (``#<site>-<seq>``) to trace it in the event log."""
    when = _local(item.utc, offset_h)
    d = item.details
    if item.kind == "alarm.raised":
        level = LEVELS.get(str(d.get("level")), "")
        lel = d.get("lel")
        conc = f"{lel:.1f}%LEL" if isinstance(lel, int | float) else ""
        if conc and d.get("over_range") is True:
            conc = f"≥{lel:.0f}%LEL超量程"  # at or beyond the detector's full scale
        head = f"【燃气报警】{ctx.site_name} {item.source}{level}报警{conc}"
    elif item.kind == "valve.failed":
        head = f"【切断阀故障】{ctx.site_name} {item.source}：{d.get('text', '')}"
    else:
        head = f"【燃气安全】{ctx.site_name} {item.kind} {item.source}"
    return f"{head} {when} {ctx.site_address} #{item.event_id}"


class SmsChannel:
    """Drains the outbox's ``sms`` queue on its own thread (see the module docstring).

    ``ip_links`` are callables that say whether each IP channel is connected now (e.g.
    ``lambda: gb.link_up``); with none given, only the timeout applies. ``wall`` gives the
    time the alarm's age is measured against (its ``utc``); ``clock`` measures how long this
    channel has seen it, so a wrong wall clock can delay a text by at most ``unacked_after_s``.
    """

    def __init__(
        self,
        cfg: SmsConfig,
        outbox: Outbox,
        ctx: UplinkContext,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall: Callable[[], float] = time.time,
        ip_links: Sequence[Callable[[], bool]] = (),
        channel: str = CHANNEL,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.ctx = ctx
        self.channel = channel
        self.ip_links = tuple(ip_links)
        self._clock = clock
        self._wall = wall
        self.modem = Modem(
            cfg.port,
            cfg.baud,
            command_timeout_s=cfg.command_timeout_s,
            prompt_timeout_s=cfg.prompt_timeout_s,
            send_timeout_s=cfg.send_timeout_s,
            clock=clock,
        )
        self._watch = tuple(
            c for c in (cfg.watch or outbox.channels) if c in outbox.channels and c != channel
        )
        self._first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: ModemStatus | None = None
        self._last_check: float | None = None
        self._last_error: str | None = None
        self._pending = 0
        self._texted = 0
        self._failed = 0
        outbox.watch(self.wake)

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("sms channel already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"uplink-{self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (an SMS being sent may hold it up to ``send_timeout_s``)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._thread = None
        if thread is None or not thread.is_alive():
            self.modem.close()

    def wake(self) -> None:
        """Look at the outbox now (the outbox calls this after ``add``; only sets a flag)."""
        self._wake.set()

    @property
    def state(self) -> SmsState:
        status = self._status
        return SmsState(
            channel=self.channel,
            port=self.cfg.port,
            modem_ok=status is not None and self._last_error is None,
            registration=status.registration if status else None,
            signal_dbm=status.dbm if status else None,
            last_error=self._last_error,
            pending=self._pending,
            texted=self._texted,
            failed=self._failed,
        )

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        log("sms.started", port=self.cfg.port, numbers=len(self.cfg.numbers), watch=self._watch)
        self._check_modem()
        while not self._stop.is_set():
            try:
                self._pass()
            except Exception as e:  # never end the fallback on a bug or a disk error
                error("sms.channel_error", error=repr(e))
            if self._last_check is None or (
                self._clock() - self._last_check >= self.cfg.check_every_s
            ):
                self._check_modem()
            self._wake.wait(self.cfg.poll_s)
            self._wake.clear()
        self.modem.close()
        log("sms.stopped", port=self.cfg.port)

    def _check_modem(self) -> bool:
        """Open and check the modem; keeps the state for status/doctor. False on failure."""
        self._last_check = self._clock()
        try:
            self.modem.open()
            self._status = self.modem.check()
        except ModemError as e:
            self.modem.close()
            if str(e) != self._last_error:
                warn("sms.modem_problem", port=self.cfg.port, error=str(e))
            self._last_error = str(e)
            return False
        if self._last_error is not None:
            log("sms.modem_ok", port=self.cfg.port, registration=self._status.registration)
        self._last_error = None
        return True

    def _ip_all_down(self) -> bool:
        if not self.ip_links:
            return False
        for link in self.ip_links:
            try:
                if link():
                    return False
            except Exception as e:  # a broken probe counts as "up": only the timeout applies
                error("sms.link_probe_failed", probe=link, error=repr(e))
                return False
        return True

    def _pass(self) -> None:
        items = self.outbox.peek(self.channel, PEEK)
        self._pending = len(items)
        live = {item.seq for item in items}
        for seq in [s for s in self._first_seen if s not in live]:
            del self._first_seen[seq]
        for item in items:
            if self._stop.is_set():
                return
            if item.kind not in self.cfg.kinds:
                self._ack(item)
                continue
            waiting = [c for c in self.outbox.unacked_channels(item.seq) if c in self._watch]
            if self._watch and not waiting:
                self._ack(item)  # a centre has it: no text needed
                continue
            if not self._due(item):
                continue
            reason = (
                "no IP channel configured"
                if not self._watch
                else "every IP channel down"
                if self._ip_all_down()
                else f"not acknowledged within {self.cfg.unacked_after_s:g} s by "
                + ", ".join(waiting)
            )
            if self._text(item, reason):
                self._ack(item)

    def _due(self, item: OutboxItem) -> bool:
        if not self._watch or self._ip_all_down():
            return True
        first = self._first_seen.setdefault(item.seq, self._clock())
        after = self.cfg.unacked_after_s
        return self._wall() - item.utc >= after or self._clock() - first >= after

    def _ack(self, item: OutboxItem) -> None:
        self.outbox.ack(self.channel, item.seq)
        self._first_seen.pop(item.seq, None)
        self._pending = max(0, self._pending - 1)

    def _text(self, item: OutboxItem, reason: str) -> bool:
        """Text ``item`` to every number, bounded; True when done (sent, or given up after
        every attempt), False when stopped half-way (it stays queued for the next start)."""
        text = sms_text(item, self.ctx, self.cfg.utc_offset_h)
        todo = list(self.cfg.numbers)
        refs: dict[str, list[int]] = {}
        last_error = ""
        for attempt in range(1, self.cfg.attempts + 1):
            if self._stop.is_set() or (attempt > 1 and self._stop.wait(self.cfg.retry_delay_s)):
                if refs:
                    break  # record what did go out
                return False
            if not self._check_modem():
                last_error = self._last_error or "modem check failed"
                continue
            for number in list(todo):
                try:
                    refs[number] = self.modem.send_sms(number, text)
                    todo.remove(number)
                except ModemError as e:
                    last_error = str(e)
                    self._last_error = last_error
                    warn("sms.send_failed", number=number, attempt=attempt, error=last_error)
                    self.modem.close()  # re-open and re-check on the next attempt
                    break
            if not todo:
                break
        details: dict[str, Any] = {
            "event_id": item.event_id,
            "seq": item.seq,
            "kind": item.kind,
            "alarm_source": item.source,
            "reason": reason,
        }
        if refs:
            self._texted += 1
            self._record("sms.sent", {**details, "numbers": list(refs), "text": text})
            log("sms.sent", event_id=item.event_id, numbers=len(refs), reason=reason)
        if todo:
            self._failed += 1
            self._record("sms.failed", {**details, "numbers": todo, "error": last_error})
            error("sms.gave_up", event_id=item.event_id, numbers=len(todo), error=last_error)
        return True

    def _record(self, kind: str, details: dict[str, Any]) -> None:
        try:
            self.ctx.record(Event(kind, self.channel, self._clock(), details))
        except Exception as e:  # the log line above remains
            error("sms.record_failed", kind=kind, error=repr(e))
