"""DeepSight (Rieger et al., NDSS 2022): NEUPs, threshold exceedings, the classification
boundary, DDifs, the clustering ensemble, cluster labelling, clipping, and the whole defense on
a small real model."""

import numpy as np
import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.deepsight import (
    accepted_indices,
    clipped_accepted_mean,
    comembership_distances,
    division_differences,
    ensemble_clusters,
    neups,
    output_layer,
    random_images,
    suspicious_labels,
    threshold_exceedings,
)
from defenses.similarity import cosine_distances
from flbackdoor.config import ConfigError, ExperimentConfig, ModelConfig, validate
from flbackdoor.models import build_model
from flbackdoor.updates import global_norm

SMALL = ModelConfig(name="wu_mnist_cnn", conv_channels=[2, 4], hidden=[8])


def test_output_layer_is_the_last_linear_weight_and_bias():
    state = build_model(SMALL, 1, 28, 10).state_dict()
    w, b = output_layer(state)
    assert w.shape == (10, 8) and b.shape == (10,)
    assert torch.equal(w, state["classifier.3.weight"])
    assert torch.equal(b, state["classifier.3.bias"])
    w, b = output_layer({"x": torch.tensor([1.0, 2.0])})
    assert w is None and b.tolist() == [1.0, 2.0]


def test_neups_square_the_per_class_energy_and_normalize():
    weight = torch.tensor([[1.0, -1.0], [0.0, 2.0], [0.0, 0.0]])
    bias = torch.tensor([1.0, 0.0, -1.0])
    # energies |b_i| + sum_h |W_ih| = 3, 2, 1 -> squares 9, 4, 1 over 14
    assert neups(weight, bias).tolist() == pytest.approx([9 / 14, 4 / 14, 1 / 14])
    assert neups(torch.zeros(4, 2), torch.zeros(4)).tolist() == [0.25] * 4


def test_threshold_exceedings_use_max_of_factor_and_one_over_p():
    neup = torch.tensor([0.5, 0.3, 0.15, 0.05])
    # P = 4: xi = max(0.01, 1/4) * 0.5 = 0.125 -> 0.5, 0.3, 0.15 exceed
    assert threshold_exceedings(neup, 0.01) == 3
    assert threshold_exceedings(neup, 0.5) == 2  # xi = 0.25
    many = torch.cat([torch.tensor([0.9]), torch.full((199,), 0.1 / 199)])
    # P = 200: xi = 0.01 * 0.9 = 0.009 > 0.1/199: only the first exceeds
    assert threshold_exceedings(many, 0.01) == 1


def test_suspicious_at_or_below_half_the_median():
    assert suspicious_labels([10, 10, 9, 2, 4]) == [False, False, False, True, True]
    assert suspicious_labels([8, 8, 4, 5]) == [False] * 4  # median 6.5: boundary 3.25
    assert suspicious_labels([6, 6, 3, 7]) == [False, False, True, False]  # median 6 -> 3


def test_division_differences_average_the_per_class_ratio():
    local = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    glob = torch.tensor([[0.25, 0.75], [0.9, 0.1]], dtype=torch.float64)
    assert division_differences(local, glob).tolist() == pytest.approx([1.5, (2 / 3 + 1) / 2])
    a = random_images(5, 1, 4, seed=3, index=1)
    assert a.dtype == torch.uint8 and torch.equal(a, random_images(5, 1, 4, seed=3, index=1))
    assert not torch.equal(a, random_images(5, 1, 4, seed=3, index=2))


def test_cosine_distances_and_comembership():
    d = cosine_distances(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert d[0, 1] == pytest.approx(0.0) and d[0, 2] == pytest.approx(1.0)
    assert d[3, 0] == pytest.approx(1.0) and d[3, 3] == 0.0
    m = comembership_distances(np.array([0, 0, 1, -1, -1]))
    assert m.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 1, 1],
                          [1, 1, 1, 0, 1], [1, 1, 1, 1, 0]]


def test_ensemble_merges_the_three_clusterings():
    # two tight groups in every view: the merged clustering keeps them apart
    cos = cosine_distances(torch.tensor([[1.0, 0.01], [1.0, 0.0], [1.0, 0.02],
                                               [0.0, 1.0], [0.01, 1.0]]))
    neup = np.array([[0.5, 0.5], [0.51, 0.49], [0.5, 0.5], [0.99, 0.01], [0.98, 0.02]])
    ddif = [np.array([[1.0, 1.0], [1.01, 1.0], [1.0, 1.01], [3.0, 0.1], [3.0, 0.11]])]
    labels = ensemble_clusters(cos, neup, ddif)
    assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4]


