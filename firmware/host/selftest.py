"""Self-test of the fixture firmware with the fake ``machine``: feeds Modbus requests, checks
replies, commands, edges, the valve contact and that serving frames allocates nothing.

Run by firmware/wasm/run.mjs under the real MicroPython VM (WebAssembly), where it proves the
firmware is MicroPython code that works; it also runs under CPython (the allocation check
needs ``gc.mem_alloc``, MicroPython only). Prints ``PASS <check>`` / ``FAIL <check>: <why>``
lines and ends with ``SELFTEST OK <n> checks`` or ``SELFTEST FAILED <n> of <m>``.
"""

import gc
import struct
import sys

import machine
from fixture import board
from fixture.app import Fixture
from fixture.clock import ticks_diff, ticks_us
from fixture.crc import crc16
from fixture.hal import Hal

_results = [0, 0]  # passed, failed


def check(name, ok, why=""):
    if ok:
        _results[0] += 1
        print("PASS " + name)
    else:
        _results[1] += 1
        print("FAIL " + name + ": " + str(why))


class Recorder:
    """A pin peer that remembers what the fixture drove."""

    def __init__(self):
        self.levels = []

    def driven(self, level):
        self.levels.append(level)


class MemoryConsole:
    """Console stand-in: ``lines`` to read, ``out`` what the fixture wrote."""

    MAX_LINE = 200

    def __init__(self):
        self.lines = []
        self.out = []

    def read_line(self):
        if self.lines:
            return self.lines.pop(0)
        return None

    def write_line(self, text):
        self.out.append(text)


def request(address, function, start, count):
    frame = bytearray(8)
    frame[0] = address
    frame[1] = function
    frame[2] = start >> 8
    frame[3] = start & 0xFF
    frame[4] = count >> 8
    frame[5] = count & 0xFF
    crc = crc16(frame, 6)
    frame[6] = crc & 0xFF
    frame[7] = crc >> 8
    return frame


def reply_ok(reply):
    if len(reply) < 5:
        return False
    crc = crc16(bytearray(reply), len(reply) - 2)
    return reply[-2] == crc & 0xFF and reply[-1] == crc >> 8


def exchange(fx, wire, frame, timeout_us=200_000):
    """Feed one request, run the fixture until a reply is out or ``timeout_us`` passed."""
    wire.take_tx()
    wire.feed(frame)
    start = ticks_us()
    while ticks_diff(ticks_us(), start) < timeout_us:
        fx.step()
        if wire.tx_len and not fx.slave.pending_len and not fx.slave.rx_len:
            break
    return wire.take_tx()


def run_for(fx, us):
    """Run the main loop for ``us`` microseconds (chores run once a millisecond)."""
    start = ticks_us()
    while ticks_diff(ticks_us(), start) < us:
        fx.step()


def command(fx, text):
    return fx.command(text, ticks_us())


def word(reply, index):
    return (reply[3 + 2 * index] << 8) | reply[4 + 2 * index]


def float_at(reply, index):
    return struct.unpack(">f", bytes(reply[3 + 2 * index : 7 + 2 * index]))[0]


