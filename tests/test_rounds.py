"""One whole round (``RoundRunner.run``) over a fake Grid: sampling, hints to the attackers,
validation, the updates computed once, the defense's aggregate and flagged set, the silent
node, and the metrics row, without a subprocess."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

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

    # The silent partition's node is asked whether it is alive before round 2; still silent,
    # it gets no training message.
    grid.sent.clear()
    runner.run(2, arrays, build_defense(cfg))
    asked = [(m.metadata.dst_node_id, m.metadata.message_type) for m in grid.sent]
    assert (104, P.IDENTIFY) in asked and (104, P.TRAIN) not in asked


def _claims_round(policy: str, claimed: float, sizes=(100, 100, 100)):
    """Three benign nodes, partition sizes ``sizes`` as the server computed them; node 2 claims
    ``claimed`` examples at identify and in its reply. Returns the round's row and new model."""
    cfg = validate(ExperimentConfig(num_clients=3, clients_per_round=3))
    cfg.server.round_timeout_s, cfg.server.poll_interval_s = 1.0, 0.01
    cfg.server.num_examples = policy
    nodes = {p: Node(100 + p, p, "benign", int(claimed) if p == 2 else sizes[p])
             for p in range(3)}
    deltas = {0: 0.0, 1: 0.0, 2: 1.0}

    def respond(node_id, msg):
        p = node_id - 100
        n = claimed if p == 2 else sizes[p]
        return RecordDict({P.ARRAYS: ArrayRecord({"x": torch.full((2,), deltas[p])}),
                           P.METRICS: MetricRecord({P.NUM_EXAMPLES: n, P.TRAIN_LOSS: 0.5})})

    grid = FakeGrid([n.node_id for n in nodes.values()], respond)
    members = Membership(grid, dict(nodes), 3, 1.0, 0.01, sizes=list(sizes))
    evaluate = lambda state: {"main_accuracy": 0.0, "main_loss": 0.0}  # noqa: E731
    arrays, row = RoundRunner(grid, cfg, members, evaluate).run(
        1, ArrayRecord({"x": torch.zeros(2)}), build_defense(cfg))
    return row, float(arrays.to_torch_state_dict()["x"][0])


def test_a_node_claiming_a_million_examples_does_not_take_the_weight():
    """server.num_examples: ``known`` rejects a count above the partition's size (the server
    computed it) and weights by that size; ``cap`` caps; ``trust`` is the attack surface."""
    row, x = _claims_round("known", 1e6)
    assert [r["partition"] for r in row["rejected_updates"]] == [2]
    assert "num-examples=1000000.0 outside 1..100" in row["rejected_updates"][0]["reason"]
    assert x == 0.0 and row["num_clients"] == 2
    row, x = _claims_round("known", 60)  # an honest smaller count: weight = its partition size
    assert not row["rejected_updates"] and x == pytest.approx(1 / 3)
    row, x = _claims_round("cap", 1e6)
    assert not row["rejected_updates"] and x == pytest.approx(1 / 3)
    row, x = _claims_round("trust", 1e6)
    assert x == pytest.approx(1e6 / (1e6 + 200))


def test_the_known_sizes_replace_what_nodes_claim_at_identify():
    members = Membership(FakeGrid([], None), {2: Node(102, 2, "benign", 5)}, 3, 1.0, 0.01,
                         sizes=[100, 100, 300])
    assert members.nodes[2].num_examples == 300


def _identity(node_id, partition, role="benign"):
    return RecordDict({P.NODE: ConfigRecord({P.PARTITION_ID: partition, P.ROLE: role,
                                             P.NUM_EXAMPLES: 10})})


def _membership(answers):
    """Three partitions held by nodes 100-102; ``answers(node_id, msg)`` decides every reply."""
    nodes = {p: Node(100 + p, p, "benign", 10) for p in range(3)}
    grid = FakeGrid([n.node_id for n in nodes.values()], answers)
    return grid, Membership(grid, nodes, 3, 1.0, 0.01, ping_timeout=0.2)


def test_a_late_but_live_node_returns_to_sampling_when_it_answers_again():
    grid, members = _membership(lambda node_id, msg: _identity(node_id, node_id - 100))
    members.mark_silent([101])
    assert 1 not in members.live()
    members.refresh()  # node 101 is still connected: asked, it answers
    assert 1 in members.live() and members.nodes[1].node_id == 101


def test_a_live_nodes_partition_cannot_be_taken_over():
    grid, members = _membership(lambda node_id, msg: _identity(node_id, 1))  # all say "1"
    members.mark_silent([101])  # late, not dead
    grid.node_ids.append(999)  # a newcomer claiming partition 1
    members.refresh()
    assert members.nodes[1].node_id == 101 and 1 in members.live()


