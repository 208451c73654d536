"""docs/EXTENDING.md's recipes, followed as a user would: a defense and an attack, each one new
module plus one new YAML in a copy of the project, nothing else edited, run in a short real
simulation. The names exist only in the copy, so a run that completes used them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA, project_copy, requires_shared_data
from flbackdoor.results import read_metrics

pytestmark = [requires_shared_data, pytest.mark.e2e]

DOC = (REPO / "docs" / "EXTENDING.md").read_text()


def recipe(path: str) -> str:
    """The code block that EXTENDING.md puts under the heading line naming ``path``."""
    match = re.search(rf"`{re.escape(path)}`:\n\n```(?:python|yaml)\n(.*?)```", DOC, re.S)
    assert match, f"docs/EXTENDING.md has no block for {path}"
    return match.group(1)


def test_a_new_defense_and_a_new_attack_are_one_module_and_one_yaml_each(tmp_path, cache_dir):
    copy = project_copy(tmp_path / "project")
    new = ["defenses/keep_first.py", "conf/defense/keep_first.yaml", "attacker/amplify.py",
           "conf/attack/amplify.yaml"]
    for path in new:
        assert not (copy / path).exists()
        (copy / path).write_text(recipe(path))
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "launcher.cli", f"data.root={SHARED_DATA}",
         f"data.cache_dir={cache_dir}", "federation=simulation", "num_clients=4",
         "clients_per_round=4", "num_rounds=2", "dataset.max_train_samples=2000",
         "server.eval_max_samples=500", "defense=keep_first", "attack=amplify",
         "attack.scale=4", f"hydra.run.dir={run}"],
        cwd=copy, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = read_metrics(run / "metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    (attacker,) = summary["roles"]["malicious"]
    assert summary["config"]["attack"] == {**summary["config"]["attack"], "name": "amplify",
                                           "scale": 4.0}
    for row in rows:
        # The attack acted: its update is the honest one scaled by 4.
        assert row["num_malicious"] == 1 and row["max_malicious_norm"] > 2 * row["benign_norm_p90"]
        # The defense acted: it kept partition 0 alone and flagged everyone else.
        assert row["flagged"] == [1, 2, 3] and row["kept_partition"] == 0
        assert row["detection_recall"] == (1.0 if attacker != 0 else 0.0)
    assert summary["detection"]["rounds"] == 2
