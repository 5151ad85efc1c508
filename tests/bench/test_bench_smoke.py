"""Smoke test of the benchmarks (``python -m bench``): each one runs its real machinery with
tiny sizes (``--quick``) against emulated detectors in another process, and its output must be
comment lines and ``name: value unit`` figure lines that parse. No speed assertions: the
checks are on what the figures must satisfy whatever the machine's speed (a master cannot beat
the wire, a valve must not close before the alarm is confirmed, ...)."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from bench import Figure, median, parse_figures, percentile
from bench.__main__ import BENCHMARKS, QUICK, main, run_benchmarks
from bench.plots import DEFAULT_DIR, POLL_PNG, REACTION_PNG, write_plots
from bench.poll import SETTINGS, poll_floor_s
from gateway.profiles import Profile

Figures = dict[str, tuple[float, str]]


def run_quick(
    name: str, capsys: pytest.CaptureFixture[str], plots: Path | None = None
) -> Figures:
    status = main([name, "--quick", *(["--plots", str(plots)] if plots else [])])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.splitlines()
    assert lines, "the benchmark printed nothing"
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("# "), f"figure without comment: {line!r}"
    return parse_figures(captured.out)


def value(figures: Figures, name: str, unit: str) -> float:
    assert name in figures, f"{name} missing from {sorted(figures)}"
    got, got_unit = figures[name]
    assert got_unit == unit, f"{name} is in {got_unit!r}, expected {unit!r}"
    return got


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its IHDR chunk (which must come first)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def committed_plots() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in DEFAULT_DIR.glob("bench-*.png")}


# -- output format ----------------------------------------------------------------------------


def test_a_figure_prints_as_a_comment_and_a_line_that_parses_back() -> None:
    fig = Figure("reaction_p99", 2.3456, "ms", "what it means [target <= 5 ms]", decimals=3)
    assert fig.lines() == "# what it means [target <= 5 ms]\nreaction_p99: 2.346 ms\n"
    assert parse_figures(fig.lines() + "\n") == {"reaction_p99": (2.346, "ms")}


@pytest.mark.parametrize(
    "text",
    [
        "poll cycle: 1.0 ms",  # space in the name
        "poll_cycle: 1.0",  # no unit
        "poll_cycle: fast ms",  # not a number
        "poll_cycle: nan ms",  # not finite
        "poll_cycle: 1.0 ms extra",
        "poll_cycle: 1.0 ms\npoll_cycle: 2.0 ms",  # twice
    ],
)
def test_malformed_output_is_refused_naming_the_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"line [23] '"):
        parse_figures("# a comment\n" + text)


def test_a_figure_refuses_a_bad_name_unit_or_value() -> None:
    with pytest.raises(ValueError, match="name"):
        Figure("1st", 1.0, "ms", "m")
    with pytest.raises(ValueError, match="unit"):
        Figure("a", 1.0, "m s", "m")
    with pytest.raises(ValueError, match="finite"):
        Figure("a", float("inf"), "ms", "m")


def test_percentile_is_nearest_rank_and_median_interpolates() -> None:
    values = [float(v) for v in range(500, 0, -1)]
    assert percentile(values, 99) == 495.0
    assert percentile(values, 100) == 500.0
    assert percentile([7.0], 99) == 7.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError, match="at least one"):
        percentile([], 99)
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 0)


# -- (a) poll-cycle floor and run ----------------------------------------------------------------


def test_poll_floor_matches_the_domain_notes(profiles: dict[str, Profile]) -> None:
    # Modbus over serial line: one 2-register poll, frames + two t3.5, no turnaround.
    generic = profiles["generic-cn-kitchen"]
    assert poll_floor_s(generic, 9600, "N", 1, 0.0) == pytest.approx(0.0250, abs=5e-5)
    assert poll_floor_s(generic, 9600, "E", 1, 0.0) == pytest.approx(0.0275, abs=5e-5)
    assert poll_floor_s(generic, 19200, "E", 1, 0.0) == pytest.approx(0.01375, abs=5e-5)
    # The XCD reads 9 registers (2..10): a 23-byte reply; the turnaround comes on top.
    xcd = profiles["honeywell-sensepoint-xcd"]
    expected = ((8 + 23) * 11 + 2 * 3.5 * 11) / 19200 + 0.001
    assert poll_floor_s(xcd, 19200, "E", 1, 0.001) == pytest.approx(expected, rel=1e-9)


def test_poll_benchmark_runs_and_no_master_beats_the_wire(
    capsys: pytest.CaptureFixture[str], profiles: dict[str, Profile], tmp_path: Path
) -> None:
    figures = run_quick("poll", capsys, plots=tmp_path)
    # It kept every cycle it measured, and drew them.
    assert png_size(tmp_path / POLL_PNG) >= (400, 300)
    detectors = QUICK["poll"]["detectors"]
    for s in SETTINGS:
        t = s.tag
        floor = detectors * poll_floor_s(profiles[s.profile], s.baud, s.parity, s.stop_bits, 0.001)
        assert value(figures, f"poll_floor_{t}", "ms") == pytest.approx(floor * 1000, abs=0.01)
        assert value(figures, f"poll_comm_failures_{t}", "polls") == 0
        # The emulator paces every frame at the line's speed: a cycle shorter than the floor
        # would mean the pacing or the floor is wrong, and every ratio with it.
        assert value(figures, f"poll_cycle_ratio_{t}", "x") >= 0.99
        assert value(figures, f"poll_baseline_ratio_{t}", "x") >= 0.99
        ratio = value(figures, f"poll_cycle_ratio_{t}", "x")
        assert value(figures, f"poll_cycle_{t}", "ms") == pytest.approx(ratio * floor * 1000, 0.01)
        # DetectorBus waits t3.5 (of 11-bit characters) after every reply. The emulator stamps
        # a reply's end just after writing it, which lags a little (and the single shortest gap
        # may lag a lot): hence the median and 0.8, far above what a master without the wait
        # leaves (pymodbus: 0.5 ms, 0.25 x t3.5 at 19200 8E1).
        assert value(figures, f"poll_gap_median_t35_ratio_{t}", "x") >= 0.8
        value(figures, f"poll_min_gap_t35_ratio_{t}", "x")
        for name in (f"poll_baseline_cycle_{t}", f"poll_min_gap_{t}"):
            assert value(figures, name, "ms") > 0
        value(figures, f"poll_vs_baseline_{t}", "x")
        value(figures, f"poll_baseline_min_gap_t35_ratio_{t}", "x")


# -- (b) reaction ----------------------------------------------------------------------------


def test_reaction_benchmark_runs_and_the_valve_waits_for_the_confirming_reading(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = run_quick("reaction", capsys)
    assert value(figures, "reaction_trials", "trials") == QUICK["reaction"]["trials"]
    reaction = value(figures, "reaction_median", "ms")
    from_first = value(figures, "reaction_from_first_alarm_median", "ms")
    # Two readings confirm an alarm: the valve closes after the second alarm reply, one poll
    # period (30 ms) after the first, never on the first one alone.
    assert from_first - reaction >= 15.0
    value(figures, "reaction_p99", "ms")
    value(figures, "reaction_max", "ms")
    # Not asserted positive: under load the emulator's reply stamp (taken after its write
    # returns) can lag the master's read by more than the read takes.
    value(figures, "reaction_serial_baseline_median", "ms")
    value(figures, "reaction_serial_baseline_p99", "ms")
    value(figures, "reaction_out_of_order", "trials")


def test_flooded_reaction_benchmark_runs_with_both_uplinks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    figures = run_quick("reaction_flooded", capsys, plots=tmp_path)
    assert png_size(tmp_path / REACTION_PNG) >= (400, 300)
    # Without real-time priority always; with it too where SCHED_FIFO is permitted (root, CI).
    tags = ["nort"] + (["rt"] if os.geteuid() == 0 else [])
    for tag in tags:
        idle = value(figures, f"reaction_idle_p99_{tag}", "ms")
        flooded = value(figures, f"reaction_flooded_p99_{tag}", "ms")
        assert idle > 0 and flooded > 0
        # Printed with 2 decimals, from inputs printed with 3.
        ratio = value(figures, f"reaction_flooded_ratio_{tag}", "x")
        assert ratio == pytest.approx(flooded / idle, rel=0.02, abs=0.01)
        value(figures, f"reaction_flooded_median_{tag}", "ms")


def test_mqtt_benchmark_measures_the_ack_and_the_status_behind_each_alarm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = run_quick("uplink_mqtt", capsys)
    for name in ("mqtt_alarm_ack", "mqtt_alarm_status"):
        mid = value(figures, f"{name}_median", "ms")
        p99 = value(figures, f"{name}_p99", "ms")
        assert 0 < mid <= p99  # each status was matched to its own alarm, after it was raised
    assert value(figures, "mqtt_replay_rate", "events/s") > 0


def test_city_benchmark_loses_nothing_and_stores_nothing_twice_under_each_fault(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = run_quick("city", capsys)
    storm = QUICK["city"]["storm"]
    for name in ("clean", "worker_killed", "postgres_restarted", "broker_down"):
        assert value(figures, f"city_{name}_lost", "alarms") == 0, name
        assert value(figures, f"city_{name}_duplicates", "rows") == 0, name
        # Every alarm reached the page, whatever failed on the way.
        assert value(figures, f"city_{name}_on_page", "alarms") == storm, name
        assert 0 < value(figures, f"city_{name}_stored_p50", "ms") <= value(
            figures, f"city_{name}_stored_p99", "ms"
        )
    assert value(figures, "city_pg_rows_per_alarm", "rows") >= 3  # event, incident, its step


def test_leak_to_valve_benchmark_compares_confirming_at_once_with_a_cycle_later(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = run_quick("leak_to_valve", capsys)
    # Not speed: the schedule. A cycle later, the confirming reading comes one whole period
    # (0.5 s) after the first alarming one, so no leak closes the valve sooner than that.
    assert value(figures, "leak_valve_median_next_cycle", "ms") >= 500.0
    assert value(figures, "leak_valve_median_at_once", "ms") < value(
        figures, "leak_valve_median_next_cycle", "ms"
    )
    assert value(figures, "leak_valve_p99_gain", "x") > 1.0
    for tag in ("at_once", "next_cycle"):
        assert value(figures, f"leak_valve_cycle_{tag}", "ms") > 0
        value(figures, f"leak_valve_ratio_{tag}", "x")
        value(figures, f"leak_valve_p99_{tag}", "ms")


# -- (c) resources, (d) cold start ----------------------------------------------------------------


def test_resources_benchmark_runs_against_a_polling_controller(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = run_quick("resources", capsys)
    rss = value(figures, "resources_rss", "MB")
    baseline = value(figures, "resources_import_rss_baseline", "MB")
    # The controller imported everything the baseline did, and then some.
    assert rss > baseline * 0.9 > 0
    assert value(figures, "resources_hwm", "MB") >= rss
    value(figures, "resources_rss_window_max", "MB")
    assert value(figures, "resources_cpu", "%") >= 0
    # 8 detectors every 0.5 s: 16 polls/s on a fixed-deadline schedule, never a burst above.
    assert 0 < value(figures, "resources_polls_per_s", "polls/s") <= 32
    assert value(figures, "resources_rss_vs_import", "x") == pytest.approx(rss / baseline, 0.05)
    # The split: the uplinks process is measured beside the safety process.
    assert value(figures, "resources_modules", "modules") > 0
    assert value(figures, "resources_python_rss_baseline", "MB") < baseline
    assert value(figures, "resources_uplinks_rss", "MB") > 0
    assert 0 < value(figures, "resources_pss", "MB") <= rss


def test_cold_start_benchmark_runs_and_its_two_clocks_agree(
    capsys: pytest.CaptureFixture[str],
) -> None:
    figures = run_quick("cold_start", capsys)
    ready = value(figures, "cold_start_ready", "s")
    inside = value(figures, "cold_start_first_poll_inside", "s")
    # first_poll_s starts inside Controller.start, after the spawn, imports and config load.
    assert 0 < inside < ready
    value(figures, "cold_start_ready_max", "s")
    assert value(figures, "cold_start_import_baseline", "s") > 0
    value(figures, "cold_start_vs_import", "x")


# -- the plots ------------------------------------------------------------------------------


def test_plots_need_samples_and_draw_only_what_was_measured(tmp_path: Path) -> None:
    no_samples = [
        Figure("reaction_idle_p99_rt", 0.5, "ms", "idle"),
        Figure("reaction_flooded_p99_rt", 0.6, "ms", "flooded"),
    ]
    assert write_plots(no_samples, tmp_path) == []
    reaction = [
        Figure("reaction_idle_p99_rt", 0.5, "ms", "idle", samples=(0.2, 0.3, 0.5)),
        Figure("reaction_flooded_p99_rt", 0.6, "ms", "flooded", samples=(0.2, 0.4, 0.6)),
    ]
    assert write_plots(reaction, tmp_path) == [tmp_path / REACTION_PNG]
    assert not (tmp_path / POLL_PNG).exists()
    png_size(tmp_path / REACTION_PNG)


def test_a_sample_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="reaction_p99: a sample is not a finite number"):
        Figure("reaction_p99", 1.0, "ms", "m", samples=(1.0, float("nan")))


def test_a_quick_run_leaves_the_committed_plots_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = committed_plots()
    assert set(before) == {POLL_PNG, REACTION_PNG}, "docs/img lacks the plots of a full run"
    run_quick("poll", capsys)
    assert committed_plots() == before


# -- the command ----------------------------------------------------------------------------


def test_an_unknown_benchmark_name_is_refused_naming_the_allowed_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["poll", "speed"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'speed'" in captured.err
    for name in BENCHMARKS:
        assert name in captured.err


def test_a_failing_benchmark_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(out: io.StringIO) -> list[Figure]:
        raise RuntimeError("emulator gone")

    def fine(out: io.StringIO) -> list[Figure]:
        out.write("# ok\nfine_figure: 1.00 x\n")
        return []

    monkeypatch.setitem(BENCHMARKS, "poll", lambda: broken)
    monkeypatch.setitem(BENCHMARKS, "reaction", lambda: fine)
    out, err = io.StringIO(), io.StringIO()
    assert run_benchmarks(["poll", "reaction"], False, out, err) == 1
    assert "bench poll failed: RuntimeError: emulator gone" in err.getvalue()
    assert parse_figures(out.getvalue()) == {"fine_figure": (1.0, "x")}


def test_socket_flood_runs_and_the_flooders_are_held_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["socket_flood", "--quick"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    figures = parse_figures(captured.out)
    for mode in ("idle", "uplink", "control"):
        assert value(figures, f"socket_flood_{mode}_reaction_p99", "ms") > 0
        assert value(figures, f"socket_flood_{mode}_peak_rss", "MB") > 0
    got = {
        line.split()[3]: line for line in captured.out.splitlines() if " flooder: sent " in line
    }
    # The allowed peer is rate-limited, the refused one is answered with a refusal only.
    assert " refused 0" not in got["uplink"], got
    assert " ok 0 " in got["control"], got
