"""The city desk's configuration (TOML): the broker, the database, the ingest workers, the desk,
the districts and the escalation ladder. Every default and range lives here, once.

Errors name the file, the key, the value and what is allowed; a bad file changes nothing (the
command refuses to start).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The kitchens' topic tree (gateway/uplinks/mqtt/schema.py): <prefix>/<site>/<leaf>.
DEFAULT_TOPIC_PREFIX = "gasguard"
DEFAULT_SHARE_GROUP = "city-ingest"
SITE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DISTRICT_ID_RE = SITE_ID_RE
ESCALATION_TARGETS = ("district", "fire")


class CityConfigError(ValueError):
    """A config file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """The MQTT 5 broker (or one node of a cluster) the ingest workers subscribe on."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = field(default="", repr=False)
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    share_group: str = DEFAULT_SHARE_GROUP
    keepalive_s: int = 30


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """The ingest workers. A batch is stored in one transaction, then acknowledged."""

    workers: int = 2
    batch_max: int = 500  # events per transaction
    batch_wait_s: float = 0.01  # how long a worker gathers a batch after the first message
    max_message_bytes: int = 65536  # bigger messages are refused unread
    receive_maximum: int = 1000  # unacknowledged QoS 1 messages the broker may send us


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """Escalate an incident nobody acknowledged ``after_s`` after it was stored."""

    after_s: float
    to: str  # "district" (the district's duty phone and webhook) or "fire"


# Unacknowledged for 2 minutes: the district's duty phone; for 5: the fire centre's desk.
DEFAULT_ESCALATION = (EscalationStep(120.0, "district"), EscalationStep(300.0, "fire"))


@dataclass(frozen=True, slots=True)
class District:
    """A district: its officers see its sites. ``site_prefixes`` assigns a new site by its id."""

    id: str
    name: str
    site_prefixes: tuple[str, ...] = ()
    duty_phone: str = ""
    webhook: str = ""


@dataclass(frozen=True, slots=True)
class DeskConfig:
    """The duty page and the watch (silent sites, escalation)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8480
    session_s: float = 8 * 3600.0  # one shift; a session then ends and the officer logs in again
    silent_after_s: float = 300.0  # a site with no message for this long is a "silent site"
    watch_every_s: float = 1.0
    sms_url: str = ""  # an SMS gateway's HTTP endpoint (POST JSON {"to", "text"})
    fire_webhook: str = ""  # the fire centre's desk (POST JSON)
    fire_phone: str = ""


@dataclass(frozen=True, slots=True)
class CityConfig:
    path: Path
    dsn: str
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestConfig = IngestConfig()
    desk: DeskConfig = DeskConfig()
    districts: tuple[District, ...] = ()
    escalation: tuple[EscalationStep, ...] = field(default_factory=lambda: DEFAULT_ESCALATION)

    def district_for(self, site_id: str) -> str | None:
        """The district a new site belongs to: the longest matching prefix, else None."""
        best: tuple[int, str] | None = None
        for d in self.districts:
            for prefix in d.site_prefixes:
                if site_id.startswith(prefix) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), d.id)
        return best[1] if best else None


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def bad(self, key: str, value: object, allowed: str) -> None:
        self.problems.append(f"{self.path}: {key} = {value!r}: {allowed}")

    def table(self, doc: dict[str, Any], key: str) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            self.bad(key, value, "must be a table")
            return {}
        return value

    def unknown(self, table: dict[str, Any], where: str, known: set[str]) -> None:
        for k in sorted(set(table) - known):
            self.bad(
                f"{where}.{k}" if where else k, table[k], f"unknown key; known: {sorted(known)}"
            )

    def text(self, t: dict[str, Any], where: str, key: str, default: str, pattern: str = "") -> str:
        value = t.get(key, default)
        if not isinstance(value, str):
            self.bad(f"{where}.{key}", value, "must be a string")
            return default
        if pattern and value and not re.fullmatch(pattern, value):
            self.bad(f"{where}.{key}", value, f"must match {pattern}")
        return value

    def number(
        self, t: dict[str, Any], where: str, key: str, lo: float, hi: float, default: float
    ) -> float:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            self.bad(f"{where}.{key}", value, f"must be a number from {lo:g} to {hi:g}")
            return default
        return float(value)

    def integer(
        self, t: dict[str, Any], where: str, key: str, lo: int, hi: int, default: int
    ) -> int:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.bad(f"{where}.{key}", value, f"must be a whole number from {lo} to {hi}")
            return default
        return value


URL_PATTERN = r"https?://[^\s]+"
HOST_PORT_MAX = 65535


