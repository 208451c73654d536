"""FLAME (Nguyen et al., USENIX Security 2022, Algorithm 1): cosine distances, HDBSCAN's majority
cluster, the median clipping bound, the clipped unweighted mean, noise lambda * S_t from the
seeded generator, and the config's bounds."""

import math

import numpy as np
import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.flame import (clip_bound, clipped_mean, flame, local_models,
                            majority_cluster, privacy_lambda)
from defenses.similarity import cosine_distances
from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.updates import flatten


def _defense(n=10, **options):
    cfg = validate(ExperimentConfig(num_clients=n, clients_per_round=n,
                                    defense={"name": "flame", **options}))
    return build_defense(cfg)


def _benign(n, seed=0):
    """n updates ones(13) + e_i, each nudged along its own axis: norm 4 and pairwise cosine
    15/16, exactly, so every benign model leaves HDBSCAN's cluster at the same level and all
    are admitted. (With random spread the cluster's sparsest members are flagged too: the
    single cluster keeps those present at its densest level, at least n // 2 + 1.)"""
    return [torch.ones(13) + torch.eye(13)[(seed * 7 + i) % 13] for i in range(n)]


def _random_benign(n, d=13, seed=0, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    return [torch.ones(d) + spread * torch.randn(d, generator=g) for _ in range(n)]


def _updates(rows, partitions=None, global_state=None, weights=None):
    deltas = [{"w": r[:12].reshape(3, 4), "b": r[12:]} for r in rows]
    n = len(rows)
    return Updates(deltas, weights or [1.0] * n, partitions or list(range(n)), 1, n,
                   global_state or {})


def test_cosine_distances_are_one_minus_cosine():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    d = cosine_distances(x)
    assert d[0, 1] == pytest.approx(1.0) and d[0, 2] == pytest.approx(2.0)
    assert d[0, 3] == pytest.approx(1 - 1 / math.sqrt(2))
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)


def test_majority_cluster_admits_the_majority_and_leaves_out_opposite_models():
    rows = torch.stack(_benign(8) + [-r for r in _benign(2, seed=1)])
    admitted, clusters = majority_cluster(cosine_distances(rows))
    assert admitted == list(range(8)) and clusters == 1
    # min cluster size n // 2 + 1 = 6: two groups of 5 are no cluster each, so the single
    # cluster ends where they part and holds all 10 (no majority to side with).
    split = torch.stack(_benign(5) + [-r for r in _benign(5, seed=2)])
    assert majority_cluster(cosine_distances(split)) == (list(range(10)), 1)
    # 7 of 10 in a cluster of 6 or more; the 3 opposite ones are noise.
    rows = torch.stack(_benign(7) + [-r for r in _benign(3, seed=1)])
    assert majority_cluster(cosine_distances(rows)) == (list(range(7)), 1)
    assert majority_cluster(cosine_distances(rows), min_cluster_size=8) == (list(range(10)), 1)


def test_clip_bound_is_the_median_of_all_distances_and_only_larger_updates_shrink():
    flat = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [30.0, 40.0]])
    e, bound = clip_bound(flat)
    assert e.tolist() == [5.0, 1.0, 2.0, 50.0]
    assert bound == pytest.approx(3.5)  # median of an even count: mean of the middle two
    mean, count = clipped_mean(flat, [0, 1, 3], bound)
    expected = (flat[0] * 3.5 / 5 + flat[1] + flat[3] * 3.5 / 50) / 3  # unweighted mean
    assert count == 2 and torch.allclose(mean, expected)


def test_the_paper_noise_level_follows_from_its_privacy_parameters():
    assert privacy_lambda(3705, 0.001) == pytest.approx(0.001, rel=0.03)
    assert privacy_lambda(395, 0.001) == pytest.approx(0.01, rel=0.05)


def test_noise_std_is_lambda_times_the_clip_bound():
    flat = torch.zeros(10, 200_000)
    flat[:, 0] = torch.arange(1.0, 11.0)  # norms 1..10, median 5.5; all point the same way
    out, admitted, stats = flame(flat, flat, 0.01, torch.Generator().manual_seed(0))
    assert admitted == list(range(10)) and stats["flame_clip_bound"] == pytest.approx(5.5)
    assert stats["flame_noise_std"] == pytest.approx(0.055)
    assert out[1:].std().item() == pytest.approx(0.055, rel=0.01)
    assert stats["fraction_clipped"] == pytest.approx(0.5)


