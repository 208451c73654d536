"""The newer attacks from real malicious SuperNode processes (local deployment): what the
testbed's side channel hands an attacker crosses the process boundary, and the attack acts."""

from __future__ import annotations

import json

import pytest

from flbackdoor.results import read_metrics

from conftest import data_args, flbackdoor, node_log, requires_shared_data

pytestmark = [requires_shared_data, pytest.mark.e2e]


def run(tmp_path, cache_dir, *extra):
    args = [*data_args(cache_dir), "num_clients=4", "clients_per_round=4",
            "dataset.max_train_samples=4000", "server.eval_max_samples=1000",
            "attack.num_malicious=1", "attack.schedule=random", f"hydra.run.dir={tmp_path}",
            *extra]
    res = flbackdoor(args, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (attacker,) = summary["roles"]["malicious"]
    log = node_log(tmp_path, attacker)
    return read_metrics(tmp_path / "metrics.jsonl"), summary, log


def test_neurotoxin_from_a_malicious_process_gets_the_last_global_update(tmp_path, cache_dir):
    rows, summary, log = run(tmp_path, cache_dir, "num_rounds=3", "attack=neurotoxin",
                             "attack.task=pixel_pattern", "attack.source_label=9",
                             "attack.target_label=0", "attack.norm_bound=10")
    assert [r["num_malicious"] for r in rows] == [1, 1, 1]
    # Round 1 has no last global update (the attacker falls back on its own, and says so);
    # rounds 2 and 3 got w_t - w_{t-1} from the server in their train message.
    assert log.count("no last global update") == 1, log[-3000:]
    assert log.count("Receiving: train message") == 3
    assert all(r["max_malicious_norm"] <= 10 * (1 + 1e-4) for r in rows), rows
    assert rows[-1]["backdoor_accuracy"] > 0.5, rows


def test_ipm_from_a_malicious_process_reads_the_rounds_benign_updates(tmp_path, cache_dir):
    # epsilon = 4 against plain FedAvg with 3 benign nodes: the average steps by
    # (3 - 4) / 4 = -1/4 of the benign mean, backwards, every round (Xie et al., section 4).
    rows, summary, log = run(tmp_path, cache_dir, "num_rounds=2", "attack=ipm",
                             "attack.epsilon=4")
    assert [r["num_malicious"] for r in rows] == [1, 1]
    # The attacker was asked once the benign replies were in, and got them: it never fell back
    # on its own honest update.
    assert log.count("Receiving: train message") == 2
    assert "no benign update reached" not in log, log[-3000:]
    # Its update is 4 times the mean of three benign updates: between 4/3 and 4 times the
    # largest benign norm, far above the benign ones.
    assert all(r["max_malicious_norm"] > 1.2 * r["benign_norm_p90"] for r in rows), rows
    assert rows[-1]["main_accuracy"] < 0.3, rows  # honest training gets > 0.8 in 2 rounds
    assert "backdoor_accuracy" not in rows[-1]
