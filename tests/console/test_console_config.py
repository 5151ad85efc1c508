"""Staged configuration edits, atomic apply and rollback, and apply under SIGKILL."""

from __future__ import annotations

import datetime
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.console.configedit import (
    ConfigEditError,
    ConfigEditor,
    add_entry,
    atomic_write,
    parse_assignments,
    parse_value,
    previous_path,
    remove_entry,
    set_entry,
    set_table,
)
from gateway.profiles import default_profiles_dir
from gateway.uplinks.config import uplink_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gasguard.example.toml"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The example config (with its comments), made to run from tmp_path."""
    text = EXAMPLE.read_text()
    text = text.replace('data_dir = "/var/lib/gasguard"', 'data_dir = "data"')
    text = f'profiles_dir = "{default_profiles_dir()}"\n' + text
    path = tmp_path / "gasguard.toml"
    path.write_text(text)
    load_config(path)
    return path


def fields(table: str, text: str) -> dict[str, object]:
    return parse_assignments(table, text.split())


def test_an_invalid_edit_is_refused_and_changes_nothing(config_path: Path) -> None:
    editor = ConfigEditor(config_path)
    before = config_path.read_text()
    with pytest.raises(ConfigEditError) as err:
        editor.edit(lambda d: set_entry(d, "detector", "wok-1", fields("detector", "high_lel=80")))
    assert any("detector[0].high_lel = 80: a number from 1 to 50" in p for p in err.value.problems)
    assert not editor.staged
    with pytest.raises(ConfigEditError, match="no detector named 'nope'"):
        editor.edit(lambda d: set_entry(d, "detector", "nope", fields("detector", "low_lel=10")))
    with pytest.raises(ConfigEditError, match="already exists"):
        editor.edit(lambda d: add_entry(d, "detector", "wok-1", fields("detector", "zone=x")))
    with pytest.raises(ConfigEditError, match="missing bus=, address="):
        editor.edit(
            lambda d: add_entry(
                d,
                "detector",
                "wok-9",
                fields("detector", "zone=z profile=p gas=lpg low_lel=1 high_lel=2"),
            )
        )
    # The same address twice on one bus, and an output pin outside GPIO 9-27.
    with pytest.raises(ConfigEditError) as err:
        editor.edit(lambda d: set_entry(d, "detector", "wok-2", fields("detector", "address=1")))
    assert any("an address not already used on bus 'bus0'" in p for p in err.value.problems)
    with pytest.raises(ConfigEditError) as err:
        editor.edit(lambda d: set_entry(d, "valve", "main-inlet", fields("valve", "output_pin=4")))
    assert any("valve[0].output_pin = 4" in p for p in err.value.problems)
    assert not editor.staged
    assert config_path.read_text() == before


@pytest.mark.parametrize(
    ("table", "word", "message"),
    [
        ("detector", "lowlel=20", "unknown key 'lowlel'"),
        ("detector", "address=three", "must be a whole number"),
        ("detector", "low_lel=1,5", "must be a number"),
        ("bus", "rs485=maybe", "must be true or false"),
        ("valve", "zones=a,,b", "comma-separated list"),
        ("detector", "name=", "must not be empty"),
        ("site", "name=\x1b[2J", "only printable characters"),
        ("detector", "zone", "expected key=value"),
    ],
)
def test_typed_values_are_checked(table: str, word: str, message: str) -> None:
    with pytest.raises(ConfigEditError, match=re.escape(message)):
        parse_assignments(table, [word])


def test_values_keep_their_type() -> None:
    assert parse_value("detector", "low_lel", "20") == 20
    assert parse_value("detector", "low_lel", "12.5") == 12.5
    assert parse_value("bus", "rs485", "yes") is True
    assert parse_value("valve", "zones", "a, b") == ["a", "b"]
    with pytest.raises(ConfigEditError, match="given twice"):
        parse_assignments("detector", ["low_lel=1", "low_lel=2"])


