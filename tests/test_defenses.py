"""Server-side defenses: clipping, the weak-DP noise placement, and the strategies' glue."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from defenses.clipping import clip_all, clipped_mean
from defenses.weak_dp import noisy_clipped_mean
from flbackdoor.config import DefenseConfig, ExperimentConfig
from flbackdoor.updates import clip_to_norm, global_norm
from server.strategies import SelectedNodes, ServerLRFedAvg, WithServerLR, build_strategy


@pytest.fixture(autouse=True)
def run_identity(monkeypatch):
    """Messages need the run identity a ServerApp process gets from its SuperLink; these unit
    tests build messages outside a run, so they set one."""
    from flwr.supercore.task_identity import TaskIdentity
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_clip_bounds_norm_and_keeps_small_updates():
    big = {"a": torch.full((10,), 3.0)}
    clipped, was = clip_to_norm(big, 2.0)
    assert was and global_norm(clipped) == pytest.approx(2.0, rel=1e-6)
    assert torch.allclose(clipped["a"] / big["a"], torch.full((10,), clipped["a"][0] / 3.0))
    small = {"a": torch.full((4,), 0.1)}
    assert clip_to_norm(small, 2.0) == (small, False)
    _, count = clip_all([big, small, big], 2.0)
    assert count == 2


def test_clipped_mean_is_weighted_mean_of_clipped_updates():
    a, b = {"x": torch.tensor([6.0, 8.0])}, {"x": torch.tensor([0.3, 0.4])}
    out = clipped_mean([a, b], [1, 3], max_norm=1.0)  # a -> [0.6, 0.8]
    assert torch.allclose(out["x"], (torch.tensor([0.6, 0.8]) + 3 * b["x"]) / 4)


def test_weak_dp_noise_goes_on_the_sum_then_divides_by_m():
    m, sigma, n = 30, 0.025, 200_000
    zeros = [{"x": torch.zeros(n)} for _ in range(m)]
    out = noisy_clipped_mean(zeros, 5.0, sigma, m, torch.Generator().manual_seed(0))["x"]
    # N(0, sigma^2) on the sum, divided by m: std sigma/m, mean 0 (4 standard errors).
    assert abs(out.mean().item()) < 4 * (sigma / m) / np.sqrt(n)
    assert out.std().item() == pytest.approx(sigma / m, rel=0.01)
    ones = [{"x": torch.ones(3) * 10} for _ in range(m)]  # norm 17.3 -> clipped to 5
    exact = noisy_clipped_mean(ones, 5.0, 0.0, m, torch.Generator())["x"]
    assert global_norm({"x": exact}) == pytest.approx(5.0, rel=1e-6)


def _reply(arrays: dict, n: int, node: int) -> Message:
    ask = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
    content = RecordDict({"arrays": ArrayRecord(arrays),
                          "metrics": MetricRecord({"num-examples": n, "train_loss": 0.0})})
    return Message(content, reply_to=ask)


def test_server_lr_fedavg_aggregates_deltas_with_eta():
    strategy = ServerLRFedAvg(server_lr=0.5)
    w0 = {"x": torch.zeros(2)}
    msgs = list(strategy.configure_train(1, ArrayRecord(w0), ConfigRecord(), SelectedNodes([7, 9])))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [7, 9]
    arrays, metrics = strategy.aggregate_train(1, [_reply({"x": torch.tensor([2.0, 0.0])}, 1, 7),
                                                   _reply({"x": torch.tensor([0.0, 4.0])}, 3, 9)])
    assert torch.allclose(arrays.to_torch_state_dict()["x"], torch.tensor([0.25, 1.5]))


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg",
                                  "flower_dp_fixed"])
def test_flower_strategies_run_on_our_planned_nodes(name):
    cfg = ExperimentConfig(clients_per_round=7, defense=DefenseConfig(name=name, num_malicious=1,
                                                                     num_nodes_to_select=3))
    strategy = build_strategy(cfg, torch.Generator().manual_seed(0))
    assert isinstance(strategy, WithServerLR)
    w0 = {"x": torch.zeros(3)}
    nodes = list(range(11, 18))
    msgs = list(strategy.configure_train(1, ArrayRecord(w0), ConfigRecord(), SelectedNodes(nodes)))
    assert sorted(m.metadata.dst_node_id for m in msgs) == nodes
    # Nonzero updates: Flower 1.39's DP clipping divides by the update norm (0 crashes it).
    replies = [_reply({"x": torch.full((3,), 0.1 * i)}, 10, n) for i, n in enumerate(nodes, 1)]
    replies[-1] = _reply({"x": torch.full((3,), 100.0)}, 10, nodes[-1])  # one wild update
    arrays, _ = strategy.aggregate_train(1, replies)
    out = arrays.to_torch_state_dict()["x"]
    assert torch.isfinite(out).all()
    if name != "flower_dp_fixed":  # robust aggregators ignore the outlier
        assert out.abs().max() < 1.0


def test_defense_none_and_sun_defenses_use_our_fedavg():
    g = torch.Generator()
    for name in ["none", "norm_clipping", "weak_dp"]:
        assert isinstance(build_strategy(ExperimentConfig(defense=DefenseConfig(name=name)), g),
                          ServerLRFedAvg)
