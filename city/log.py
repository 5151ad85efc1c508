"""Structured one-line logs for the city processes: one JSON object per line on stdout
(journald or a log shipper picks them up). ``log("ingest.rejected", site="hz-1", reason=...)``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _emit(level: str, event: str, fields: dict[str, Any]) -> None:
    line = {"ts": round(time.time(), 3), "level": level, "event": event, **fields}
    try:
        sys.stdout.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # a closed stdout must not stop ingest


def log(event: str, /, **fields: Any) -> None:
    _emit("info", event, fields)


def warn(event: str, /, **fields: Any) -> None:
    _emit("warning", event, fields)


def error(event: str, /, **fields: Any) -> None:
    _emit("error", event, fields)
