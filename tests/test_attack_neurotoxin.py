"""Neurotoxin (Zhang et al. 2022, Algorithm 1): the top-k % mask of the last global update, the
update kept off it and inside the PGD norm bound, and its config."""

import numpy as np
import pytest
import torch

from attacker.base import TrainJob
from attacker.crafting import craft_update
from attacker.neurotoxin import Neurotoxin, topk_mask
from attacker.replacement import restrict
from conftest import attack_config as AttackConfig
from flbackdoor.config import ConfigError, ExperimentConfig, ModelConfig, validate
from flbackdoor.models import build_model
from flbackdoor.updates import difference, flatten, global_norm


def test_topk_mask_zeroes_exactly_the_largest_magnitudes_across_entries():
    update = {"a": torch.tensor([[0.1, -5.0], [0.2, 0.0]]), "b": torch.tensor([3.0, -0.3, 1.0])}
    mask = topk_mask(update, 100 * 3 / 7)  # 3 of the 7 coordinates
    assert torch.equal(mask["a"], torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(mask["b"], torch.tensor([0.0, 1.0, 0.0]))
    assert all(torch.equal(topk_mask(update, 0)[k], torch.ones_like(v)) for k, v in update.items())
    assert all(not topk_mask(update, 100)[k].any() for k in update)


@pytest.mark.parametrize("ratio", [1.0, 5.0, 30.0])
def test_topk_mask_size_and_order(ratio):
    update = {"w": torch.randn(40, 25), "b": torch.randn(17)}
    flat_mask, flat = flatten([topk_mask(update, ratio)])[0], flatten([update])[0].abs()
    masked = flat_mask == 0
    assert int(masked.sum()) == round(flat.numel() * ratio / 100)
    assert flat[masked].min() >= flat[~masked].max()


def test_restrict_moves_back_to_the_center_where_the_mask_is_zero():
    center = {"w": torch.zeros(2, 3), "n": torch.tensor(4)}
    weights = {"w": torch.arange(6.0).reshape(2, 3) + 1, "n": torch.tensor(9)}
    mask = {"w": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])}
    out = restrict(weights, center, mask)
    assert torch.equal(out["w"], torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]]))
    assert out["n"] == 9  # not in the mask: left alone


def _tiny(**fields):
    cfg = ExperimentConfig(model=ModelConfig(name="wu_mnist_cnn", conv_channels=[4, 8], hidden=[16]),
                           attack=AttackConfig(name="neurotoxin", **fields))
    cfg.client.epochs, cfg.attack.epochs, cfg.client.lr, cfg.client.momentum = 2, 2, 0.1, 0.9
    model = build_model(cfg.model, 1, 28, 10)
    rng = np.random.default_rng(0)
    local = (rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64))
    poison = (rng.integers(0, 256, (16, 1, 28, 28), dtype=np.uint8), np.ones(16, np.int64))
    return cfg, model, local, poison


def _job(cfg, model, global_update):
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def honest():
        raise AssertionError("the global update is there: no honest training needed")

    return TrainJob(cfg, 0, 7, model, start, None, {}, None, torch.device("cpu"),
                    torch.Generator().manual_seed(0), honest, global_update=global_update)


@pytest.mark.parametrize("factor", [1.0, 10.0])
@pytest.mark.parametrize("ratio", [5.0, 50.0])
def test_crafted_update_is_zero_on_the_masked_coordinates_and_inside_the_bound(factor, ratio):
    cfg, model, local, poison = _tiny(norm_bound=2.0, topk_ratio=ratio)
    torch.manual_seed(1)
    global_update = {k: torch.randn_like(v.float()) for k, v in model.state_dict().items()}
    job = _job(cfg, model, global_update)
    attack = Neurotoxin(cfg)
    mask = attack.mask(job)
    assert set(mask) == {k for k, _ in model.named_parameters()}
    start = job.global_state
    sent, _ = craft_update(model, start, local, poison, cfg, factor, torch.device("cpu"),
                           job.generator, attack.radius(factor), attack.project_each_step(), mask)
    delta = difference(sent, start)
    masked = {k: (m == 0) for k, m in mask.items()}
    # The top-k % coordinates of |w_t - w_{t-1}| (over the parameters) are exactly untouched...
    top = topk_mask({k: global_update[k] for k in mask}, ratio)
    assert all(torch.equal(masked[k], top[k] == 0) for k in mask)
    assert all(torch.count_nonzero(delta[k][masked[k]]) == 0 for k in mask)
    # ... the others moved, and the whole update is inside the PGD bound M.
    assert sum(int(torch.count_nonzero(delta[k][~masked[k]])) for k in mask) > 0
    assert global_norm(delta) <= 2.0 * (1 + 1e-4)


def test_without_the_mask_the_same_training_moves_the_top_coordinates():
    """The invariant above is the mask's doing: the norm-bounded update moves them."""
    cfg, model, local, poison = _tiny(norm_bound=2.0, topk_ratio=5.0)
    global_update = {k: torch.randn_like(v.float()) for k, v in model.state_dict().items()}
    mask = Neurotoxin(cfg).mask(_job(cfg, model, global_update))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    sent, _ = craft_update(model, start, local, poison, cfg, 1.0, torch.device("cpu"),
                           torch.Generator().manual_seed(0), 2.0, True)
    delta = difference(sent, start)
    assert sum(int(torch.count_nonzero(delta[k][mask[k] == 0])) for k in mask) > 0


def test_first_round_mask_comes_from_the_attackers_own_benign_update():
    cfg, model, _, _ = _tiny(topk_ratio=10.0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    benign = {k: v + torch.randn_like(v.float()) for k, v in start.items()}

    def honest():
        model.load_state_dict(benign)  # a benign node trains the model in place
        return model.state_dict(), None

    job = TrainJob(cfg, 0, 6, model, start, None, {}, None, torch.device("cpu"),
                   torch.Generator(), honest, global_update=None)
    mask = Neurotoxin(cfg).mask(job)
    expected = topk_mask({k: benign[k] - start[k] for k in mask}, 10.0)
    assert all(torch.equal(mask[k], expected[k]) for k in mask)
    assert all(torch.equal(model.state_dict()[k], start[k]) for k in start)  # back at w_t


@pytest.mark.parametrize("ratio", [-1.0, 100.5])
def test_topk_ratio_outside_0_100_fails_validation_in_one_line(ratio):
    with pytest.raises(ConfigError) as err:
        validate(ExperimentConfig(attack={"name": "neurotoxin", "topk_ratio": ratio}))
    assert f"attack.topk_ratio={ratio}" in str(err.value) and "\n" not in str(err.value)
    for ok in (0.0, 5.0, 100.0):
        validate(ExperimentConfig(attack={"name": "neurotoxin", "topk_ratio": ok}))


def test_neurotoxin_reads_the_global_update_and_bounds_like_norm_bounded():
    config = AttackConfig(name="neurotoxin")
    assert config.reads_global_update and not config.omniscient
    assert not AttackConfig(name="norm_bounded").reads_global_update
    attack = Neurotoxin(ExperimentConfig(attack=AttackConfig(name="neurotoxin", norm_bound=3.0)))
    assert attack.radius(6.0) == pytest.approx(0.5) and attack.project_each_step()
