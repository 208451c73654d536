"""Wu et al.'s defense end to end over real processes: a BadNets attacker (its own SuperNode
process) trains with the others, then the server runs ranking-vote pruning rounds
(``query.prune_activations``), asks the clients to report the accuracy of the candidate pruning
levels (``query.prune_evaluate``), adjusts extreme weights, fine-tunes one federated round on
the pruned model and adjusts again."""

from __future__ import annotations

import json

import pytest
import torch

from flbackdoor.results import read_metrics

from conftest import data_args, flbackdoor, requires_shared_data

pytestmark = [requires_shared_data, pytest.mark.e2e]


def test_ranking_vote_pruning_over_real_client_processes(tmp_path, cache_dir):
    run = tmp_path / "run"
    args = [*data_args(cache_dir), "num_clients=3",
            "clients_per_round=3", "num_rounds=1", "dataset.max_train_samples=3000",
            "server.eval_max_samples=2000", "attack=boosted", "attack.task=pixel_pattern",
            "attack.source_label=9", "attack.target_label=1", "attack.num_malicious=1",
            "attack.boost_factor=3", "pruning=ranking", "pruning.stop=client_reports",
            "pruning.step=5", "pruning.max_drop=0.05", "pruning.finetune_rounds=1",
            f"hydra.run.dir={run}"]
    res = flbackdoor(args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["train", "prune", "adjust", "finetune", "adjust"]
    prune, adjust, finetune, readjust = rows[1:]
    assert prune["num_voters"] == 3  # every node answered the pruning query
    assert sorted(prune["order"]) == list(range(50))
    n = prune["neurons_pruned"]
    assert 0 < n < 50 and n % 5 == 0, prune  # a tested level (step 5), not all channels
    assert len(prune["stop_curve"]) == 10  # levels 0, 5, ..., 45 reported by the clients
    assert adjust["weights_zeroed"] > 0 and readjust["weights_zeroed"] > 0
    for row in rows[1:]:
        assert {"main_accuracy", "backdoor_accuracy", "neurons_pruned",
                "weights_zeroed"} <= set(row)
        assert row["neurons_pruned"] == n
    assert finetune["num_clients"] == 3 and finetune["num_malicious"] == 1

    # The mask is saved with the model: exactly the first n channels of the order are off,
    # and the fine-tuning round (the attacker included) did not move it.
    saved = torch.load(run / "pruned.pt", weights_only=True)
    mask = saved["model"]["channel_mask"]
    assert sorted(torch.nonzero(mask == 0).flatten().tolist()) == sorted(prune["order"][:n])
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert saved["pruning"]["neurons_pruned"] == n
    # ... and the last conv's zeroed weights are still zero after the final adjustment.
    weights = [v for k, v in saved["model"].items() if k.startswith("features.") and v.dim() == 4]
    assert int((weights[-1][mask > 0] == 0).sum()) >= readjust["weights_zeroed"]

    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["phases"]) == {"train", "prune", "adjust", "finetune", "finetune_adjust"}
    assert summary["phases"]["prune"]["neurons_pruned"] == n
    assert summary["phases"]["finetune_adjust"]["weights_zeroed"] == readjust["weights_zeroed"]
    assert summary["rounds"] == 1  # training rounds only
