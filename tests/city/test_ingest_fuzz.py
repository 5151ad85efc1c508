"""The city's ingest against hostile kitchens (issue 29, item 1): whatever one message or one
batch holds, the worker stays alive, refuses what cannot be stored with its reason and stores
the rest. Hypothesis fuzzes every field of the event schema with every JSON value kind and
the whole of Unicode (lone surrogates included, sent as JSON escapes as a kitchen could) into
a real worker's batch handling against the real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from city.config import CityConfig
from city.ingest import IngestWorker
from gateway.uplinks.mqtt.schema import EVENT_SCHEMA_ID
from tests.city.conftest import SITE, rows

FIELDS = ("schema", "site_id", "event_id", "seq", "kind", "class", "source", "utc", "details",
          "text_zh", "text")  # fmt: skip
# Every character, surrogates (category Cs) included.
TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def good(seq: int) -> dict[str, Any]:
    return {
        "schema": EVENT_SCHEMA_ID, "site_id": SITE, "event_id": f"{SITE}-{seq}", "seq": seq,
        "kind": "alarm.raised", "class": "alarm", "source": "wok-1",
        "utc": "2026-12-07T12:00:00.000Z", "details": {"lel": 30.0}, "text_zh": "报警",
        "text": "alarm",
    }  # fmt: skip


def message(doc: dict[str, Any] | bytes, prefix: str) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(1, f"{prefix}/{SITE}/event".encode())
    # ensure_ascii: a lone surrogate travels as the JSON escape "\ud800", valid JSON.
    m.payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    m.qos = 0
    return m


@pytest.fixture
def worker(city_config: Callable[..., CityConfig]) -> IngestWorker:
    w = IngestWorker(city_config(), "fuzz")
    w._prepare_db()
    return w


seqs = iter(range(10_000, 10**9))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.lists(st.tuples(st.sampled_from(FIELDS), JSON), min_size=1, max_size=3),
    drop=st.lists(st.sampled_from(FIELDS), max_size=2),
    batch_with_good=st.booleans(),
)
def test_no_message_or_batch_stops_the_worker_and_the_rest_is_stored(
    worker: IngestWorker,
    city_dsn: str,
    changes: list[tuple[str, Any]],
    drop: list[str],
    batch_with_good: bool,
) -> None:
    prefix = worker.cfg.broker.topic_prefix
    hostile = good(next(seqs))
    for name, value in changes:
        hostile[name] = value
    for name in drop:
        hostile.pop(name, None)
    ok = good(next(seqs))
    batch = [message(hostile, prefix)] + ([message(ok, prefix)] if batch_with_good else [])
    before = worker.counters.rejected + worker.counters.stored + worker.counters.duplicates
    worker._handle(batch)  # must not raise, whatever the hostile message holds
    after = worker.counters.rejected + worker.counters.stored + worker.counters.duplicates
    assert after - before == len(batch)  # each one stored or refused with its reason
    if batch_with_good:
        assert rows(city_dsn, "SELECT count(*) FROM events WHERE seq = %s", ok["seq"]) == [(1,)]
    assert worker.counters.failed_batches == 0


def test_a_lone_surrogate_is_refused_and_the_next_alarm_is_stored(
    worker: IngestWorker, city_dsn: str
) -> None:
    """The campaign's case: text_zh "\\ud800" killed both workers, one send each."""
    prefix = worker.cfg.broker.topic_prefix
    for field in ("text_zh", "text", "kind", "source", "utc"):
        doc = good(next(seqs))
        doc[field] = "\ud800"
        worker._handle([message(doc, prefix)])
    ok = good(next(seqs))
    worker._handle([message(ok, prefix)])
    assert worker.counters.rejected == 5 and worker.counters.failed_batches == 0
    assert rows(city_dsn, "SELECT count(*) FROM events WHERE seq = %s", ok["seq"]) == [(1,)]
