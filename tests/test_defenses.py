"""Server-side defenses: each one's paper math on tiny tensors, the flagged sets of the
selecting ones, the detection scorer, and the registry's contract for every defense."""

import numpy as np
import pytest
import torch

from defenses import detection
from defenses.base import Updates, build_defense
from defenses.bulyan import bulyan_select, closest_to_median_mean
from defenses.fedmedian import coordinate_median
from defenses.fedtrimmedavg import trimmed_mean
from defenses.krum import krum_scores, multikrum_select
from defenses.norm_clipping import clip_all, clipped_mean
from defenses.weak_dp import noisy_clipped_mean
from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import clip_to_norm, global_norm


def _updates(rows: list[list[float]], weights=None, partitions=None) -> Updates:
    deltas = [{"x": torch.tensor(r)} for r in rows]
    n = len(rows)
    return Updates(deltas, weights or [1.0] * n, partitions or list(range(n)), 1, n)


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


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest_squared_distances():
    flat = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    # n = 4, f = 1: one nearest neighbour each.
    assert krum_scores(flat, 1).tolist() == [1.0, 1.0, 4.0, 49.0]
    # f = 0: two nearest.
    assert krum_scores(flat, 0).tolist() == [1.0 + 9.0, 1.0 + 4.0, 4.0 + 9.0, 49.0 + 81.0]
    assert multikrum_select(flat, 1, 2) == [0, 1]


def test_krum_and_multikrum_flag_what_they_leave_out():
    rows = [[0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.05, 0.05], [0.0, 0.0], [9.0, 9.0], [0.1, 0.05]]
    up = _updates(rows, partitions=[10, 11, 12, 13, 14, 15, 16])
    cfg = validate(ExperimentConfig(clients_per_round=7, num_clients=7,
                                    defense={"name": "krum", "num_malicious": 1}))
    out = build_defense(cfg).aggregate(up)
    assert len(out.flagged) == 6 and 15 in out.flagged
    cfg = validate(ExperimentConfig(clients_per_round=7, num_clients=7, defense={
        "name": "multikrum", "num_malicious": 1, "num_nodes_to_select": 5}))
    out = build_defense(cfg).aggregate(up)
    assert 15 in out.flagged and len(out.flagged) == 2
    assert out.delta["x"].abs().max() < 0.2


def test_bulyan_iterated_krum_then_mean_of_the_beta_closest_to_the_median():
    flat = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    chosen = bulyan_select(flat, 1)  # theta = n - 2f = 5
    assert len(chosen) == 5 and 6 not in chosen
    # beta = theta - 2f = 3 closest to the median 2 of [0, 1, 2, 3, 4] -> 1, 2, 3
    assert closest_to_median_mean(flat[sorted(chosen)], 3).item() == pytest.approx(2.0)
    sel = torch.tensor([[0.0, 10.0], [1.0, 0.0], [5.0, 1.0]])
    assert closest_to_median_mean(sel, 2).tolist() == pytest.approx([0.5, 0.5])


def test_median_and_trimmed_mean_per_coordinate():
    flat = torch.tensor([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0], [3.0, 1.0]])
    assert coordinate_median(flat).tolist() == [2.5, 0.5]
    assert coordinate_median(flat[:3]).tolist() == [2.0, 0.0]
    # beta 0.25 of 4: drop one at each end
    assert trimmed_mean(flat, 0.25).tolist() == [2.5, 0.5]


def test_fixed_clipping_dp_noise_std_is_z_c_over_m():
    cfg = validate(ExperimentConfig(clients_per_round=4, num_clients=4, defense={
        "name": "flower_dp_fixed", "norm_bound": 2.0, "noise_multiplier": 0.5}))
    d = build_defense(cfg)
    n = 100_000
    up = Updates([{"x": torch.zeros(n)}] * 4, [1.0] * 4, [0, 1, 2, 3], 1, 4)
    assert d.aggregate(up).delta["x"].std().item() == pytest.approx(0.5 * 2.0 / 4, rel=0.02)


