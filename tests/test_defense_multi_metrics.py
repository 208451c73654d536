"""Multi-metrics (Huang et al., ICCV 2023): the summed distances, the whitened score, the kept
fraction, the flagged set, and the configuration bounds."""

import math

import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.multi_metrics import metric_features, select_lowest, whitened_scores
from flbackdoor.config import ConfigError, ExperimentConfig, validate


def _updates(rows, weights=None, partitions=None, sampled=None) -> Updates:
    n = len(rows)
    return Updates([{"x": torch.tensor(r, dtype=torch.float32)} for r in rows],
                   weights or [1.0] * n, partitions or list(range(n)), 1, sampled or n)


def _defense(clients=10, **kw):
    return build_defense(validate(ExperimentConfig(
        num_clients=clients, clients_per_round=clients,
        defense={"name": "multi_metrics", **kw})))


def test_features_sum_cosine_manhattan_and_euclidean_distances():
    flat = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    x = metric_features(flat)
    # row 0: cos distances 1 (to [0,2]) and 0 (to [3,0]); L1 3 and 2; L2 sqrt(5) and 2
    assert x[0].tolist() == pytest.approx([1.0, 5.0, math.sqrt(5) + 2.0])
    # row 1: cos 1 + 1; L1 3 + 5; L2 sqrt(5) + sqrt(13)
    assert x[1].tolist() == pytest.approx([2.0, 8.0, math.sqrt(5) + math.sqrt(13)])
    assert x[2].tolist() == pytest.approx([1.0, 7.0, 2.0 + math.sqrt(13)])


def test_score_is_the_mahalanobis_norm_under_the_sample_covariance():
    x = torch.tensor([[1.0, 2.0, 0.5], [2.0, 1.0, 0.7], [4.0, 3.0, 0.1], [0.5, 0.2, 0.9],
                      [3.0, 3.5, 0.4]], dtype=torch.float64)
    scores, singular = whitened_scores(x)
    assert not singular
    centred = x - x.mean(0)
    sigma = centred.T @ centred / (len(x) - 1)
    expected = [float(torch.sqrt(r @ torch.linalg.inv(sigma) @ r)) for r in x]
    assert scores.tolist() == pytest.approx(expected)


def test_singular_covariance_uses_the_pseudo_inverse():
    # 3 clients: the covariance of 3 points in R^3 has rank <= 2
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.5, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    scores, singular = whitened_scores(x)
    assert singular and torch.isfinite(scores).all()
    pinv = torch.linalg.pinv(torch.cov(x.T))
    assert scores[0].item() == pytest.approx(float(torch.sqrt(x[0] @ pinv @ x[0])))


def test_select_keeps_floor_p_n_lowest_and_at_least_one():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 9.0, 2.0, 8.0, 7.0, 6.0, 4.0])
    assert select_lowest(scores, 0.3) == [1, 3, 5]
    assert select_lowest(scores, 0.05) == [3]
    assert select_lowest(scores, 1.0) == list(range(10))


def test_outliers_are_flagged_and_the_kept_average_is_fedavg():
    g = torch.Generator().manual_seed(0)
    benign = (torch.ones(8, 20) + 0.05 * torch.randn(8, 20, generator=g)).tolist()
    wild = [[-5.0] * 20, [6.0] * 10 + [-6.0] * 10]
    rows = benign + wild
    weights = [float(w) for w in range(1, 11)]
    up = _updates(rows, weights=weights, partitions=list(range(100, 110)))
    out = _defense().aggregate(up)
    assert {108, 109} <= out.flagged and len(out.flagged) == 7
    kept = [i for i in range(10) if 100 + i not in out.flagged]
    expected = sum(weights[i] * torch.tensor(rows[i]) for i in kept) / sum(weights[i] for i in kept)
    assert torch.allclose(out.delta["x"], expected, atol=1e-5)
    assert out.stats["multi_metrics_num_kept"] == 3


def test_identical_benign_updates_pass_through():
    rows = [[0.2, -0.1, 0.3]] * 10
    out = _defense().aggregate(_updates(rows, weights=[float(i + 1) for i in range(10)]))
    assert torch.allclose(out.delta["x"], torch.tensor(rows[0]), atol=1e-6)
    assert out.stats["multi_metrics_pinv"]  # zero covariance: the pseudo-inverse, no crash
    assert len(out.flagged) == 7


def test_fewer_replies_than_sampled_still_aggregate():
    rows = [[0.1, 0.2], [0.12, 0.18], [0.09, 0.21], [9.0, -9.0]]  # 10 sampled, 4 replied
    out = _defense().aggregate(_updates(rows, partitions=[3, 5, 7, 9], sampled=10))
    assert len(out.flagged) == 3 and 9 in out.flagged  # floor(0.3 * 4) = 1 kept
    assert torch.isfinite(out.delta["x"]).all()
    one = _defense().aggregate(_updates([[1.0, 2.0]], partitions=[4], sampled=10))
    assert out.flagged and one.flagged == frozenset() and one.delta["x"].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, 0.05])
def test_out_of_range_fraction_fails_validation(p):
    with pytest.raises(ConfigError, match="keep_fraction"):
        validate(ExperimentConfig(num_clients=10, clients_per_round=10,
                                  defense={"name": "multi_metrics", "keep_fraction": p}))