def run():
    machine.reset()
    wire = machine.MemoryWire()
    machine.attach_uart(board.UART_ID, wire)
    feedback = Recorder()
    reset_button = Recorder()
    machine.attach_pin(board.FEEDBACK_PIN, feedback)
    machine.attach_pin(board.RESET_PIN, reset_button)
    fan_run = Recorder()
    mains = Recorder()
    machine.attach_pin(board.FAN_RUN_PIN, fan_run)
    machine.attach_pin(board.MAINS_PIN, mains)
    console = MemoryConsole()
    fx = Fixture(Hal(console=console))

    reply = command(fx, "hello")
    check("hello", reply.startswith("ok hello gasguard-fixture"), reply)
    check("bus", command(fx, "bus 115200 N 1").startswith("ok bus 115200 N 1"))
    check("add 1", command(fx, "add 1 generic-cn-kitchen").startswith("ok add 1"))
    check("add 2", command(fx, "add 2 honeywell-sensepoint-xcd").startswith("ok add 2"))
    check("add 3", command(fx, "add 3 msa-ultima-x").startswith("ok add 3"))
    reply = command(fx, "add 3 msa-ultima-x")
    check("add twice refused", reply.startswith("err add: address 3 is already"), reply)
    reply = command(fx, "add 4 nosuch")
    check("unknown profile refused", reply.startswith("err add: profile 'nosuch'"), reply)
    reply = command(fx, "gas 9 10")
    check("unknown address refused", "address 9 has no detector" in reply, reply)
    reply = command(fx, "gas 1 abc")
    check("bad number refused", "lel 'abc' is not a number" in reply, reply)
    reply = command(fx, "frobnicate")
    check("unknown command refused", reply.startswith("err frobnicate: unknown command"), reply)

    # A healthy generic detector: int16 x 0.1 %LEL in register 0, status code in 1.
    command(fx, "gas 1 12.5")
    reply = exchange(fx, wire, request(1, 3, 0, 2))
    check("generic reply crc", reply_ok(reply), reply)
    check("generic reply header", reply[:3] == b"\x01\x03\x04", reply)
    check("generic value", word(reply, 0) == 125 and word(reply, 1) == 0, reply)
    command(fx, "gas 1 60")
    reply = exchange(fx, wire, request(1, 3, 0, 2))
    check("generic high alarm", word(reply, 0) == 600 and word(reply, 1) == 2, reply)

    # Honeywell: float32 at 2-3, fault code at 4, status bits at 5, units 5 at 10.
    command(fx, "gas 2 33.25")
    reply = exchange(fx, wire, request(2, 3, 2, 9))
    check("honeywell crc", reply_ok(reply), reply)
    check("honeywell value", abs(float_at(reply, 0) - 33.25) < 1e-4, reply)
    check("honeywell low alarm bit", word(reply, 3) == 1, reply)
    check("honeywell units", word(reply, 8) == 5, reply)
    command(fx, "fault 2 1100")
    reply = exchange(fx, wire, request(2, 3, 2, 9))
    check("honeywell fault code", word(reply, 2) == 1100 and word(reply, 3) & 32, reply)
    command(fx, "fault 2 0")

    # MSA: float32 at 207, status bits 201, fault bits 202.
    command(fx, "gas 3 51")
    reply = exchange(fx, wire, request(3, 3, 201, 8))
    check("msa value", abs(float_at(reply, 6) - 51.0) < 1e-4, reply)
    check("msa high alarm bits", word(reply, 0) == 6, reply)

    # Misbehaviour.
    command(fx, "corrupt 1 1")
    bad = exchange(fx, wire, request(1, 3, 0, 2))
    good = exchange(fx, wire, request(1, 3, 0, 2))
    check("corrupt once", len(bad) == 9 and not reply_ok(bad) and reply_ok(good), (bad, good))
    command(fx, "silent 1 1")
    reply = exchange(fx, wire, request(1, 3, 0, 2), 20_000)
    check("silent", reply == b"", reply)
    command(fx, "silent 1 0")
    frames_bad = fx.slave.bad_frames
    garbled = request(1, 3, 0, 2)
    garbled[7] ^= 0x55
    reply = exchange(fx, wire, garbled, 20_000)
    check("bad request crc ignored", reply == b"" and fx.slave.bad_frames == frames_bad + 1)
    reply = exchange(fx, wire, request(1, 3, 5, 2))
    check("illegal address exception", reply[1:3] == b"\x83\x02" and reply_ok(reply), reply)
    reply = exchange(fx, wire, request(1, 6, 0, 2))
    check("illegal function exception", reply[1:3] == b"\x86\x01", reply)
    reply = exchange(fx, wire, request(7, 3, 0, 2), 20_000)
    check("foreign address ignored", reply == b"", reply)
    command(fx, "spike 1 70")
    first = exchange(fx, wire, request(1, 3, 0, 2))
    second = exchange(fx, wire, request(1, 3, 0, 2))
    check("spike one reply", word(first, 0) == 700 and word(second, 0) == 600, (first, second))
    command(fx, "delay 1 30")
    start = ticks_us()
    reply = exchange(fx, wire, request(1, 3, 0, 2))
    took = ticks_diff(ticks_us(), start)
    check("reply delay", reply_ok(reply) and took >= 30_000, took)
    command(fx, "delay * 0")

    # Watched lines: an edge on the valve drive is reported with its time stamp, and the
    # contact follows after the configured delay.
    command(fx, "valve follow 0")
    console.out.clear()
    before = ticks_us()
    machine.set_input(board.WATCH_PINS[0], 1)
    run_for(fx, 5_000)
    edges = [line for line in console.out if line.startswith("edge valve 1 ")]
    ok = len(edges) == 1 and ticks_diff(int(edges[0].split()[3]), before) >= 0
    check("valve edge reported", ok, console.out)
    deadline = ticks_us()
    while feedback.levels[-1:] != [0] and ticks_diff(ticks_us(), deadline) < 100_000:
        fx.step()
    check("contact follows: open", feedback.levels[-1:] == [0], feedback.levels)
    machine.set_input(board.WATCH_PINS[0], 0)
    deadline = ticks_us()
    while feedback.levels[-1:] != [1] and ticks_diff(ticks_us(), deadline) < 100_000:
        fx.step()
    check("contact follows: closed", feedback.levels[-1:] == [1], feedback.levels)
    check("contact edge reported", any(x.startswith("edge feedback 1") for x in console.out))
    command(fx, "valve stuck open")
    run_for(fx, 5_000)
    check("contact stuck open", feedback.levels[-1] == 0, feedback.levels)
    reply = command(fx, "lines")
    check("lines", "valve=0" in reply and "feedback=0" in reply, reply)
    reply = command(fx, "press reset 5")
    check("press reset", reset_button.levels[-1:] == [0], reset_button.levels)
    deadline = ticks_us()
    while reset_button.levels[-1] == 0 and ticks_diff(ticks_us(), deadline) < 100_000:
        fx.step()
    check("release reset", reset_button.levels[-1:] == [1], reset_button.levels)

    # The fan: its run contact follows the relay line after the delay, never while jammed.
    command(fx, "fan follow 10")
    fan_line = board.WATCH_PINS[5]
    machine.set_input(fan_line, 1)
    run_for(fx, 3_000)
    check("fan not yet spun up", fan_run.levels[-1:] != [1], fan_run.levels)
    deadline = ticks_us()
    while fan_run.levels[-1:] != [1] and ticks_diff(ticks_us(), deadline) < 100_000:
        fx.step()
    check("fan run contact: running", fan_run.levels[-1:] == [1], fan_run.levels)
    check("fan edges reported", any(x.startswith("edge fan 1") for x in console.out)
          and any(x.startswith("edge fan-run 1") for x in console.out))  # fmt: skip
    reply = command(fx, "fan jam 1")
    run_for(fx, 5_000)
    check("jammed fan stops", fan_run.levels[-1:] == [0] and "jammed=1" in reply, reply)
    command(fx, "fan jam 0")
    machine.set_input(fan_line, 0)
    # The power contacts: high while healthy, low on the fault; a bad one changes nothing.
    check("mains starts healthy", mains.levels[-1:] == [1], mains.levels)
    reply = command(fx, "power mains fail")
    check("mains fails", reply.startswith("ok power") and mains.levels[-1:] == [0], reply)
    reply = command(fx, "power mains flicker")
    check("bad power state refused", reply.startswith("err power") and mains.levels[-1:] == [0])
    command(fx, "power mains ok")
    check("mains back", mains.levels[-1:] == [1], mains.levels)

    # No allocation on the UART path (MicroPython only: gc.mem_alloc).
    if hasattr(gc, "mem_alloc"):
        frame = request(2, 3, 2, 9)
        slave = fx.slave
        wire.take_tx()
        gc.collect()
        gc.disable()
        try:
            before = gc.mem_alloc()
            for _ in range(5):
                wire.feed(frame)
                start = ticks_us()
                while wire.tx_len == 0 and ticks_diff(ticks_us(), start) < 100_000:
                    slave.poll(ticks_us())
                wire.tx_len = 0
            fx.log.record(1, 1, ticks_us())
            after = gc.mem_alloc()
        finally:
            gc.enable()
        check("no allocation serving 5 frames", after == before, after - before)
    machine.reset()


def main():
    print("implementation " + sys.implementation.name)
    try:
        run()
    except Exception as e:
        check("self-test ran to the end", False, type(e).__name__ + ": " + str(e))
        print_exception = getattr(sys, "print_exception", None)  # MicroPython's traceback
        if print_exception is not None:
            print_exception(e)
    passed, failed = _results
    if failed:
        print("SELFTEST FAILED " + str(failed) + " of " + str(passed + failed))
    else:
        print("SELFTEST OK " + str(passed) + " checks")
    return failed == 0


if __name__ == "__main__":
    main()
