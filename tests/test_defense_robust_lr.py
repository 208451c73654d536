"""Robust learning rate (Ozdayi et al., AAAI 2021, eqs. 3-4): the sign vote on hand-made
tensors, the flipped coordinates, FedAvg where all agree, short rounds, theta's bounds."""

import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.robust_lr import robust_lr_aggregate, robust_lr_signs
from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.updates import weighted_mean


def _defense(theta=4, clients=10):
    cfg = validate(ExperimentConfig(num_clients=10, clients_per_round=clients,
                                    defense={"name": "robust_lr", "theta": theta}))
    return build_defense(cfg)


def _updates(rows, weights=None, sampled=None) -> Updates:
    n = len(rows)
    return Updates([{"x": torch.tensor(r, dtype=torch.float32)} for r in rows],
                   weights or [1.0] * n, list(range(n)), 1, sampled or n)


def test_sign_vote_per_coordinate():
    flat = torch.tensor([[1.0, 1.0, -1.0, 0.0], [2.0, -1.0, -3.0, 0.0],
                         [0.5, 1.0, -1.0, 0.0], [1.0, -2.0, 1.0, 0.0]])
    # |sum sgn| = 4, 0, 2, 0
    assert robust_lr_signs(flat, 2).tolist() == [1.0, -1.0, 1.0, -1.0]
    assert robust_lr_signs(flat, 3).tolist() == [1.0, -1.0, -1.0, -1.0]
    vector, flipped = robust_lr_aggregate(flat, [1.0, 1.0, 1.0, 1.0], 3)
    mean = flat.mean(dim=0).tolist()  # [1.125, -0.25, -1.0, 0.0]
    assert vector.tolist() == pytest.approx([mean[0], -mean[1], -mean[2], 0.0])
    assert flipped == 0.75


def test_a_lone_backdoor_coordinate_is_reversed_while_the_consensus_steps():
    # Coordinate 0: everyone agrees; coordinate 1: only the attacker moves it, by a lot.
    rows = [[0.1, 0.0]] * 9 + [[0.1, 5.0]]
    out = _defense(theta=4).aggregate(_updates(rows))
    assert out.delta["x"][0].item() == pytest.approx(0.1)
    assert out.delta["x"][1].item() == pytest.approx(-0.5)  # -eta * mean: pushed back
    assert out.flagged == frozenset() and out.stats["robust_lr_fraction_flipped"] == 0.5


def test_agreeing_updates_are_fedavg_weighted_mean():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(20, generator=g) + 0.1
    rows = [(base * (1 + i)).tolist() for i in range(5)]
    up = _updates(rows, weights=[1.0, 2.0, 3.0, 4.0, 5.0])
    out = _defense(theta=5).aggregate(up)
    assert torch.allclose(out.delta["x"], weighted_mean(up.deltas, up.weights)["x"])
    assert out.stats["robust_lr_fraction_flipped"] == 0.0
    assert not build_defense(validate(ExperimentConfig(defense={"name": "robust_lr"}))).detects


def test_fewer_replies_than_sampled_still_aggregate_and_fewer_than_theta_keep_the_model():
    out = _defense(theta=4).aggregate(_updates([[0.1, -0.1]] * 6, sampled=10))
    assert torch.allclose(out.delta["x"], torch.tensor([0.1, -0.1]))
    short = _defense(theta=4).aggregate(_updates([[0.1, -0.1]] * 3, sampled=10))
    assert short.delta is None and "theta=4" in short.stats["defense_skipped"]


def test_theta_must_be_between_1_and_clients_per_round():
    with pytest.raises(ConfigError, match=r"defense.theta=11 must be between 1 and "
                                          r"clients_per_round=10") as err:
        _defense(theta=11)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="defense.theta=0"):
        _defense(theta=0)
    with pytest.raises(ConfigError, match="defense.theta=6"):
        _defense(theta=6, clients=5)
