"""Where each process keeps its files: the one owner of every shared file name.

The safety process writes the event log (``events.db``) in the data directory and serves two
sockets: the control socket (technicians, the console) and the uplink socket (the uplinks
process: status, its own events, its state; nothing that could open a valve). The uplinks
process reads the event log and keeps its outbox in a subdirectory of its own (``uplinks/``),
so that on a real site it can run as another user with the data directory read-only. The
console keeps its technician store beside the event log.

This module imports nothing: any process may use it.
"""

from __future__ import annotations

from pathlib import Path

EVENTS_DB = "events.db"
SPILL_FILE = "events.spill"  # what a stop could not store in the log: replayed at the next start
OUTBOX_DIR = "uplinks"
OUTBOX_DB = "outbox.db"
CONSOLE_DB = "console.db"
CONTROL_SOCKET = "control.sock"
UPLINK_SOCKET = "uplink.sock"
# The system user of the uplinks process (gasguard-uplinks.service); the control socket refuses
# every request from it.
UPLINK_USER = "gasguard-uplink"


def events_db(data_dir: Path) -> Path:
    """The event log of a data directory."""
    return Path(data_dir) / EVENTS_DB


def spill_path(events_path: Path) -> Path:
    """The spill file beside an event log."""
    return Path(events_path).with_name(SPILL_FILE)


def outbox_dir(data_dir: Path) -> Path:
    """The uplinks process's own writable directory inside the data directory."""
    return Path(data_dir) / OUTBOX_DIR


def outbox_db(data_dir: Path) -> Path:
    """The uplinks' durable outbox."""
    return outbox_dir(data_dir) / OUTBOX_DB


def console_db(data_dir: Path) -> Path:
    """The technician console's store (technicians, commissioning, hazards)."""
    return Path(data_dir) / CONSOLE_DB


def default_control_socket(data_dir: Path) -> Path:
    """The control socket when ``[control] socket`` is not set."""
    return Path(data_dir) / CONTROL_SOCKET


def uplink_socket(control_socket: Path) -> Path:
    """The uplink socket: always beside the control socket (same directory, same lifetime)."""
    return Path(control_socket).with_name(UPLINK_SOCKET)
