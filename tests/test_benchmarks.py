"""Every benchmark once, in its quick mode, so none of them rots. Figures are not judged here
(speed goals are met in the benchmarks themselves, docs/BENCHMARKS.md); a run must finish and
print its figure, a finite positive number, last."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from conftest import REPO, requires_shared_data

pytestmark = [requires_shared_data, pytest.mark.e2e]

FIGURES = {
    "simulation_round.py": r"simulation round \(training wave\) / floor \(sun\): ([0-9.]+)$",
    "deployment_round.py": r"deployment round overhead: 3 nodes warm (-?[0-9.]+) s$",
    "idle_nodes.py": r"idle federation CPU: poll 3.0 s ([0-9.]+)%, poll 0.25 s ([0-9.]+)%$",
    "cold_start.py": r"ClientApp cold start ([0-9.]+) s; partition load ([0-9.]+) ms",
    "parallel_sweep.py": r"parallel sweep speed-up \(sequential / parallel wall time\): ([0-9.]+)$",
    "compute_slots.py": r"CPU a task, all at once / through the slots: ([0-9.]+)$",
}


@pytest.mark.parametrize("script", sorted(FIGURES))
def test_benchmark_runs_in_quick_mode_and_prints_its_figure(script):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    found = re.search(FIGURES[script], last)
    assert found, last
    for value in map(float, found.groups()):
        assert math.isfinite(value) and value > 0, last
