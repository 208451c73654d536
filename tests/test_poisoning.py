"""Outsider data poisoning (attacker/poisoning.py): each transform stamps exactly the chosen
indices, relabels exactly them (dirty label) or nobody (clean label), and the backdoor test set
holds no image of the target label."""

import numpy as np
import pytest

from attacker.poisoning import (backdoor_test_set, badnets, blend, build_poisoning,
                                poison_indices, poison_partition, poison_train_set,
                                poisoned_partitions, sig)
from flbackdoor.config import ExperimentConfig, PoisoningConfig


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 200, (n, 1, 28, 28), dtype=np.uint8)  # never 255: a patch shows
    y = rng.integers(0, 10, n)
    return x, y


def test_poison_indices_rate_and_label_pools():
    _, y = _data(1000)
    idx = poison_indices(1000, 0.1, np.random.default_rng(1), y, target=0)
    assert len(idx) == 100 and len(set(idx)) == 100 and np.all(np.diff(idx) > 0)
    assert np.all(y[idx] != 0)  # dirty label: relabelling a 0 as 0 would poison nothing
    clean = poison_indices(1000, 0.05, np.random.default_rng(1), y, target=3, clean_label=True)
    assert len(clean) == 50 and np.all(y[clean] == 3)
    capped = poison_indices(1000, 0.5, np.random.default_rng(1), y, target=3, clean_label=True)
    assert len(capped) == (y == 3).sum()  # no more than the target class holds
    assert np.array_equal(idx, poison_indices(1000, 0.1, np.random.default_rng(1), y, target=0))


@pytest.mark.parametrize("attack", ["badnets", "blend", "sig"])
def test_transform_touches_only_the_chosen_indices(attack):
    x, y = _data()
    clean_label = attack == "sig"
    idx = poison_indices(len(y), 0.1, np.random.default_rng(2), y, 0, clean_label)
    if attack == "badnets":
        px, py, got = badnets(x, y, idx, target=0)
    elif attack == "blend":
        px, py, got = blend(x, y, idx, target=0, alpha=0.2, seed=0)
    else:
        px, py, got = sig(x, y, idx, delta=20, frequency=6)
    assert np.array_equal(got, idx) and len(idx) > 0
    others = np.setdiff1d(np.arange(len(y)), idx)
    assert np.array_equal(px[others], x[others]) and np.array_equal(py[others], y[others])
    changed = (px[idx] != x[idx]).reshape(len(idx), -1).any(1)
    assert changed.all()  # every chosen image carries the trigger
    assert np.all(py[idx] == 0)  # dirty: relabelled to target; sig: they were target already
    if not clean_label:
        assert np.all(y[idx] != 0)
    assert px.dtype == np.uint8 and x is not px  # inputs untouched


def test_badnets_is_a_white_3x3_patch_near_the_corner():
    x, y = _data(10)
    px, _, _ = badnets(x, y, np.arange(10), target=0)
    diff = (px != x).any(axis=(0, 1))
    rows, cols = np.nonzero(diff)
    assert set(rows) == {24, 25, 26} and set(cols) == {24, 25, 26}
    assert np.all(px[:, :, 24:27, 24:27] == 255)


def test_blend_pattern_is_fixed_per_seed_and_mixes_alpha():
    x = np.zeros((2, 1, 28, 28), np.uint8)
    y = np.array([1, 2])
    a, _, _ = blend(x, y, np.arange(2), 0, alpha=0.2, seed=5)
    b, _, _ = blend(x, y, np.arange(2), 0, alpha=0.2, seed=5)
    c, _, _ = blend(x, y, np.arange(2), 0, alpha=0.2, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a[0], a[1]) and a.max() <= round(0.2 * 255)


def test_sig_adds_a_horizontal_sinusoid():
    x = np.full((1, 1, 28, 28), 100, np.uint8)
    px, py, _ = sig(x, np.array([0]), np.array([0]), delta=20, frequency=6)
    row = px[0, 0, 0].astype(float) - 100
    assert np.allclose(row, np.rint(20 * np.sin(2 * np.pi * np.arange(28) * 6 / 28)))
    assert np.all(px[0, 0] == px[0, 0, :1])  # the same on every row
    assert py[0] == 0


def test_backdoor_test_set_and_whole_set_poisoning(tmp_path):
    cfg = ExperimentConfig(poisoning=PoisoningConfig(kind="badnets", rate=0.1, target_label=3))
    x, y = _data(500)
    px, py, idx = poison_train_set(cfg, x, y)
    assert len(idx) == 50 and np.all(py[idx] == 3) and np.all(y[idx] != 3)
    tx, ty = build_poisoning(cfg).test_set(x, y)
    assert len(ty) == (y != 3).sum() and np.all(ty == 3)
    assert np.all(tx[:, :, 24:27, 24:27] == 255)
    none = ExperimentConfig()
    assert build_poisoning(none) is None and len(poison_train_set(none, x, y)[2]) == 0
    assert backdoor_test_set(none, tmp_path) is None


def test_poisoned_partitions_are_seeded_honest_and_deterministic():
    cfg = ExperimentConfig(num_clients=10,
                           poisoning=PoisoningConfig(kind="badnets", num_clients=3))
    chosen = poisoned_partitions(cfg, malicious=(0, 1))
    assert len(chosen) == 3 and not {0, 1} & set(chosen)
    assert chosen == poisoned_partitions(cfg, malicious=(0, 1))
    x, y = _data(100)
    inside = chosen[0]
    outside = next(p for p in range(2, 10) if p not in chosen)
    a = poison_partition(cfg, inside, x, y, (0, 1))
    b = poison_partition(cfg, inside, x, y, (0, 1))
    assert len(a[2]) == 10 and np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    ox, oy, oidx = poison_partition(cfg, outside, x, y, (0, 1))
    assert len(oidx) == 0 and np.array_equal(ox, x) and np.array_equal(oy, y)