def test_noise_state_survives_a_checkpoint():
    cfg = validate(ExperimentConfig(defense={"name": "weak_dp"}))
    up = _updates([[0.0] * 5, [1.0] * 5])
    a = build_defense(cfg)
    a.aggregate(up)
    saved = a.state_dict()
    expected = a.aggregate(up).delta["x"]
    b = build_defense(cfg)
    b.load_state_dict(saved)
    assert torch.equal(b.aggregate(up).delta["x"], expected)


# Defenses that train on the server's own data (they need w_t and a partition cache; their
# own test files run them), and detectors that by design do not flag one lone outlier in one
# round (FoolsGold down-weights updates that look alike: here the six honest ones).
NEEDS_MODEL = ("fltrust",)
SIMILARITY_DETECTORS = ("foolsgold",)
HISTORY_DETECTORS = ("fldetector",)  # flags nobody before N rounds of history
# DeepSight clips, not rejects, an update whose NEUPs look benign (its own test file).
CLIPS_BENIGN_LOOKING = ("deepsight",)
OPTIONS = {"foolsgold": {"output_layer_only": False}}  # these updates have no output layer


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if n not in NEEDS_MODEL])
def test_every_defense_aggregates_finite_and_reports_its_verdict(name):
    cfg = validate(ExperimentConfig(clients_per_round=7, num_clients=7,
                                    defense={"name": name, **OPTIONS.get(name, {})}))
    d = build_defense(cfg)
    rows = [[0.1 * i, -0.1 * i, 0.05] for i in range(1, 7)] + [[50.0, 50.0, 50.0]]
    out = d.aggregate(_updates(rows, weights=[10.0] * 7))
    assert torch.isfinite(out.delta["x"]).all()
    assert d.detects or out.flagged == frozenset()
    if name in ("krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg", "norm_clipping",
                "weak_dp", "deepsight"):  # the wild update does not carry the aggregate
        assert out.delta["x"].abs().max() < 8.0
    if d.detects and name not in SIMILARITY_DETECTORS + HISTORY_DETECTORS + CLIPS_BENIGN_LOOKING:
        assert 6 in out.flagged


def test_an_unknown_defense_fails_in_one_line_listing_the_registered():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(defense={"name": "flame2"})
    assert "defense='flame2' is not registered; registered: bulyan," in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="num_nodes_to_selec"):
        ExperimentConfig(defense={"name": "krum", "num_nodes_to_selec": 3})


# -- the detection scorer ---------------------------------------------------------------------

def test_detection_nobody_flagged():
    s = detection.score(set(), {3}, [1, 2, 3])
    assert (s["precision"], s["recall"], s["fpr"]) == (None, 0.0, 0.0)


def test_detection_no_attacker_in_the_round():
    s = detection.score({2}, set(), [1, 2, 3])
    assert (s["precision"], s["recall"], s["fpr"]) == (0.0, None, pytest.approx(1 / 3))


def test_detection_everybody_flagged():
    s = detection.score({1, 2, 3, 4}, {3, 4}, [1, 2, 3, 4])
    assert (s["precision"], s["recall"], s["fpr"]) == (0.5, 1.0, 1.0)


def test_detection_attacker_absent_from_the_replies():
    # Attacker 9 was sampled but its reply never came: neither caught nor missed.
    s = detection.score({9, 1}, {9}, [1, 2, 3])
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (0, 1, 0, 2)
    assert (s["precision"], s["recall"]) == (0.0, None)


def test_detection_totals_sum_counts_before_dividing():
    rounds = [detection.score({3}, {3}, [1, 2, 3]), detection.score({1}, {3}, [1, 2, 3])]
    t = detection.totals(rounds)
    assert (t["tp"], t["fp"], t["fn"], t["tn"]) == (1, 1, 1, 3)
    assert (t["precision"], t["recall"], t["fpr"]) == (0.5, 0.5, 0.25)
