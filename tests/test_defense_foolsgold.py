"""FoolsGold (Fung et al., RAID 2020, Algorithm 1): the similarity, pardoning and logit steps on
hand-made tensors, sybils down-weighted, the history across rounds and checkpoints."""

import math

import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.foolsgold import foolsgold_weights, output_layer_key, pardon
from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.updates import weighted_mean


def _defense(**fields):
    cfg = validate(ExperimentConfig(num_clients=10, clients_per_round=10,
                                    defense={"name": "foolsgold",
                                             # hand-made updates have no output layer
                                             "output_layer_only": False, **fields}))
    return build_defense(cfg)


def _updates(rows, partitions=None, weights=None, rnd=1, sampled=None) -> Updates:
    n = len(rows)
    return Updates([{"x": torch.tensor(r, dtype=torch.float32)} for r in rows],
                   weights or [1.0] * n, partitions or list(range(n)), rnd, sampled or n)


def test_pardoning_scales_by_the_ratio_of_max_similarities():
    cs = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, 0.2], [0.5, 0.2, 1.0]], dtype=torch.float64)
    out, v = pardon(cs)
    assert v.tolist() == pytest.approx([0.9, 0.9, 0.5])
    # Row 2 (v=0.5) is pardoned against clients 0 and 1 (v=0.9); rows 0, 1 are not (equal v).
    expected = [[0.0, 0.9, 0.5], [0.9, 0.0, 0.2], [0.5 * 0.5 / 0.9, 0.2 * 0.5 / 0.9, 0.0]]
    assert out.tolist() == [pytest.approx(r) for r in expected]


def test_weights_follow_alpha_rescale_and_logit():
    # cos(a, b) = 0.5, c orthogonal to both: alpha = [0.5, 0.5, 1]; max is 1 already;
    # logit: ln(1) + 0.5 = 0.5 for a and b, +inf -> 1 for c.
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0], [0.0, 0.0, 1.0]])
    assert foolsgold_weights(rows).tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert foolsgold_weights(rows, kappa=0.5).tolist() == pytest.approx([0.25, 0.25, 1.0])
    # Every pairwise cos 0.5: alpha = [0.5] * 3, rescaled to 1 each (logit(1) -> 1); without
    # line 15 the logit would give 0.5 each.
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0],
                         [0.5, 0.5 / math.sqrt(3), math.sqrt(2 / 3)]])
    assert foolsgold_weights(rows).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # cos 0.8 (0-1), 0.6 (0-2), 0.96 (1-2): v = [0.8, 0.96, 0.96]; row 0 pardoned to
    # max(0.8 * 0.8 / 0.96, 0.6 * 0.8 / 0.96) = 2/3: alpha = [1/3, 0.04, 0.04] -> rescaled
    # [1, 0.12, 0.12] -> logit [1, 0, 0].
    rows = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    assert foolsgold_weights(rows).tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_a_sybil_pair_gets_zero_weight_and_the_honest_mean_goes_through():
    g = torch.Generator().manual_seed(0)
    honest = [torch.randn(50, generator=g).tolist() for _ in range(5)]
    poison = torch.randn(50, generator=g) * 3
    sybils = [(poison + 0.01 * torch.randn(50, generator=g)).tolist() for _ in range(2)]
    up = _updates(honest + sybils, partitions=[0, 1, 2, 3, 4, 7, 8])
    out = _defense().aggregate(up)
    assert out.flagged == frozenset({7, 8})
    mean = torch.tensor(honest).mean(dim=0)
    assert torch.allclose(out.delta["x"], mean, atol=1e-5)


def test_distinct_benign_updates_pass_through_as_fedavg():
    rows = [[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0, 0, -1.0]]
    out = _defense().aggregate(_updates(rows))
    assert out.flagged == frozenset()
    assert torch.allclose(out.delta["x"], torch.tensor(rows).mean(dim=0))
    up = _updates(rows, weights=[1.0, 2.0, 3.0, 4.0])
    out = _defense(weight_by_examples=True).aggregate(up)
    assert torch.allclose(out.delta["x"], weighted_mean(up.deltas, up.weights)["x"])


def test_identical_updates_all_look_like_sybils_and_keep_the_model():
    out = _defense().aggregate(_updates([[1.0, 2.0]] * 4, partitions=[3, 4, 5, 6]))
    assert out.delta is None and out.flagged == frozenset({3, 4, 5, 6})
    assert out.stats["foolsgold_all_zero"] == 1


def test_history_carries_over_rounds_and_through_a_checkpoint():
    first = _updates([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    second = _updates([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]], rnd=2)
    fresh = _defense().aggregate(second)
    assert fresh.flagged == frozenset({0, 1})  # identical this round, no history
    d = _defense()
    d.aggregate(first)
    saved = d.state_dict()
    assert torch.equal(saved["histories"][0], torch.tensor([1.0, 0.0, 0.0]))
    kept = d.aggregate(second)
    # H_0 = [2, 1, 1], H_1 = [1, 2, 1]: similar (cos 5/6) but not twins any more.
    assert torch.equal(d.histories[1], torch.tensor([1.0, 2.0, 1.0]))
    assert kept.delta is not None
    resumed = _defense()
    resumed.load_state_dict(saved)
    again = resumed.aggregate(second)
    assert again.flagged == kept.flagged
    assert torch.equal(again.delta["x"], kept.delta["x"])


def test_fewer_replies_than_sampled_and_new_partitions_aggregate():
    d = _defense()
    d.aggregate(_updates([[1.0, 0.0], [0.0, 1.0]], partitions=[0, 1], sampled=5))
    out = d.aggregate(_updates([[0.0, 1.0], [1.0, -1.0]], partitions=[1, 9], rnd=2, sampled=5))
    assert out.delta is not None and torch.isfinite(out.delta["x"]).all()
    assert sorted(d.histories) == [0, 1, 9]
    assert torch.equal(d.histories[1], torch.tensor([0.0, 2.0]))
    single = _defense().aggregate(_updates([[0.5, 0.5]], partitions=[4], sampled=10))
    assert single.flagged == frozenset() and torch.allclose(single.delta["x"],
                                                            torch.tensor([0.5, 0.5]))


def test_output_layer_only_compares_the_last_dense_weights():
    assert output_layer_key({"features.0.weight": torch.zeros(2, 1, 3, 3),
                             "classifier.1.weight": torch.zeros(4, 8),
                             "classifier.3.weight": torch.zeros(10, 4),
                             "classifier.3.bias": torch.zeros(10)}) == "classifier.3.weight"
    # Identical output layers, different elsewhere: twins for output_layer_only only.
    deltas = [{"conv.weight": torch.randn(2, 1, 3, 3), "out.weight": torch.ones(2, 2)}
              for _ in range(2)] + [{"conv.weight": torch.randn(2, 1, 3, 3),
                                     "out.weight": torch.tensor([[1.0, -1.0], [0.0, 0.0]])}]
    up = Updates(deltas, [1.0] * 3, [0, 1, 2], 1, 3)
    assert _defense(output_layer_only=True).aggregate(up).flagged == frozenset({0, 1})


def test_kappa_must_be_positive():
    with pytest.raises(ConfigError, match="defense.kappa=0"):
        _defense(kappa=0.0)
