"""RFA (Pillutla et al., IEEE TSP 2022): the smoothed Weiszfeld step, the geometric median on
collinear points (the weighted median), robustness to a far outlier, identical updates."""

import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.rfa import median_objective, smoothed_weiszfeld, weiszfeld_step
from flbackdoor.config import ConfigError, ExperimentConfig, validate


def _rfa(**defense):
    return build_defense(validate(ExperimentConfig(
        num_clients=10, clients_per_round=10, defense={"name": "rfa", **defense})))


def test_one_smoothed_weiszfeld_step_by_hand():
    points = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    alphas = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    # distances 0 (-> nu = 0.5), 4, 3: beta = 0.5/0.5, 0.25/4, 0.25/3.
    betas = torch.tensor([1.0, 1 / 16, 1 / 12], dtype=torch.float64)
    expected = (betas[:, None] * points).sum(0) / betas.sum()
    assert torch.allclose(weiszfeld_step(v, points, alphas, nu=0.5), expected)
    assert median_objective(v, points, alphas) == pytest.approx(0.25 * 4 + 0.25 * 3)


@pytest.mark.parametrize("offsets, weights, median", [
    ([0.0, 1.0, 5.0, 6.0, 20.0], [1, 1, 1, 1, 1], 5.0),  # the middle point
    ([0.0, 1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1, 5], 4.0),  # a weight above half: that point
    ([0.0, 1.0, 2.0, 3.0, 40.0], [3, 1, 1, 1, 1], 1.0),  # cumulative weight reaches 1/2 at 1
])
def test_collinear_points_give_the_weighted_median(offsets, weights, median):
    base, direction = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 1.0, -2.0]) / 3
    points = torch.stack([base + o * direction for o in offsets])
    v, iterations, objective = smoothed_weiszfeld(points, torch.tensor(weights, dtype=torch.float),
                                                  nu=1e-9, max_iterations=500, tolerance=0.0)
    assert torch.allclose(v.float(), base + median * direction, atol=1e-4)
    alphas = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    expected = float((alphas * (torch.tensor(offsets, dtype=torch.float64) - median).abs()).sum())
    assert objective == pytest.approx(expected, rel=1e-4)


def test_a_far_outlier_barely_moves_the_aggregate_with_the_default_budget():
    g = torch.Generator().manual_seed(0)
    inliers = [torch.full((20,), 0.1) + 0.01 * torch.randn(20, generator=g) for _ in range(9)]
    rows = inliers + [torch.full((20,), 1000.0)]
    up = Updates([{"x": r} for r in rows], [10.0] * 10, list(range(10)), 1, 10)
    out = _rfa().aggregate(up)  # R = 3 iterations from the mean, which the outlier drags to 100
    center = torch.stack(inliers).mean(0)
    mean_offset = torch.linalg.vector_norm(rows[-1] - center) / 10  # where FedAvg lands
    assert torch.linalg.vector_norm(out.delta["x"] - center) < 0.01 * mean_offset
    assert out.flagged == frozenset() and out.stats["rfa_iterations"] == 3
    more = _rfa(max_iterations=50).aggregate(up)
    assert torch.linalg.vector_norm(more.delta["x"] - center) < 0.05
    assert more.stats["rfa_objective"] <= out.stats["rfa_objective"]


def test_identical_updates_come_back_exactly_and_stop_early():
    row = torch.tensor([0.3, -1.7, 2.2e-3, 5.0])
    up = Updates([{"x": row.clone()} for _ in range(7)], [1.0, 3.0, 7.0, 2.0, 2.0, 5.0, 9.0],
                 list(range(7)), 1, 10)  # fewer replies (7) than sampled (10)
    out = _rfa().aggregate(up)
    assert torch.equal(out.delta["x"], row)
    assert out.stats["rfa_objective"] == 0.0 and out.stats["rfa_iterations"] == 1


@pytest.mark.parametrize("field, value", [("nu", 0.0), ("max_iterations", 0),
                                          ("tolerance", -1.0)])
def test_out_of_range_hyper_parameters_fail_validation(field, value):
    with pytest.raises(ConfigError, match=f"defense.{field}"):
        validate(ExperimentConfig(num_clients=10, clients_per_round=10,
                                  defense={"name": "rfa", field: value}))
