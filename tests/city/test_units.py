"""The city's systemd units (config/city/systemd) pass ``systemd-analyze verify`` and start
commands the CLI has."""

from __future__ import annotations

from pathlib import Path

import pytest

from city.cli import main
from tests.appliance.test_units import verify

UNITS = Path(__file__).resolve().parents[2] / "config" / "city" / "systemd"
APP = "/opt/gasguard-city"


def _render(unit: Path, into: Path) -> Path:
    exe = into / "app" / "bin" / "gasguard-city"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    target = into / unit.name
    target.write_text(unit.read_text(encoding="utf-8").replace(APP, str(into / "app")))
    return target


@pytest.mark.parametrize(
    ("unit", "instance"),
    [
        ("gasguard-city-ingest@.service", "w1"),
        ("gasguard-city@.service", "desk"),
        ("gasguard-city@.service", "watch"),
    ],
)
def test_the_city_units_verify_and_run_commands_the_cli_has(
    unit: str, instance: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _render(UNITS / unit, tmp_path)
    named = tmp_path / unit.replace("@.", f"@{instance}.")
    named.symlink_to(template.name)
    assert verify(template) == []
    assert verify(named) == []
    command = "ingest" if "ingest" in unit else instance
    with pytest.raises(SystemExit) as e:
        main(["--config", "x.toml", command, "--help"])
    assert e.value.code == 0 and "usage: gasguard-city" in capsys.readouterr().out
