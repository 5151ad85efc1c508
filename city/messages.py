"""What arrives from the kitchens, checked before anything is stored (pure, no I/O).

The topic names the site (``<prefix>/<site>/<leaf>``), and the broker's ACL lets a kitchen's
credentials publish only under its own site id; the payload's ``site_id`` must match the topic
again here, so a misconfigured broker cannot let one kitchen write another's record. Event
documents are checked by the schema shared with the gateway (``parse_event``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from city.config import SITE_ID_RE
from gateway.uplinks.mqtt.schema import STATUS_SCHEMA_ID, MessageError, json_object, parse_event

LEAVES = ("event", "heartbeat", "status")


@dataclass(frozen=True, slots=True)
class Incoming:
    """One checked message: ``leaf`` is event, heartbeat or status; ``doc`` its JSON."""

    site_id: str
    leaf: str
    doc: dict[str, Any]


def topic_site(topic: str, prefix: str) -> tuple[str, str]:
    """(site id, leaf) of ``<prefix>/<site>/<leaf>``. Raises MessageError."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise MessageError(f"topic {topic[:120]!r} is not under {prefix!r}")
    rest = topic[len(head) :].split("/")
    if len(rest) != 2 or rest[1] not in LEAVES:
        raise MessageError(f"topic {topic[:120]!r}: expected {prefix}/<site>/{'|'.join(LEAVES)}")
    if not SITE_ID_RE.fullmatch(rest[0]):
        raise MessageError(f"topic {topic[:120]!r}: site id {rest[0][:80]!r} is not valid")
    return rest[0], rest[1]


def parse(topic: str, payload: bytes, prefix: str, max_bytes: int) -> Incoming:
    """Check one message. Raises MessageError with the reason (logged by the worker)."""
    if len(payload) > max_bytes:
        raise MessageError(f"{len(payload)} bytes, at most {max_bytes} accepted")
    site_id, leaf = topic_site(topic, prefix)
    incoming = _parse(site_id, leaf, payload)
    why = _unstorable(incoming.doc)
    if why is not None:
        raise MessageError(f"{leaf}: {why}")
    return incoming


def _unstorable(value: object, depth: int = 0) -> str | None:
    """Why PostgreSQL could not store ``value`` as text or jsonb, or None. It cannot hold a NUL
    character, nor a lone UTF-16 surrogate (``"\\ud800"`` is valid JSON, but no UTF-8);
    no kitchen sends either."""
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"contains a lone surrogate ({e.reason} at {e.start})"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            why = _unstorable(k, depth + 1) or _unstorable(v, depth + 1)
            if why is not None:
                return why
    elif isinstance(value, list):
        for v in value:
            why = _unstorable(v, depth + 1)
            if why is not None:
                return why
    return None


def _parse(site_id: str, leaf: str, payload: bytes) -> Incoming:
    if leaf == "event":
        doc = parse_event(payload, site_id)
        if len(doc["kind"]) > 64 or len(doc["source"]) > 128 or len(doc["utc"]) > 40:
            raise MessageError("event: kind, source or utc longer than the schema's use")
        return Incoming(site_id, leaf, doc)
    doc = json_object(payload, leaf)
    if doc.get("site_id") != site_id:
        raise MessageError(f"{leaf}: site_id {doc.get('site_id')!r}, expected {site_id!r}")
    if leaf == "heartbeat":
        pending = doc.get("pending")
        if pending is not None and (
            isinstance(pending, bool) or not isinstance(pending, int) or pending < 0
        ):
            raise MessageError(f"heartbeat: pending {pending!r}, must be a whole number >= 0")
        return Incoming(site_id, leaf, doc)
    if doc.get("schema") != STATUS_SCHEMA_ID:
        raise MessageError(f"status: schema {doc.get('schema')!r}, expected {STATUS_SCHEMA_ID!r}")
    if doc.get("state") not in ("online", "offline"):
        raise MessageError(f"status: state {doc.get('state')!r}, must be online or offline")
    return Incoming(site_id, leaf, doc)
