"""ABL end to end on the real MNIST: the centralized single-model run (no federation) and the
client-side defense in a federation of real SuperNode processes."""

from __future__ import annotations

import json

import pytest

from flbackdoor.results import read_metrics

from conftest import data_args, flbackdoor, requires_shared_data

pytestmark = [requires_shared_data, pytest.mark.e2e]


def test_centralized_abl_isolates_mostly_poisoned_examples(tmp_path, cache_dir):
    res = flbackdoor([*data_args(cache_dir),
                      "experiment=abl2021_centralized_badnets", "dataset.max_train_samples=5000",
                      "num_rounds=4", "server.eval_max_samples=500", f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["lga", "lga", "lga", "gga"]
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and all(r["phase"] == "train" for r in rows)
    assert all({"main_accuracy", "backdoor_accuracy"} <= set(r) for r in rows)
    assert "isolation_precision" not in rows[2]
    assert rows[3]["isolated_count"] == 50  # 1% of 5,000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_poisoned"] == 500
    assert summary["isolation"]["isolation_precision"] > 0.8, summary["isolation"]
    assert summary["isolation"]["mean_loss_poisoned"] < summary["isolation"]["mean_loss_clean"]
    assert rows[2]["backdoor_accuracy"] > 0.9, rows  # learned during LGA ...
    assert rows[3]["backdoor_accuracy"] < 0.3, rows  # ... and unlearned by GGA
    assert rows[3]["main_accuracy"] > 0.85, rows


def test_federated_client_side_abl_over_real_processes(tmp_path, cache_dir):
    res = flbackdoor([*data_args(cache_dir),
                      "experiment=abl2021_federated_badnets", "federation=local", "num_clients=3",
                      "clients_per_round=3", "num_rounds=2", "client_defense.lga_rounds=1",
                      "poisoning.num_clients=1", "dataset.max_train_samples=2000",
                      "server.eval_max_samples=1000", f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    summary = json.loads((tmp_path / "summary.json").read_text())
    (poisoned,) = summary["roles"]["poisoned"]
    assert len(list((tmp_path / "logs").glob("supernode-*.log"))) == 3
    # Round 1: LGA, nothing isolated yet; round 2: every client isolated 5% of its ~667 images.
    assert rows[0]["isolated_count"] == 0 and rows[0]["isolation_precision"] is None
    assert rows[1]["isolated_count"] == 3 * 33 and rows[1]["poisoned_clients"] == 1
    # Precision is over the poisoned client's own 33 isolated examples only (a whole number of
    # hits out of 33), not diluted by the clean clients' 66. One LGA round on 667 images is too
    # short to beat chance here (3/33 measured); the preset's figures are in REPRODUCTION.md.
    hits = rows[1]["isolation_precision"] * 33
    assert hits == pytest.approx(round(hits)) and 0 < round(hits) <= 33, rows[1]
    assert all("backdoor_accuracy" in r and r["main_accuracy"] > 0.5 for r in rows), rows
    assert poisoned in range(3)


def test_federated_abl_on_the_poisoned_clients_only(tmp_path, cache_dir):
    """The oracle bound (client_defense.clients=poisoned): the clean nodes train plainly yet
    report the same metric keys, which Flower needs to aggregate the round."""
    res = flbackdoor([*data_args(cache_dir),
                      "experiment=abl2021_federated_badnets", "num_clients=3",
                      "clients_per_round=3", "num_rounds=2", "client_defense.lga_rounds=1",
                      "client_defense.clients=poisoned", "poisoning.num_clients=1",
                      "dataset.max_train_samples=2000", "server.eval_max_samples=1000",
                      f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["isolated_count"] == 0
    assert rows[1]["isolated_count"] == 33 and rows[1]["poisoned_clients"] == 1
