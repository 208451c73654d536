"""FLTrust (Cao et al., NDSS 2021, Algorithms 1-2): trust scores and magnitude normalisation on
hand-made tensors, the seeded root set from the partition cache, the server's own update from
w_t, and root_samples' bound."""

import json

import numpy as np
import pytest
import torch

from defenses import fltrust
from defenses.base import Updates, build_defense
from defenses.fltrust import draw_root, fltrust_aggregate, trust_scores
from flbackdoor.config import ConfigError, ExperimentConfig, ModelConfig, validate
from flbackdoor.models import build_model
from flbackdoor.updates import flatten, global_norm


def test_trust_is_relu_cosine_and_updates_are_rescaled_to_the_server_norm():
    flat = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [30.0, 40.0]])
    g0 = torch.tensor([3.0, 4.0])
    assert trust_scores(flat, g0).tolist() == pytest.approx([0.6, 0.8, 0.0, 1.0])
    vector, ts = fltrust_aggregate(flat, g0)
    # Normalised to ||g_0|| = 5: [5, 0], [0, 5], -, [3, 4]; weights 0.6, 0.8, 0, 1.
    expected = (0.6 * torch.tensor([5.0, 0.0]) + 0.8 * torch.tensor([0.0, 5.0])
                + torch.tensor([3.0, 4.0])) / 2.4
    assert vector.tolist() == pytest.approx(expected.tolist())
    # The boosted update (norm 50) counts no more than g_0's length.
    assert float(vector.norm()) <= 5.0 + 1e-9


def test_no_positive_trust_keeps_the_model():
    vector, ts = fltrust_aggregate(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]),
                                   torch.tensor([1.0, 1.0]))
    assert vector is None and ts.tolist() == [0.0, 0.0]


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A partition cache of 4 partitions x 50 random 28x28 images; test images all 255 so a
    draw from them would show."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 200, size=(200, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=200).astype(np.int64)
    for name, arr in {"train_x": x, "train_y": y, "offsets": np.array([0, 50, 100, 150, 200]),
                      "test_x": np.full((20, 1, 28, 28), 255, np.uint8),
                      "test_y": np.zeros(20, np.int64)}.items():
        np.save(tmp_path / f"{name}.npy", arr)
    (tmp_path / "meta.json").write_text(json.dumps({"sizes": [50] * 4}))
    monkeypatch.setattr(fltrust, "prepare", lambda cfg: tmp_path)
    return tmp_path


def test_root_set_is_a_seeded_uniform_draw_from_the_training_partitions(fake_cache):
    x, y = draw_root(fake_cache, 100, seed=0)
    assert x.shape == (100, 1, 28, 28) and (x < 255).all()  # never a test image
    train_x = np.load(fake_cache / "train_x.npy")
    rows = {train_x[i].tobytes(): i for i in range(200)}
    picked = [rows[img.tobytes()] for img in x]
    assert len(set(picked)) == 100 and len({p // 50 for p in picked}) == 4  # every partition
    assert np.array_equal(draw_root(fake_cache, 100, seed=0)[0], x)
    assert not np.array_equal(draw_root(fake_cache, 100, seed=1)[0], x)
    assert len(draw_root(fake_cache, 500, seed=0)[1]) == 200  # capped at the training set


def _cfg(**fields):
    return validate(ExperimentConfig(num_clients=4, clients_per_round=4, device="cpu",
                                     model=ModelConfig(conv_channels=[2], hidden=[8]),
                                     defense={"name": "fltrust", **fields}))


def test_server_update_trains_from_w_t_and_scores_against_it(fake_cache):
    cfg = _cfg(root_samples=64)
    d = build_defense(cfg)
    torch.manual_seed(0)
    w_t = build_model(cfg.model, 1, 28, 10).state_dict()
    g0 = d.server_update(w_t, 3)
    assert global_norm(g0) > 0 and torch.equal(g0["channel_mask"], torch.zeros(2))
    again = build_defense(cfg).server_update(w_t, 3)  # seeded by (seed, round): resumable
    assert all(torch.equal(g0[k], again[k]) for k in g0)
    # A partition sending g_0 back is fully trusted, one sending -g_0 flagged, a boosted copy
    # is rescaled; only 3 of the 4 sampled replied.
    deltas = [g0, {k: -v for k, v in g0.items()}, {k: 10 * v for k, v in g0.items()}]
    out = d.aggregate(Updates(deltas, [50.0] * 3, [0, 2, 3], 3, 4, w_t))
    assert out.flagged == frozenset({2})
    assert out.stats["fltrust_mean_trust"] == pytest.approx(2 / 3)
    got, want = flatten([out.delta])[0], flatten([g0])[0]
    assert torch.allclose(got, want, atol=1e-6)


def test_local_iterations_default_to_a_clients_sgd_steps():
    d = build_defense(_cfg())
    # 6000 examples at batch 32: 188 steps; 100 root images: 4 steps a pass -> 47 passes.
    assert d.passes([6000] * 10, 100) == 47
    assert build_defense(_cfg(local_iterations=5)).passes([6000], 100) == 2


def test_a_root_set_of_zero_images_fails_in_one_line():
    with pytest.raises(ConfigError, match="defense.root_samples=0 must be at least 1") as err:
        _cfg(root_samples=0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="defense.local_iterations=-1"):
        _cfg(local_iterations=-1)
