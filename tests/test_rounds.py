"""One whole round (``RoundRunner.run``) over a fake Grid: sampling, hints to the attackers,
validation, the updates computed once, the defense's aggregate and flagged set, the silent
node, and the metrics row, without a subprocess."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from defenses.base import build_defense
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig, validate
from server.nodes import Membership, Node
from conftest import FakeGrid
from server.rounds import RoundRunner

pytestmark = pytest.mark.usefixtures("run_identity")


def test_a_whole_round_with_a_silent_node_a_bad_reply_and_a_flagged_attacker():
    cfg = validate(ExperimentConfig(
        num_clients=6, clients_per_round=6,
        attack={"name": "boosted", "num_malicious": 1, "schedule": "random"},
        defense={"name": "multikrum", "num_malicious": 1, "num_nodes_to_select": 3}))
    cfg.server.round_timeout_s, cfg.server.poll_interval_s = 1.0, 0.01
    nodes = {p: Node(100 + p, p, "malicious" if p == 5 else "benign", 10 * (p + 1))
             for p in range(6)}
    w = {"x": torch.zeros(4)}
    deltas = {0: [0.1, 0.0, 0.0, 0.0], 1: [0.0, 0.1, 0.0, 0.0], 2: [0.1, 0.1, 0.0, 0.0],
              5: [9.0, 9.0, 9.0, 9.0]}
    hints = {}

    def respond(node_id, msg):
        p = node_id - 100
        if p == 4:
            return None  # silent
        config = msg.content[P.CONFIG]
        if P.ATTACK_ROUND_EXAMPLES in config:
            hints[p] = dict(config)
        if p == 3:  # a NaN update: rejected before anything sees it
            arrays = {"x": torch.tensor([float("nan")] * 4)}
        else:
            arrays = {"x": torch.tensor(deltas[p])}
        return RecordDict({P.ARRAYS: ArrayRecord(arrays), P.METRICS: MetricRecord(
            {P.NUM_EXAMPLES: 10 * (p + 1), P.TRAIN_LOSS: float(p)})})

    grid = FakeGrid([n.node_id for n in nodes.values()], respond)
    members = Membership(grid, dict(nodes), 6, 1.0, 0.01)
    evaluate = lambda state: {"main_accuracy": float(state["x"].sum()), "main_loss": 0.0}  # noqa: E731
    runner = RoundRunner(grid, cfg, members, evaluate)
    arrays, row = runner.run(1, ArrayRecord(w), build_defense(cfg))

    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [100 + p for p in range(6)]
    assert list(hints) == [5] and hints[5][P.ATTACK_ROUND_EXAMPLES] == sum(
        10 * (p + 1) for p in range(6)) and hints[5][P.ATTACK_NUM_ATTACKERS] == 1
    assert [r["partition"] for r in row["rejected_updates"]] == [3]
    assert "non-finite" in row["rejected_updates"][0]["reason"]
    assert row["missing_nodes"] == 1 and 4 in members.silent
    assert (row["num_clients"], row["num_sampled"], row["num_malicious"]) == (4, 6, 1)
    # Multi-Krum (f = 1, m = 3) keeps the three benign updates, flags the attacker.
    assert row["flagged"] == [5]
    assert (row["detection_precision"], row["detection_recall"], row["detection_fpr"]) == (
        1.0, 1.0, 0.0)
    kept = [0, 1, 2]
    n = np.array([10.0 * (p + 1) for p in kept])
    expected = sum(wk / n.sum() * np.array(deltas[p]) for wk, p in zip(n, kept))
    assert np.allclose(arrays.to_torch_state_dict()["x"].numpy(), expected)
    assert row["train_loss"] == pytest.approx(
        sum(10 * (p + 1) * p for p in (0, 1, 2, 5)) / sum(10 * (p + 1) for p in (0, 1, 2, 5)))
    assert row["max_malicious_norm"] == pytest.approx(18.0)

    # The silent partition is not planned again until a node reclaims it.
    grid.sent.clear()
    runner.run(2, arrays, build_defense(cfg))
    assert 104 not in [m.metadata.dst_node_id for m in grid.sent]
