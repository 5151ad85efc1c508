"""A fake ``machine`` module, so the fixture firmware runs off the Pico: under CPython (the HIL
sim rig, unit tests) and under the MicroPython WebAssembly VM (the self-test). It runs on both,
so it uses only what MicroPython has (no typing, no dataclasses).

It models only what ``fixture.hal`` uses: ``Pin`` (in, out, open drain, pulls, IRQs),
``UART`` (whose bytes come from a "wire" object), ``idle``, ``disable_irq``/``enable_irq``.
The world around the Pico plugs in through module functions:

* ``attach_uart(uart_id, wire)``: ``wire`` has ``configure(baud, parity, stop_bits)``,
  ``any()``, ``readinto(buf, nbytes)``, ``write(buf)``; ``MemoryWire`` is an in-memory one, the
  sim rig passes one on a pseudo-terminal that keeps RS-485 wire timing.
* ``attach_pin(pin_id, peer)``: ``peer.driven(level)`` is called whenever the fixture drives
  that pin (output, or open drain: 0 = pulled low, 1 = released).
* ``set_input(pin_id, level)``: the outside world changes the level on a pin; the pin's IRQ
  handler runs at once, in the caller's thread, as a hard interrupt would.
* ``set_idle(hook)``: what ``idle()`` does (the sim rig waits for its file descriptors).

Interrupts are serialised by one lock (``disable_irq`` takes it), as on one core.
"""

try:
    import _thread

    _lock = _thread.allocate_lock()
except ImportError:  # the WebAssembly VM: one thread, nothing to serialise
    _lock = None

_uart_wires = {}
_pin_peers = {}
_pins = {}
_levels = {}  # level the outside world puts on each pin
_idle = [None]


def attach_uart(uart_id, wire):
    _uart_wires[uart_id] = wire


def attach_pin(pin_id, peer):
    _pin_peers[pin_id] = peer


def set_idle(hook):
    _idle[0] = hook


def reset():
    """Forget every wire, peer, pin and level (between tests)."""
    _uart_wires.clear()
    _pin_peers.clear()
    _pins.clear()
    _levels.clear()
    _idle[0] = None


def disable_irq():
    if _lock is not None:
        _lock.acquire()
    return 1


def enable_irq(state=1):
    if _lock is not None:
        _lock.release()


def idle():
    hook = _idle[0]
    if hook is not None:
        hook()


def set_input(pin_id, level):
    """The outside world puts ``level`` on ``pin_id``; fires the pin's IRQ on an edge."""
    level = 1 if level else 0
    if _lock is not None:
        _lock.acquire()
    try:
        old = _levels.get(pin_id)
        _levels[pin_id] = level
        pin = _pins.get(pin_id)
        if pin is None or old == level or pin._handler is None:
            return
        if pin.value() != level:
            return  # the fixture drives this pin itself: the outside level does not show
        wanted = Pin.IRQ_RISING if level else Pin.IRQ_FALLING
        if pin._trigger & wanted:
            pin._handler(pin)
    finally:
        if _lock is not None:
            _lock.release()


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._mode = self.IN
        self._pull = -1
        self._out = 0
        self._handler = None
        self._trigger = 0
        _pins[id] = self
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            if self._mode == self.OUT:
                return self._out
            if self._mode == self.OPEN_DRAIN and self._out == 0:
                return 0
            level = _levels.get(self.id)
            if level is None:
                return 1 if self._pull == self.PULL_UP or self._mode == self.OPEN_DRAIN else 0
            return level
        self._out = 1 if v else 0
        peer = _pin_peers.get(self.id)
        if peer is not None and self._mode != self.IN:
            peer.driven(self._out)
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, hard=False):
        self._handler = handler
        self._trigger = trigger


class MemoryWire:
    """An in-memory RS-485 line for tests: ``feed`` bytes from the master, ``take_tx`` what the
    fixture sent. Reading and writing use preallocated buffers (no allocation)."""

    def __init__(self, size=1024):
        self.rx = bytearray(size)
        self.rx_len = 0
        self.rx_pos = 0
        self.tx = bytearray(size)
        self.tx_len = 0
        self.baud = 9600
        self.parity = "N"
        self.stop_bits = 1

    def configure(self, baud, parity, stop_bits):
        self.baud = baud
        self.parity = parity
        self.stop_bits = stop_bits

    def feed(self, data):
        if self.rx_pos == self.rx_len:
            self.rx_pos = self.rx_len = 0
        for i in range(len(data)):
            self.rx[self.rx_len] = data[i]
            self.rx_len += 1

    def any(self):
        return self.rx_len - self.rx_pos

    def readinto(self, buf, nbytes=-1):
        n = self.rx_len - self.rx_pos
        room = len(buf) if nbytes < 0 else nbytes
        if n > room:
            n = room
        for i in range(n):
            buf[i] = self.rx[self.rx_pos + i]
        self.rx_pos += n
        return n

    def write(self, buf):
        n = len(buf)
        for i in range(n):
            self.tx[self.tx_len] = buf[i]
            self.tx_len += 1
        return n

    def take_tx(self):
        data = bytes(self.tx[: self.tx_len])
        self.tx_len = 0
        return data


class UART:
    def __init__(self, id, baudrate=9600, bits=8, parity=None, stop=1, **kwargs):
        self.id = id
        wire = _uart_wires.get(id)
        if wire is None:
            wire = MemoryWire()
            _uart_wires[id] = wire
        self._wire = wire
        self.init(baudrate=baudrate, bits=bits, parity=parity, stop=stop)

    def init(self, baudrate=9600, bits=8, parity=None, stop=1, **kwargs):
        if bits != 8:
            raise ValueError("fake UART: bits " + str(bits) + " is not supported: 8")
        letter = {None: "N", 0: "E", 1: "O"}.get(parity)
        if letter is None:
            raise ValueError("fake UART: parity " + repr(parity) + " is not one of None, 0, 1")
        self._wire.configure(baudrate, letter, stop)

    def any(self):
        return self._wire.any()

    def readinto(self, buf, nbytes=-1):
        return self._wire.readinto(buf, nbytes)

    def write(self, buf):
        return self._wire.write(buf)

    def flush(self):
        pass

    def txdone(self):
        return True
