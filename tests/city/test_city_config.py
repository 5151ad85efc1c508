"""The city config: the shipped example loads; every bad value is named with its file, key,
value and what is allowed, all at once; districts by the longest site-id prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from city.config import DEFAULT_ESCALATION, CityConfigError, load

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "city" / "city.example.toml"


def test_the_example_config_loads() -> None:
    cfg = load(EXAMPLE)
    assert [d.id for d in cfg.districts] == ["xihu", "gongshu"]
    assert [(s.after_s, s.to) for s in cfg.escalation] == [(120.0, "district"), (300.0, "fire")]
    assert cfg.escalation == DEFAULT_ESCALATION
    assert cfg.district_for("hz-gs-0042") == "gongshu" and cfg.district_for("sh-1") is None
    assert "change-me" not in repr(cfg)  # the broker password is never printed


def test_every_problem_is_named_with_file_key_value_and_range(tmp_path: Path) -> None:
    path = tmp_path / "city.toml"
    path.write_text(
        """
[database]
dsn = ""
[broker]
port = 70000
colour = "red"
[ingest]
workers = 0
[desk]
silent_after_s = 1
sms_url = "ftp://x"
[[district]]
id = "a b"
[[district]]
id = "gs"
[[district]]
id = "gs"
[[escalation]]
after_s = 300
to = "mayor"
[[escalation]]
after_s = 120
to = "fire"
""",
        encoding="utf-8",
    )
    with pytest.raises(CityConfigError) as e:
        load(path)
    text = str(e.value)
    for expected in (
        "database.dsn = ''",
        "broker.port = 70000: must be a whole number from 1 to 65535",
        "broker.colour = 'red': unknown key",
        "ingest.workers = 0: must be a whole number from 1 to 64",
        "desk.silent_after_s = 1: must be a number from 5 to 86400",
        "desk.sms_url = 'ftp://x'",
        "district[0].id = 'a b'",
        "district[2].id = 'gs': must be unique",
        "escalation[0].to = 'mayor': must be one of ['district', 'fire']",
        "escalation[1].after_s = 120.0: must be later than the step before (300 s)",
    ):
        assert f"{path}: {expected}" in text, (expected, text)


def test_a_file_that_is_not_toml_or_missing_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[database\n", encoding="utf-8")
    with pytest.raises(CityConfigError, match="not valid TOML"):
        load(bad)
    with pytest.raises(CityConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
