"""The safety process's own core: which cores each process takes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.appliance.cpus import cpus_for


@pytest.mark.parametrize(
    ("online", "safety", "others"),
    [
        ([0, 1, 2, 3], {3}, {0, 1, 2}),  # every supported Pi
        ([0, 1], {1}, {0}),
        ([2, 5], {5}, {2}),  # whatever cores this process may use
        ([0], None, None),  # one core: nothing to choose, nothing changes
    ],
)
def test_the_safety_process_takes_the_last_core_and_the_uplinks_the_others(
    online: list[int], safety: set[int] | None, others: set[int] | None
) -> None:
    assert cpus_for("safety", online) == safety
    assert cpus_for("others", online) == others
    assert cpus_for("everything", online) is None


def test_a_process_pins_itself_from_the_environment() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs a machine with at least two cores (CI has two)")
    code = (
        "import os; from gateway.appliance.cpus import apply_from_env; "
        "print(sorted(apply_from_env() or []), sorted(os.sched_getaffinity(0)))"
    )
    for choice in ("safety", "others"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "GASGUARD_CPUS": choice},
            capture_output=True,
            text=True,
            check=True,
        )
        applied, now = done.stdout.split("] [")
        assert applied.strip("[") == now.strip("]\n")
        expected = cpus_for(choice)
        assert expected is not None and now.strip("]\n") == ", ".join(map(str, sorted(expected)))