def test_boosted_attackers_are_flagged_and_the_rest_is_clipped_and_averaged():
    benign = _benign(8)
    attackers = [-10 * r for r in _benign(2, seed=3)]  # boosted, opposite direction
    up = _updates(benign + attackers, partitions=[20 + i for i in range(10)])
    out = _defense(noise_lambda=0.0).aggregate(up)
    assert out.flagged == frozenset({28, 29})
    assert out.stats["flame_num_admitted"] == 8
    flat = torch.stack(benign)
    bound = float(torch.quantile(torch.stack(benign + attackers).double().norm(dim=1), 0.5))
    assert out.stats["flame_clip_bound"] == pytest.approx(bound)
    expected, _ = clipped_mean(flat, list(range(8)), bound)
    assert torch.allclose(flatten([out.delta]), expected, atol=1e-6)


def test_random_benign_updates_keep_a_majority_and_lose_the_attackers():
    """HDBSCAN's single cluster keeps its dense core: benign outliers may be flagged too (FLAME
    admits a majority, not every benign model), never the boosted opposite attackers."""
    rows = _random_benign(8) + [-10 * r for r in _random_benign(2, seed=3)]
    out = _defense(noise_lambda=0.0).aggregate(_updates(rows))
    assert {8, 9} <= out.flagged and out.stats["flame_num_admitted"] >= 6


def test_identical_updates_pass_through_as_their_mean():
    same = [torch.linspace(-1, 1, 13)] * 6
    out = _defense(n=6, noise_lambda=0.0).aggregate(_updates(same))
    assert out.flagged == frozenset() and out.stats["fraction_clipped"] == 0.0
    assert torch.allclose(flatten([out.delta])[0], same[0])


def test_models_are_clustered_not_updates_unless_asked():
    """With a common w_t the cosine of the models differs from that of the updates: a model
    w_t + Delta and w_t - Delta are close when w_t dominates, the updates are opposite."""
    w_t = {"w": torch.full((3, 4), 5.0), "b": torch.full((1,), 5.0)}
    up = _updates(_benign(4), global_state=w_t)
    models = flatten(local_models(up))
    assert torch.allclose(models, flatten(up.deltas) + 5.0)
    assert cosine_distances(models).max() < cosine_distances(flatten(up.deltas)).max()
    rows = _benign(8) + [-r for r in _benign(2, seed=1)]
    for cluster_on in ("models", "updates"):
        out = _defense(cluster_on=cluster_on, noise_lambda=0.0).aggregate(
            _updates(rows, global_state=w_t))
        assert {8, 9} <= out.flagged and out.stats["flame_num_admitted"] >= 6, cluster_on


def test_noise_comes_from_the_seeded_generator_and_resumes():
    rows = _benign(6)
    a, b = _defense(n=6), _defense(n=6)
    first = a.aggregate(_updates(rows)).delta
    assert torch.equal(first["w"], b.aggregate(_updates(rows)).delta["w"])
    saved = a.state_dict()
    second = a.aggregate(_updates(rows)).delta
    assert not torch.equal(first["w"], second["w"])
    fresh = _defense(n=6)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.aggregate(_updates(rows)).delta["w"], second["w"])


def test_a_round_with_fewer_replies_than_sampled_still_aggregates():
    rows = _benign(5) + [-10 * _benign(1, seed=4)[0]]
    up = _updates(rows, partitions=[1, 2, 3, 5, 8, 9])
    up.num_sampled = 10  # four nodes never answered
    out = _defense(n=10).aggregate(up)  # min cluster size 6 // 2 + 1 = 4 of the 6 replies
    assert out.flagged == frozenset({9}) and torch.isfinite(out.delta["w"]).all()
    single = _defense(n=10).aggregate(_updates(rows[:1], partitions=[4]))
    assert single.flagged == frozenset() and single.stats["flame_num_admitted"] == 1


@pytest.mark.parametrize("options, message", [
    ({"min_cluster_size": 11}, "min_cluster_size=11"),
    ({"min_cluster_size": 1}, "min_cluster_size=1"),
    ({"min_samples": 0}, "min_samples=0"),
    ({"min_samples": 10}, "min_samples=10"),
    ({"noise_lambda": -0.1}, "noise_lambda=-0.1"),
    ({"cluster_on": "gradients"}, "cluster_on"),
])
def test_out_of_range_options_fail_validation(options, message):
    with pytest.raises(ConfigError, match=message):
        validate(ExperimentConfig(num_clients=10, clients_per_round=10,
                                  defense={"name": "flame", **options}))