def test_edits_keep_comments_and_apply_keeps_the_previous_version(config_path: Path) -> None:
    before = config_path.read_text()
    editor = ConfigEditor(config_path)
    message, problems = editor.edit(
        lambda d: set_entry(d, "detector", "wok-1", fields("detector", "low_lel=15"))
    )
    assert message == "detector wok-1: low_lel = 15" and problems == []
    diff = editor.diff()
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changed == [
        "-low_lel = 20                        # GB 15322.1: low 1-25 %LEL",
        "+low_lel = 15                        # GB 15322.1: low 1-25 %LEL",
    ]
    assert config_path.read_text() == before  # staged only
    prepared = editor.prepare()
    assert prepared.restart == ()
    config_path.chmod(0o640)
    editor.commit(prepared)
    assert not editor.staged
    assert load_config(config_path).detectors[0].low_lel == 15
    assert previous_path(config_path).read_text() == before
    assert config_path.stat().st_mode & 0o777 == 0o640  # the file's mode is kept
    # Rollback puts the previous text back and keeps the replaced one as .prev.
    rollback = ConfigEditor(config_path).prepare_rollback()
    ConfigEditor(config_path).commit(rollback)
    assert config_path.read_text() == before
    assert "low_lel = 15" in previous_path(config_path).read_text()


def test_a_new_zone_takes_two_edits_and_valve_changes_need_a_restart(config_path: Path) -> None:
    editor = ConfigEditor(config_path)
    _, problems = editor.edit(
        lambda d: add_entry(
            d,
            "detector",
            "lpg-store",
            fields(
                "detector",
                "zone=lpg-room bus=bus0 address=4 profile=generic-cn-kitchen gas=lpg "
                "low_lel=10 high_lel=40",
            ),
        )
    )
    assert problems and "a zone listed in some valve's zones" in problems[0]
    with pytest.raises(ConfigEditError, match="1 problem"):
        editor.prepare()
    _, problems = editor.edit(
        lambda d: add_entry(
            d, "valve", "lpg-manifold", fields("valve", "output_pin=16 zones=lpg-room")
        )
    )
    assert problems == []
    prepared = editor.prepare()
    assert prepared.restart == ("valves",)
    assert "[[valve]]" in prepared.diff and 'name = "lpg-store"' in prepared.diff


def test_the_file_changed_on_disk_meanwhile_is_not_overwritten(config_path: Path) -> None:
    editor = ConfigEditor(config_path)
    editor.edit(lambda d: set_table(d, "site", fields("site", "name=Noodles")))
    other = config_path.read_text().replace("Example Noodle House", "Someone Else's Edit")
    config_path.write_text(other)
    with pytest.raises(ConfigEditError, match="changed on disk"):
        editor.prepare()
    assert config_path.read_text() == other
    assert editor.discard()
    assert not editor.staged


def test_uplink_settings_are_checked_and_need_a_restart(config_path: Path) -> None:
    editor = ConfigEditor(config_path)
    editor.edit(lambda d: remove_entry(d, "detector", "wok-2"))
    assert 'name = "wok-2"' not in editor.staged_text()
    # The uplink parsers of the running gasguard decide: a bad SMS number is refused.
    with pytest.raises(ConfigEditError) as err:
        editor.edit(
            lambda d: set_table(
                d, "uplink.sms", fields("uplink.sms", "port=/dev/ttyUSB2 numbers=12-34")
            )
        )
    assert any("uplink.sms.numbers" in p for p in err.value.problems), err.value.problems
    assert "[uplink.sms]" not in editor.staged_text()
    editor.edit(
        lambda d: set_table(
            d, "uplink.sms", fields("uplink.sms", "port=/dev/ttyUSB2 numbers=+8613800000000")
        )
    )
    editor.edit(
        lambda d: set_table(d, "uplink.mqtt", fields("uplink.mqtt", "host=mqtt.city.example"))
    )
    prepared = editor.prepare()
    assert prepared.restart == ("uplink",)
    sms = uplink_config(prepared.config).sms
    assert sms is not None
    assert sms.numbers == ("+8613800000000",)


def test_stale_temporaries_of_a_killed_apply_are_cleared(config_path: Path) -> None:
    stale = config_path.with_name(f".{config_path.name}.new.99999.tmp")
    stale.write_text("half a file")
    editor = ConfigEditor(config_path)
    editor.edit(lambda d: set_entry(d, "detector", "wok-1", fields("detector", "low_lel=16")))
    editor.commit(editor.prepare())
    assert not stale.exists()
    assert load_config(config_path).detectors[0].low_lel == 16