def test_cluster_accepted_iff_fewer_than_tau_suspicious_and_noise_alone():
    labels = np.array([0, 0, 0, 0, 1, 1, -1, -1])
    suspicious = [False, False, False, True, True, False, True, False]
    # cluster 0: 1/4 < 1/3 accepted; cluster 1: 1/2 rejected; noise 6 suspicious, 7 not
    assert accepted_indices(labels, suspicious, 1 / 3) == [0, 1, 2, 3, 7]
    assert accepted_indices(np.array([0, 0, 0]), [True, False, False], 1 / 3) == []


def test_clipping_at_the_median_norm_of_all_updates():
    deltas = [{"x": torch.tensor([3.0, 4.0])}, {"x": torch.tensor([0.0, 1.0])},
              {"x": torch.tensor([0.0, 2.0])}, {"x": torch.tensor([30.0, 40.0])}]
    mean, clipped, bound = clipped_accepted_mean(deltas, [1.0, 1.0, 1.0, 1.0], [0, 1, 3])
    assert bound == pytest.approx(3.5)  # median of 5, 1, 2, 50
    assert clipped == 2
    expected = (torch.tensor([2.1, 2.8]) + torch.tensor([0.0, 1.0]) + torch.tensor([2.1, 2.8])) / 3
    assert torch.allclose(mean["x"], expected)
    assert clipped_accepted_mean(deltas, [1.0] * 4, [])[0] is None


# -- the whole defense on a small real model ---------------------------------------------------

def _setup(n=10, **kw):
    cfg = validate(ExperimentConfig(num_clients=n, clients_per_round=n, model=SMALL, defense={
        "name": "deepsight", "num_samples": 64, "num_seeds": 2, **kw}))
    d = cfg.dataset
    torch.manual_seed(0)
    state = build_model(cfg.model, d.channels, d.image_size, d.num_classes).state_dict()
    return cfg, state


def _benign(state, g, scale=0.01):
    return {k: (scale * torch.randn(v.shape, generator=g) if v.is_floating_point() and
                k != "channel_mask" else torch.zeros(v.shape)) for k, v in state.items()}


def _backdoor(state, g, target=7):
    delta = _benign(state, g)
    delta["classifier.3.bias"][target] += 1.0
    delta["classifier.3.weight"][target] += 0.5
    return delta


def test_backdoor_updates_concentrated_on_one_label_are_flagged():
    cfg, state = _setup()
    g = torch.Generator().manual_seed(1)
    deltas = [_benign(state, g) for _ in range(8)] + [_backdoor(state, g) for _ in range(2)]
    up = Updates(deltas, [10.0] * 10, list(range(20, 30)), 3, 10, state)
    out = build_defense(cfg).aggregate(up)
    assert out.flagged == frozenset({28, 29})
    assert out.stats["deepsight_used_ddifs"] and out.stats["deepsight_num_suspicious"] == 2
    bound = out.stats["deepsight_clip_bound"]
    assert global_norm(out.delta) <= bound + 1e-5
    assert out.delta["classifier.3.bias"][7].abs() < 0.1  # the backdoor push is gone


def test_identical_benign_updates_pass_through():
    cfg, state = _setup()
    delta = _benign(state, torch.Generator().manual_seed(2))
    up = Updates([delta] * 10, [float(i + 1) for i in range(10)], list(range(10)), 1, 10, state)
    out = build_defense(cfg).aggregate(up)
    assert out.flagged == frozenset() and out.stats["fraction_clipped"] == 0.0
    for k in delta:
        assert torch.allclose(out.delta[k], delta[k], atol=1e-6)


def test_fewer_replies_than_sampled_still_aggregate():
    cfg, state = _setup()
    g = torch.Generator().manual_seed(3)
    deltas = [_benign(state, g) for _ in range(4)] + [_backdoor(state, g)]
    up = Updates(deltas, [5.0] * 5, [0, 2, 4, 6, 8], 2, 10, state)
    out = build_defense(cfg).aggregate(up)
    assert out.flagged == frozenset({8})
    assert all(torch.isfinite(v).all() for v in out.delta.values())
    single = build_defense(cfg).aggregate(Updates(deltas[:1], [5.0], [4], 2, 10, state))
    assert single.flagged == frozenset() and torch.allclose(
        single.delta["classifier.3.bias"], deltas[0]["classifier.3.bias"])


@pytest.mark.parametrize("field, value", [("tau", 0.0), ("tau", 1.5), ("min_cluster_size", 1),
                                          ("num_samples", 0), ("threshold_factor", 1.0),
                                          ("min_samples", 0)])
def test_out_of_range_values_fail_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        validate(ExperimentConfig(num_clients=10, clients_per_round=10,
                                  defense={"name": "deepsight", field: value}))
