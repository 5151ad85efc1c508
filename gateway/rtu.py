"""Modbus RTU line timing: how long characters, frames and silences take on an RS-485 line.

Shared by the config check, the bus poller, the emulator and the benchmarks, so that all of them
agree on the physical floor (Modbus RTU).
"""

from __future__ import annotations

PARITIES = ("N", "E", "O")
FIXED_T35_S = 0.00175  # Modbus over serial line §2.5.1.1: fixed t3.5 above 19200 baud
FIXED_T35_ABOVE_BAUD = 19200
READ_REQUEST_BYTES = 8  # FC03/FC04 request: id, fc, address, count, CRC
# A detector's processing time between the end of a request (after its t3.5) and its reply.
# Not on any data sheet we have; 5 ms is what field detectors typically take. Used to estimate
# bus load, never to decide a timeout.
SLAVE_TURNAROUND_S = 0.005


def check_line(baud: int, parity: str, stop_bits: int) -> None:
    """Raise ValueError naming the setting, its value and the allowed values."""
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud {baud!r} is not allowed: a positive integer such as 9600")
    if parity not in PARITIES:
        raise ValueError(f"parity {parity!r} is not allowed: one of {', '.join(PARITIES)}")
    if stop_bits not in (1, 2):
        raise ValueError(f"stop_bits {stop_bits!r} is not allowed: 1 or 2")


def char_bits(parity: str, stop_bits: int) -> int:
    """Bits one character takes on the wire: start + 8 data + parity + stop
    (10 for 8N1; 11 for 8E1, 8O1 and 8N2)."""
    return 1 + 8 + (0 if parity == "N" else 1) + stop_bits


def char_time(baud: int, parity: str, stop_bits: int) -> float:
    """Seconds one character takes on the wire."""
    check_line(baud, parity, stop_bits)
    return char_bits(parity, stop_bits) / baud


def frame_wire_time(nbytes: int, baud: int, parity: str, stop_bits: int) -> float:
    """Seconds a frame of ``nbytes`` characters takes on the wire."""
    if nbytes < 0:
        raise ValueError(f"nbytes {nbytes!r} is not allowed: 0 or more")
    return nbytes * char_time(baud, parity, stop_bits)


def t35(baud: int, parity: str, stop_bits: int) -> float:
    """The Modbus RTU inter-frame silence: 3.5 characters, fixed 1.75 ms above 19200 baud."""
    if baud > FIXED_T35_ABOVE_BAUD:
        check_line(baud, parity, stop_bits)
        return FIXED_T35_S
    return 3.5 * char_time(baud, parity, stop_bits)


def read_exchange_time(registers: int, baud: int, parity: str, stop_bits: int) -> float:
    """Wire time of one FC03/FC04 read of ``registers`` registers: the request, the reply
    (5 + 2N bytes) and one t3.5 silence. A reply timeout shorter than this can never work."""
    nbytes = READ_REQUEST_BYTES + 5 + 2 * registers
    return frame_wire_time(nbytes, baud, parity, stop_bits) + t35(baud, parity, stop_bits)


def poll_time(registers: int, baud: int, parity: str, stop_bits: int, gap_s: float = 0.0) -> float:
    """Bus time one answered poll of ``registers`` registers takes: the silence before the
    request (t3.5 plus the configured gap), the request, its t3.5, the slave's turnaround
    (``SLAVE_TURNAROUND_S``, assumed) and the reply."""
    return (
        t35(baud, parity, stop_bits)
        + gap_s
        + read_exchange_time(registers, baud, parity, stop_bits)
        + SLAVE_TURNAROUND_S
    )


def silent_attempt_time(
    baud: int, parity: str, stop_bits: int, gap_s: float, timeout_s: float
) -> float:
    """Bus time one request to a detector that does not answer takes: the silence before it,
    the request and the whole reply timeout."""
    return (
        t35(baud, parity, stop_bits)
        + gap_s
        + frame_wire_time(READ_REQUEST_BYTES, baud, parity, stop_bits)
        + timeout_s
    )