def test_a_dead_nodes_partition_passes_to_a_new_node():
    def answers(node_id, msg):
        return None if node_id == 101 else _identity(node_id, 1 if node_id == 999 else 0)

    grid, members = _membership(answers)
    members.mark_silent([101])
    grid.node_ids.append(999)  # a restarted SuperNode: new id, same partition
    members.refresh()
    assert members.nodes[1].node_id == 999 and 1 in members.live()


def test_a_short_identify_wave_names_the_missing_partitions(caplog):
    from server.nodes import identify

    grid = FakeGrid([100, 102], lambda node_id, msg: _identity(node_id, node_id - 100))
    with caplog.at_level("WARNING", logger="flwr"):
        found = identify(grid, 3, 0.5, 0.01)
    assert sorted(found) == [0, 2]
    assert "no node for partitions [1] after 0s" in caplog.text


def test_the_side_channel_hands_attackers_the_benign_updates_and_the_last_global_update():
    """An omniscient attack's attackers are asked after the benign replies are in and get those
    (validated) updates; an attack that reads the global update gets w_t - w_{t-1}; benign
    nodes get neither."""
    cfg = validate(ExperimentConfig(
        num_clients=4, clients_per_round=4,
        attack={"name": "boosted", "num_malicious": 1, "schedule": "random"}))
    cfg.server.round_timeout_s, cfg.server.poll_interval_s = 1.0, 0.01
    type(cfg.attack).omniscient = True  # restored below: the class is shared
    type(cfg.attack).reads_global_update = True
    try:
        nodes = {p: Node(100 + p, p, "malicious" if p == 3 else "benign", 10) for p in range(4)}
        benign = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [float("nan"), 0.0]}
        seen = {}  # partition -> (order asked, array record names)

        def respond(node_id, msg):
            p = node_id - 100
            seen[p] = (len(seen), sorted(msg.content.array_records))
            if p == 3:
                got = [msg.content[k].to_torch_state_dict()["x"]
                       for k in seen[p][1] if k.startswith(P.ATTACK_BENIGN_UPDATE)]
                x = -0.5 * sum(got)  # IPM-like: minus half the benign sum
                seen["benign"] = got
                if P.ATTACK_GLOBAL_UPDATE in msg.content:
                    seen["global"] = msg.content[P.ATTACK_GLOBAL_UPDATE].to_torch_state_dict()
            else:
                x = torch.tensor(benign[p])
            return RecordDict({P.ARRAYS: ArrayRecord({"x": x}), P.METRICS: MetricRecord(
                {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 0.0})})

        grid = FakeGrid([n.node_id for n in nodes.values()], respond)
        members = Membership(grid, dict(nodes), 4, 1.0, 0.01)
        evaluate = lambda state: {"main_accuracy": 0.0, "main_loss": 0.0}  # noqa: E731
        runner = RoundRunner(grid, cfg, members, evaluate)
        arrays, row = runner.run(1, ArrayRecord({"x": torch.zeros(2)}), build_defense(cfg))
        assert seen[3][0] == 3, "the attacker is asked last"
        assert [p for p in range(3) if len(seen[p][1]) != 1] == [], "benign nodes get no extras"
        # Partition 2's NaN reply was rejected: only the validated benign updates are handed on.
        assert [t.tolist() for t in seen["benign"]] == [[1.0, 0.0], [0.0, 1.0]]
        assert f"{P.ATTACK_BENIGN_UPDATE}2" not in seen[3][1] and "global" not in seen
        assert row["num_malicious"] == 1 and [r["partition"] for r in row["rejected_updates"]] == [2]
        w1 = arrays.to_torch_state_dict()["x"]
        assert torch.allclose(w1, torch.full((2,), 0.5 / 3))  # FedAvg of [1,0], [0,1], -[.5,.5]

        seen.clear()
        benign[2] = [3.0, 3.0]
        arrays2, _ = runner.run(2, arrays, build_defense(cfg))
        assert torch.equal(seen["global"]["x"], w1 - torch.zeros(2))
        assert len(seen["benign"]) == 3 and f"{P.ATTACK_BENIGN_UPDATE}2" in seen[3][1]
    finally:
        type(cfg.attack).omniscient = False
        type(cfg.attack).reads_global_update = False


def test_the_progress_line_carries_the_eta_of_the_rounds_left():
    from server.rounds import eta_s, progress_line

    assert eta_s(30.0, 3, 7) == 70.0 and eta_s(0.0, 0, 5) == 0.0
    row = {"phase": "train", "round": 3, "main_accuracy": 0.9, "main_loss": 0.3,
           "num_clients": 10, "num_sampled": 10, "num_malicious": 1, "round_time_s": 10.0}
    line = progress_line(row, 10, eta_s(30.0, 3, 7))
    assert line.startswith("[train round 3/10] main_accuracy=0.9000") and line.endswith(
        "time=10.0s eta=1m10s")
    assert progress_line(row, 10, 4000.0).endswith("eta=1h06m")
    assert "eta" not in progress_line(row, 10)
