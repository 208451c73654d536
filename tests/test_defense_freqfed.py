"""FreqFed (Fereidooni et al., NDSS 2024): the orthonormal 2-D DCT-II against its equation, the
low-frequency triangle, the per-layer feature vector, HDBSCAN's largest cluster, FedAvg of the
admitted updates, and the config's bounds."""

import math

import numpy as np
import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.freqfed import as_matrix, dct2, freqfed_select, low_frequencies, low_frequency_mask
from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.updates import weighted_mean


def _defense(n=10, **options):
    cfg = validate(ExperimentConfig(num_clients=n, clients_per_round=n,
                                    defense={"name": "freqfed", **options}))
    return build_defense(cfg)


def _state(seed, sign=1.0, scale=1.0):
    """A small 'model': a 6 x 8 dense layer, a conv kernel (2, 1, 3, 3) and a bias; a smooth
    shared pattern (low frequencies) plus a little per-client noise."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.outer(torch.linspace(1, 2, 6), torch.linspace(1, 3, 8))
    return {
        "fc.weight": sign * scale * grid + 0.05 * torch.randn(6, 8, generator=g),
        "conv.weight": sign * scale * torch.ones(2, 1, 3, 3)
        + 0.05 * torch.randn(2, 1, 3, 3, generator=g),
        "fc.bias": sign * scale * torch.linspace(1, 2, 6) + 0.05 * torch.randn(6, generator=g),
        "channel_mask": torch.zeros(2),
    }


def _updates(states, weights=None, partitions=None, global_state=None):
    n = len(states)
    return Updates(states, weights or [1.0] * n, partitions or list(range(n)), 1, n,
                   global_state or {})


def test_dct_is_the_orthonormal_type_ii_equation():
    w = np.random.default_rng(0).normal(size=(3, 5))
    P, Q = w.shape
    a = [math.sqrt((1 if u == 0 else 2) / P) for u in range(P)]
    b = [math.sqrt((1 if v == 0 else 2) / Q) for v in range(Q)]
    expected = np.array([[a[u] * b[v] * sum(
        w[m, n] * math.cos(math.pi * (2 * m + 1) * u / (2 * P))
        * math.cos(math.pi * (2 * n + 1) * v / (2 * Q)) for m in range(P) for n in range(Q))
        for v in range(Q)] for u in range(P)])
    assert np.allclose(dct2(w), expected)
    assert np.linalg.norm(dct2(w)) == pytest.approx(np.linalg.norm(w))  # orthonormal


def test_low_frequency_window_is_the_upper_left_triangle():
    square = low_frequency_mask(4, 4)  # u + v <= 2
    assert square.astype(int).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0],
                                           [0, 0, 0, 0]]
    assert low_frequency_mask(1, 6).tolist() == [[True] * 4 + [False] * 2]  # v <= 3
    wide = low_frequency_mask(2, 8)  # u / 2 + v / 8 <= 1/2
    assert wide.sum(axis=1).tolist() == [5, 1]


def test_layers_are_read_as_matrices():
    assert as_matrix(torch.zeros(2, 1, 3, 3)).shape == (2, 9)
    assert as_matrix(torch.zeros(5)).shape == (1, 5)
    assert as_matrix(torch.tensor(1.0)).shape == (1, 1)


def test_low_frequencies_concatenate_each_layers_triangle():
    state = {"a": torch.arange(16.0).reshape(4, 4), "b": torch.ones(6)}
    f = low_frequencies(state)
    spectrum = dct2(as_matrix(state["a"]))
    assert f.shape == (6 + 4,)
    assert np.allclose(f[:6].numpy(), spectrum[low_frequency_mask(4, 4)])
    assert f[6].item() == pytest.approx(math.sqrt(6)) and np.allclose(f[7:].numpy(), 0)


def test_opposite_updates_are_flagged_and_the_rest_averaged_by_weight():
    states = [_state(i) for i in range(7)] + [_state(10 + i, sign=-1, scale=5) for i in range(3)]
    weights = [float(10 + i) for i in range(10)]
    up = _updates(states, weights, partitions=[30 + i for i in range(10)])
    out = _defense().aggregate(up)
    # The opposite, boosted three are out; HDBSCAN's single cluster keeps the benign models
    # present at its densest level (at least K // 2 + 1 = 6), so a sparse benign one may go too.
    assert {37, 38, 39} <= out.flagged and len(out.flagged) <= 4
    kept = [i for i in range(10) if 30 + i not in out.flagged]
    assert out.stats["freqfed_num_admitted"] == len(kept)
    # fc 6x8: u/6 + v/8 <= 1/2 keeps 5+3+2+1; conv 2x9: 5+1; bias 1x6: 4 (not channel_mask).
    assert out.stats["freqfed_num_components"] == 11 + 6 + 4
    expected = weighted_mean([states[i] for i in kept], [weights[i] for i in kept])
    assert all(torch.allclose(out.delta[k], expected[k]) for k in expected)


def test_identical_updates_pass_through_as_fedavg():
    same = [_state(0)] * 6
    out = _defense(n=6).aggregate(_updates(same, weights=[1.0, 2, 3, 4, 5, 6]))
    assert out.flagged == frozenset()
    assert all(torch.allclose(out.delta[k], same[0][k]) for k in same[0])


def test_models_or_updates_are_transformed():
    w_t = {k: torch.full_like(v, 3.0) for k, v in _state(0).items()}
    states = [_state(i) for i in range(7)] + [_state(10 + i, sign=-1, scale=5) for i in range(3)]
    for transform_on in ("models", "updates"):
        out = _defense(transform_on=transform_on).aggregate(_updates(states, global_state=w_t))
        assert {7, 8, 9} <= out.flagged and out.stats["freqfed_num_admitted"] >= 6
    # The DCT is linear: the models' spectra are the updates' plus the common w_t spectrum.
    model = {k: w_t[k] + v for k, v in states[0].items()}
    assert torch.allclose(low_frequencies(model),
                          low_frequencies(states[0]) + low_frequencies(w_t), atol=1e-4)


def test_a_round_with_fewer_replies_than_sampled_still_aggregates():
    states = [_state(i) for i in range(4)] + [_state(9, sign=-1, scale=5)]
    up = _updates(states, partitions=[0, 2, 3, 6, 7])
    up.num_sampled = 10
    out = _defense().aggregate(up)  # K = 5 replies: min cluster size 3
    assert 7 in out.flagged and torch.isfinite(out.delta["fc.weight"]).all()
    admitted, clusters, _ = freqfed_select(states[:1])
    assert admitted == [0] and clusters == 1


@pytest.mark.parametrize("options, message", [
    ({"min_cluster_size": 11}, "min_cluster_size=11"),
    ({"min_samples": 0}, "min_samples=0"),
    ({"low_frequency_fraction": 0.0}, "low_frequency_fraction=0.0"),
    ({"transform_on": "gradients"}, "transform_on"),
])
def test_out_of_range_options_fail_validation(options, message):
    with pytest.raises(ConfigError, match=message):
        validate(ExperimentConfig(num_clients=10, clients_per_round=10,
                                  defense={"name": "freqfed", **options}))