APPLY_LOOP = """
import sys
from pathlib import Path
from gateway.console.configedit import ConfigEditor, parse_assignments, set_entry

import re as _re

path = Path(sys.argv[1])
mode = sys.argv[2]
print("ready", flush=True)
# Start from the value on disk, so every run writes values the runs before it did not end on.
i = int(_re.search(r"low_lel = (\\d+)", path.read_text()).group(1))
applied = False
while True:
    value = 1 + i % 19
    i += 1
    editor = ConfigEditor(path)
    text = editor.current_text()
    if mode == "editor":
        fields = parse_assignments("detector", [f"low_lel={value}"])
        try:
            editor.edit(lambda d: set_entry(d, "detector", "wok-1", fields))
            editor.commit(editor.prepare())
        except Exception as e:  # the same value again: nothing staged
            if "nothing staged" not in str(e):
                raise
    else:  # the write itself, back to back: most kills land inside it
        from gateway.console.configedit import atomic_write
        import re
        new = re.sub(r"low_lel = \\d+", f"low_lel = {value}", text, count=1)
        atomic_write(path, new, keep_previous=True)
    if not applied:
        applied = True
        print("applied", flush=True)
"""


def whole_version(text: str, original: str) -> bool:
    """``text`` is the original with only wok-1's low_lel changed to a whole number."""
    match = re.search(r"low_lel = (\d+)", text)
    return match is not None and text.replace(match.group(0), "low_lel = 20", 1) == original


@pytest.mark.parametrize("mode", ["editor", "write"])
def test_apply_killed_at_random_points_leaves_old_or_new(config_path: Path, mode: str) -> None:
    original = config_path.read_text()
    rng = random.Random(f"sigkill-{mode}")
    seen: set[str] = set()
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", APPLY_LOOP, str(config_path), mode],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        # Kill at a random point after at least one apply went through (a loaded machine may
        # otherwise never get that far, and the test would prove nothing).
        assert proc.stdout.readline() == b"applied\n"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        text = config_path.read_text()
        assert whole_version(text, original), text[:400]
        load_config(config_path)  # valid, not just whole
        prev = previous_path(config_path)
        if prev.exists():
            assert whole_version(prev.read_text(), original)
        seen.add(re.search(r"low_lel = (\d+)", text).group(1))  # type: ignore[union-attr]
    assert len(seen) > 1, "the killed process never got to apply anything"
    # The next apply works and clears what the kills left behind.
    editor = ConfigEditor(config_path)
    value = 7 if "low_lel = 7" not in config_path.read_text() else 8
    editor.edit(lambda d: set_entry(d, "detector", "wok-1", fields("detector", f"low_lel={value}")))
    editor.commit(editor.prepare())
    assert load_config(config_path).detectors[0].low_lel == value
    assert not list(config_path.parent.glob(".*.tmp"))


def test_atomic_write_without_previous_keeps_prev_untouched(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    atomic_write(path, "a = 1\n", keep_previous=True)
    assert not previous_path(path).exists()
    atomic_write(path, "a = 2\n", keep_previous=True)
    assert previous_path(path).read_text() == "a = 1\n"
    atomic_write(path, "a = 3\n", keep_previous=False)
    assert previous_path(path).read_text() == "a = 1\n"
    assert path.read_text() == "a = 3\n"


def test_atomic_write_after_a_kill_between_the_two_renames_leaves_no_temporary(
    tmp_path: Path,
) -> None:
    # A kill after NAME.prev was linked to NAME but before the new file was renamed in leaves
    # the two names on one inode; rename(2) between two links of one file does nothing.
    path = tmp_path / "f.toml"
    path.write_text("a = 1\n")
    os.link(path, previous_path(path))
    atomic_write(path, "a = 2\n", keep_previous=True)
    assert path.read_text() == "a = 2\n"
    assert previous_path(path).read_text() == "a = 1\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_technician_records_a_calibration_date_and_it_is_stored_in_the_config(
    config_path: Path,
) -> None:
    editor = ConfigEditor(config_path)
    message, problems = editor.edit(
        lambda d: set_entry(
            d, "detector", "wok-1", fields("detector", "installed=2025-03-01 calibrated=today")
        )
    )
    assert problems == [] and "calibrated" in message
    prepared = editor.prepare()
    assert prepared.restart == ()  # applied by a reload, no restart
    editor.commit(prepared)
    wok1 = load_config(config_path).detectors[0]
    assert wok1.installed == datetime.date(2025, 3, 1)
    assert wok1.calibrated == datetime.date.today()
    with pytest.raises(ConfigEditError, match="must be a date YYYY-MM-DD or 'today'"):
        parse_assignments("detector", ["calibrated=1/3/2025"])
    # A date in the future is refused by the config's own check, naming the key and range.
    with pytest.raises(ConfigEditError) as err:
        editor.edit(
            lambda d: set_entry(d, "detector", "wok-1", fields("detector", "calibrated=2099-01-01"))
        )
    assert any("detector[0].calibrated" in p and "from 2000-01-01" in p for p in err.value.problems)
