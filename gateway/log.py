"""Structured one-line logs to stdout (journald picks them up).

``log("bus.comm_error", bus="bus0", detector="wok-1", error="timeout")`` prints
``level=info event=bus.comm_error bus=bus0 detector=wok-1 error=timeout``.
Never call this from the safety thread between a reading and the valve: it takes the stream's
lock and may block on a full pipe.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_logger = logging.getLogger("gasguard")


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_fields(**fields: Any) -> str:
    return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def setup(level: int = logging.INFO) -> None:
    """Send gasguard logs to stdout, one line each, once."""
    if _logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(handler)
    _logger.setLevel(level)
    _logger.propagate = False


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if _logger.isEnabledFor(level):
        name = logging.getLevelName(level).lower()
        _logger.log(level, format_fields(level=name, event=event, **fields))


def warn(event: str, **fields: Any) -> None:
    log(event, logging.WARNING, **fields)


def error(event: str, **fields: Any) -> None:
    log(event, logging.ERROR, **fields)