def load(path: Path) -> CityConfig:
    """Read and check ``path``. Raises CityConfigError listing every problem."""
    r = _Reader(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CityConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise CityConfigError([f"{path}: not valid TOML: {e}"]) from None
    r.unknown(doc, "", {"database", "broker", "ingest", "desk", "district", "escalation"})

    db = r.table(doc, "database")
    r.unknown(db, "database", {"dsn"})
    dsn = r.text(db, "database", "dsn", "")
    if not dsn:
        r.bad("database.dsn", dsn, 'required: a libpq connection string, e.g. "dbname=city"')

    b = r.table(doc, "broker")
    r.unknown(b, "broker", set(BrokerConfig.__slots__))
    d0 = BrokerConfig()
    broker = BrokerConfig(
        host=r.text(b, "broker", "host", d0.host),
        port=r.integer(b, "broker", "port", 1, HOST_PORT_MAX, d0.port),
        username=r.text(b, "broker", "username", d0.username),
        password=r.text(b, "broker", "password", d0.password),
        topic_prefix=r.text(
            b, "broker", "topic_prefix", d0.topic_prefix, r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*"
        ),
        share_group=r.text(b, "broker", "share_group", d0.share_group, r"[A-Za-z0-9_.-]+"),
        keepalive_s=r.integer(b, "broker", "keepalive_s", 5, 600, d0.keepalive_s),
    )

    i = r.table(doc, "ingest")
    i0 = IngestConfig()
    r.unknown(i, "ingest", set(IngestConfig.__slots__))
    ingest = IngestConfig(
        workers=r.integer(i, "ingest", "workers", 1, 64, i0.workers),
        batch_max=r.integer(i, "ingest", "batch_max", 1, 10_000, i0.batch_max),
        batch_wait_s=r.number(i, "ingest", "batch_wait_s", 0.0, 1.0, i0.batch_wait_s),
        max_message_bytes=r.integer(
            i, "ingest", "max_message_bytes", 1024, 1_048_576, i0.max_message_bytes
        ),
        receive_maximum=r.integer(i, "ingest", "receive_maximum", 1, 65535, i0.receive_maximum),
    )

    k = r.table(doc, "desk")
    k0 = DeskConfig()
    r.unknown(k, "desk", set(DeskConfig.__slots__))
    desk = DeskConfig(
        listen_host=r.text(k, "desk", "listen_host", k0.listen_host),
        listen_port=r.integer(k, "desk", "listen_port", 0, HOST_PORT_MAX, k0.listen_port),
        session_s=r.number(k, "desk", "session_s", 60.0, 86400.0, k0.session_s),
        silent_after_s=r.number(k, "desk", "silent_after_s", 5.0, 86400.0, k0.silent_after_s),
        watch_every_s=r.number(k, "desk", "watch_every_s", 0.1, 60.0, k0.watch_every_s),
        sms_url=r.text(k, "desk", "sms_url", k0.sms_url, URL_PATTERN),
        fire_webhook=r.text(k, "desk", "fire_webhook", k0.fire_webhook, URL_PATTERN),
        fire_phone=r.text(k, "desk", "fire_phone", k0.fire_phone, r"\+?[0-9 -]{3,20}"),
    )

    districts: list[District] = []
    raw = doc.get("district", [])
    if not isinstance(raw, list):
        r.bad("district", raw, "must be an array of tables ([[district]])")
        raw = []
    seen: set[str] = set()
    for n, t in enumerate(raw):
        where = f"district[{n}]"
        if not isinstance(t, dict):
            r.bad(where, t, "must be a table")
            continue
        r.unknown(t, where, {"id", "name", "site_prefixes", "duty_phone", "webhook"})
        did = r.text(t, where, "id", "", DISTRICT_ID_RE.pattern)
        if not did:
            r.bad(f"{where}.id", did, "required: letters, digits, '_', '.', '-'")
        elif did in seen:
            r.bad(f"{where}.id", did, "must be unique")
        seen.add(did)
        prefixes = t.get("site_prefixes", [])
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
            r.bad(f"{where}.site_prefixes", prefixes, "must be a list of non-empty strings")
            prefixes = []
        districts.append(
            District(
                id=did,
                name=r.text(t, where, "name", did) or did,
                site_prefixes=tuple(prefixes),
                duty_phone=r.text(t, where, "duty_phone", "", r"\+?[0-9 -]{3,20}"),
                webhook=r.text(t, where, "webhook", "", URL_PATTERN),
            )
        )

    steps: list[EscalationStep] = []
    raw_steps = doc.get("escalation")
    if raw_steps is None:
        steps = list(DEFAULT_ESCALATION)
    elif not isinstance(raw_steps, list):
        r.bad("escalation", raw_steps, "must be an array of tables ([[escalation]])")
    else:
        last = 0.0
        for n, t in enumerate(raw_steps):
            where = f"escalation[{n}]"
            if not isinstance(t, dict):
                r.bad(where, t, "must be a table")
                continue
            r.unknown(t, where, {"after_s", "to"})
            after = r.number(t, where, "after_s", 10.0, 86400.0, 0.0)
            to = t.get("to")
            if to not in ESCALATION_TARGETS:
                r.bad(f"{where}.to", to, f"must be one of {list(ESCALATION_TARGETS)}")
            if after and after <= last:
                r.bad(f"{where}.after_s", after, f"must be later than the step before ({last:g} s)")
            last = max(last, after)
            steps.append(EscalationStep(after, str(to)))

    if r.problems:
        raise CityConfigError(r.problems)
    return CityConfig(
        path=path,
        dsn=dsn,
        broker=broker,
        ingest=ingest,
        desk=desk,
        districts=tuple(districts),
        escalation=tuple(steps),
    )
