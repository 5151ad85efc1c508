"""A simulated shutoff-valve body on gpiozero mock pins, for the demo and the HIL sim rig.

It watches the valve's coil output pin and, after ``travel_s``, drives the position-contact
input pin (honouring ``feedback_closed_level``), as a real valve body would:

* held-open: coil energised -> the valve opens, de-energised -> the spring closes it. With
  ``hand_reopen=True`` energising only holds it: it opens when ``reopen_by_hand()`` is called
  while the coil is energised (as most real 常闭型 valves).
* trip-to-close: any pulse on the coil trips it closed; it reopens only when the test or demo
  calls ``reopen_by_hand()``.

Fault options: ``stuck_open`` (the contact never says closed), ``stuck_closed`` (it always
says closed). A small thread polls the pins every ``poll_s``; it records every coil edge from the
mock pin's state history, so a pulse shorter than the poll period is never missed. ``stop()``
ends it (bounded join).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from gpiozero.pins.mock import MockFactory

from gateway.config import ValveConfig

POLL_S = 0.005


@dataclass(frozen=True, slots=True)
class ValveMove:
    """One completed travel of the simulated valve: ``at`` is ``time.monotonic()``."""

    at: float
    closed: bool


class ValveMechanism:
    """The simulated body of one valve; see the module docstring.

    ``start_closed`` is the position at start; by default a held-open valve starts closed (its
    coil is off) and a trip-to-close valve starts open (it was opened by hand).
    """

    def __init__(
        self,
        factory: MockFactory,
        cfg: ValveConfig,
        travel_s: float,
        *,
        stuck_open: bool = False,
        stuck_closed: bool = False,
        hand_reopen: bool = False,
        start_closed: bool | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        if not isinstance(factory, MockFactory):
            raise ValueError(
                f"valve mechanism {cfg.name!r}: factory {factory!r} is not a MockFactory"
            )
        if not 0.0 <= travel_s <= 60.0:
            raise ValueError(
                f"valve mechanism {cfg.name!r}: travel_s {travel_s!r} is not within 0-60 s"
            )
        if not 0.0 < poll_s <= 0.1:
            raise ValueError(
                f"valve mechanism {cfg.name!r}: poll_s {poll_s!r} is not within (0, 0.1] s"
            )
        if stuck_open and stuck_closed:
            raise ValueError(
                f"valve mechanism {cfg.name!r}: stuck_open and stuck_closed are exclusive"
            )
        if cfg.kind not in ("held-open", "trip-to-close"):
            raise ValueError(f"valve mechanism {cfg.name!r}: kind {cfg.kind!r} is not simulated")
        self.config = cfg
        self.travel_s = travel_s
        self.stuck_open = stuck_open
        self.stuck_closed = stuck_closed
        self.hand_reopen = hand_reopen
        self._poll_s = poll_s
        self._coil_pin: Any = factory.pin(cfg.output_pin)
        self._feedback_pin: Any = (
            None if cfg.feedback_pin is None else factory.pin(cfg.feedback_pin)
        )
        if start_closed is None:
            start_closed = cfg.kind == "held-open"
        self._closed = start_closed
        self._target_closed = start_closed
        self._move_due: float | None = None
        self._seen_states: Any = None
        self._seen_count = 0
        self._moves: list[ValveMove] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what tests and the demo look at ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The real position of the simulated valve (not what a stuck contact reports)."""
        with self._lock:
            return self._closed

    @property
    def moves(self) -> list[ValveMove]:
        """Every completed travel so far, oldest first."""
        with self._lock:
            return list(self._moves)

    def reopen_by_hand(self) -> bool:
        """Someone opens the valve by hand at the valve. Returns whether it is open now: a
        held-open valve stays open only while its coil is energised."""
        with self._lock:
            if self.config.kind == "held-open" and not self._coil_pin.state:
                return False
            self._closed = False
            self._target_closed = False
            self._move_due = None
            self._moves.append(ValveMove(time.monotonic(), False))
            self._drive_feedback()
            return True

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> ValveMechanism:
        """Start watching the coil; returns self. Starting twice is an error."""
        if self._thread is not None:
            raise RuntimeError(f"valve mechanism {self.config.name!r} already started")
        with self._lock:
            self._step(time.monotonic())
        self._thread = threading.Thread(
            target=self._run, name=f"valve-mechanism-{self.config.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the watching thread and wait for it (at most ``timeout_s``). Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(
                    f"valve mechanism {self.config.name!r} did not stop within {timeout_s:g} s"
                )

    def __enter__(self) -> ValveMechanism:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the simulation --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                self._step(time.monotonic())

    def _step(self, now: float) -> None:
        energised_edge = self._new_energised_edge()
        if self.config.kind == "held-open":
            energised = bool(self._coil_pin.state)
            if not energised:
                want_closed = True
            elif self.hand_reopen:
                want_closed = self._target_closed  # the coil only holds it where it is
            else:
                want_closed = False
        else:
            want_closed = self._target_closed or energised_edge
        if want_closed != self._target_closed:
            self._target_closed = want_closed
            self._move_due = now + self.travel_s
        if self._move_due is not None and now >= self._move_due:
            self._move_due = None
            if self._closed != self._target_closed:
                self._closed = self._target_closed
                self._moves.append(ValveMove(now, self._closed))
        self._drive_feedback()

    def _new_energised_edge(self) -> bool:
        """Whether the coil was energised at any moment since the last look (from the mock
        pin's recorded history, so even a pulse between two polls counts)."""
        states = self._coil_pin.states
        if states is not self._seen_states:  # first look, or someone called clear_states()
            self._seen_states = states
            self._seen_count = 0
        new = states[self._seen_count :]
        self._seen_count += len(new)
        return any(bool(s.state) for s in new) or bool(self._coil_pin.state)

    def _drive_feedback(self) -> None:
        pin = self._feedback_pin
        if pin is None:
            return
        if self.stuck_closed:
            says_closed = True
        elif self.stuck_open:
            says_closed = False
        else:
            says_closed = self._closed
        high = says_closed == (self.config.feedback_closed_level == "high")
        if pin.function != "input":
            return  # someone drives it as an output: nothing a contact can do
        # Re-asserted every poll: a valve driver created after us sets the pull, which moves
        # the mock input to the pull level.
        if bool(pin.state) != high:
            if high:
                pin.drive_high()
            else:
                pin.drive_low()
