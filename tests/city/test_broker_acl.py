"""Each kitchen has its own broker credentials and the shipped ACL (config/city/mosquitto.acl)
lets it publish only under its own site id; the ingest refuses a mismatch again."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from city.config import load
from city.ingest import IngestWorker
from tests.city.conftest import RunningWorker, rows
from tests.city.kitchens import BareKitchen, event_doc
from tests.uplink_fixtures import Mosquitto

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "config" / "city" / "mosquitto.acl"
USERS = {"hz-001": "kitchen-one-pw", "hz-002": "kitchen-two-pw", "city-ingest": "ingest-pw"}


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwd = tmp_path / "city.passwd"
    passwd.touch()
    for user, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    broker = Mosquitto(
        tmp_path / "secured",
        extra_config=f"allow_anonymous false\npassword_file {passwd}\nacl_file {ACL}\n",
    )
    broker.start()
    yield broker
    broker.stop()


def test_a_kitchen_cannot_publish_as_another_and_nothing_of_it_is_stored(
    secured_broker: Mosquitto, city_dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "city.toml"
    path.write_text(
        f'[database]\ndsn = "{city_dsn}"\n[broker]\nhost = "{secured_broker.host}"\n'
        f'port = {secured_broker.port}\nusername = "city-ingest"\npassword = "ingest-pw"\n',
        encoding="utf-8",
    )
    worker = RunningWorker(IngestWorker(load(path), "w1"))
    one = BareKitchen(secured_broker, "hz-001", "hz-001", USERS["hz-001"])
    try:
        # hz-001's credentials, hz-002's topic and document: the broker drops it.
        one.send(
            event_doc("hz-002", 1, "alarm.raised", "wok-1", level="high"), "gasguard/hz-002/event"
        )
        # hz-001's topic with hz-002's document: the broker lets it through, the ingest refuses.
        one.send(event_doc("hz-002", 2, "alarm.raised", "wok-1", level="high"))
        one.event(1, "valve.closed", "main")  # its own, afterwards: stored and acknowledged
        assert one.wait_acks({1})
        assert rows(city_dsn, "SELECT site_id, seq FROM events") == [("hz-001", 1)]
        assert worker.worker.counters.rejected == 1
        assert one.acked() == [1]
    finally:
        one.close()
        worker.stop()


def test_a_kitchen_with_a_wrong_password_is_refused(secured_broker: Mosquitto) -> None:
    with pytest.raises(AssertionError, match="did not connect"):
        BareKitchen(secured_broker, "hz-001", "hz-001", "wrong")
