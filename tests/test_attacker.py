"""The attacker's pure pieces: boost arithmetic, L2 projection, crafted updates, triggers,
roles and backdoor tasks."""

import dataclasses

import numpy as np
import pytest
import torch

from attacker.base import TrainJob
from attacker.boosted import Boosted
from attacker.crafting import craft_update
from attacker.data_poisoning import DataPoisoning
from attacker.replacement import boost, boost_factor, project_l2
from flbackdoor.roles import assign_roles
from attacker.tasks import PixelPatternTask, SemanticTask
from attacker.triggers import dba_pattern, pixel_pattern, stamp
from conftest import attack_config as AttackConfig
from flbackdoor.config import DataConfig, ExperimentConfig, ModelConfig
from flbackdoor.data.cache import load_partition, load_test, prepare
from flbackdoor.models import build_model
from flbackdoor.updates import difference, global_norm


def test_boost_factor_is_round_examples_over_eta_n_attacker_split_among_attackers():
    assert boost_factor(3000, 1.0, 100) == pytest.approx(30.0)
    assert boost_factor(3000, 0.5, 100) == pytest.approx(60.0)
    assert boost_factor(3000, 1.0, 100, num_attackers=3) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        boost_factor(3000, 1.0, 0)


def test_boost_of_one_is_identity_and_scales_linearly():
    d = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    assert all(torch.equal(boost(d, 1.0)[k], d[k]) for k in d)
    assert global_norm(boost(d, 5.0)) == pytest.approx(5 * global_norm(d), rel=1e-5)


@pytest.mark.parametrize("radius", [0.01, 0.5, 3.0])
def test_projection_lands_inside_the_ball(radius):
    center = {"w": torch.randn(10, 10)}
    far = {"w": center["w"] + 10 * torch.randn(10, 10)}
    projected = project_l2(far, center, radius)
    assert global_norm(difference(projected, center)) <= radius * (1 + 1e-5)
    near = {"w": center["w"] + 1e-4}
    assert torch.allclose(project_l2(near, center, 1.0)["w"], near["w"])


def test_attack_boost_sources():
    hints = {"attack-round-examples": 3000, "attack-num-attackers": 2}
    job = TrainJob(*[None] * 6, hints, *[None] * 4)
    cfg = ExperimentConfig(attack=AttackConfig(name="boosted"))
    assert Boosted(cfg).boost(job, 100) == pytest.approx(15.0)
    fixed = ExperimentConfig(attack=AttackConfig(name="boosted", boost_factor=3.0))
    assert Boosted(fixed).boost(job, 100) == 3.0
    plain = ExperimentConfig(attack=AttackConfig(name="data_poisoning"))
    assert DataPoisoning(plain).boost(job, 100) is None


def _tiny(name: str, **fields):
    cfg = ExperimentConfig(model=ModelConfig(name="wu_mnist_cnn", conv_channels=[4, 8], hidden=[16]),
                           attack=AttackConfig(name=name, **fields))
    cfg.client.epochs, cfg.attack.epochs, cfg.client.lr = 2, 2, 0.1
    model = build_model(cfg.model, 1, 28, 10)
    rng = np.random.default_rng(0)
    local = (rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64))
    poison = (rng.integers(0, 256, (16, 1, 28, 28), dtype=np.uint8), np.ones(16, np.int64))
    return cfg, model, local, poison


@pytest.mark.parametrize("mix", ["union", "alternate"])
@pytest.mark.parametrize("factor", [1.0, 10.0, 30.0])
def test_norm_bounded_update_has_norm_at_most_M(factor, mix):
    cfg, model, local, poison = _tiny("norm_bounded", norm_bound=2.0)
    cfg.attack.data_mix = mix
    start = {k: v.clone() for k, v in model.state_dict().items()}
    sent, _ = craft_update(model, start, local, poison, cfg, factor, torch.device("cpu"),
                           torch.Generator().manual_seed(0), radius=2.0 / factor)
    assert global_norm(difference(sent, start)) <= 2.0 * (1 + 1e-4)


def test_boosted_update_is_factor_times_trained_change():
    cfg, model, local, poison = _tiny("boosted")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    sent, _ = craft_update(model, start, local, poison, cfg, 7.0, torch.device("cpu"),
                           torch.Generator().manual_seed(0))
    trained = model.state_dict()  # w* stays in the model
    expected = 7.0 * global_norm(difference(trained, start))
    assert global_norm(difference(sent, start)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9])
def test_pixel_pattern_stamps_exactly_n_pixels(n):
    mask, pattern = pixel_pattern(n, 28, 255)
    assert mask.sum() == n
    x = np.zeros((2, 1, 28, 28), np.uint8)
    out = stamp(x, mask, pattern)
    assert (out == 255).sum() == 2 * n and np.array_equal(out[:, 0] == 255, np.stack([mask > 0] * 2))


def test_dba_parts_are_disjoint_and_make_the_global_pattern():
    full, _ = dba_pattern(4, 28, 255)
    parts = [dba_pattern(4, 28, 255, part=i)[0] for i in range(4)]
    assert np.array_equal(sum(parts), full) and full.max() == 1.0
    assert all(p.sum() == 4 for p in parts)


def test_roles_are_seeded_and_disjoint():
    counts = [[5] * 10 for _ in range(50)]
    cfg = ExperimentConfig(num_clients=50, clients_per_round=10,
                           attack=AttackConfig(name="boosted", num_malicious=3, schedule="random",
                                               num_backdoor_tasks=10))
    roles = assign_roles(cfg, counts)
    assert roles == assign_roles(cfg, counts)
    assert len(roles.malicious) == 3 and len(roles.targets) == 10
    assert not set(roles.malicious) & set(roles.targets)
    assert assign_roles(dataclasses.replace(cfg, seed=1), counts) != roles
    assert assign_roles(ExperimentConfig(num_clients=50), counts).malicious == ()
    cfg.attack.num_backdoor_tasks = 49
    with pytest.raises(ValueError, match="need that many partitions"):
        assign_roles(cfg, counts)


def test_trigger_attackers_prefer_partitions_holding_the_victim_label():
    counts = [[5] * 10 if p in (3, 7) else [5] * 9 + [0] for p in range(10)]
    cfg = ExperimentConfig(attack=AttackConfig(name="boosted", task="pixel_pattern",
                                               num_malicious=2, schedule="random",
                                               source_label=9, target_label=1))
    assert sorted(assign_roles(cfg, counts).malicious) == [3, 7]


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    from conftest import SHARED_DATA, requires_shared_data  # noqa: F401
    if not (SHARED_DATA / "MNIST").exists():
        pytest.skip("shared MNIST absent")
    cfg = ExperimentConfig(num_clients=5, clients_per_round=5,
                           data=DataConfig(root=str(SHARED_DATA),
                                           cache_dir=str(tmp_path_factory.mktemp("c"))))
    cfg.dataset.max_train_samples = 2000
    return cfg, prepare(cfg)


def test_pixel_task_poisons_only_victims_and_test_set_excludes_target(mnist_cache):
    cfg, folder = mnist_cache
    cfg = dataclasses.replace(cfg, attack=AttackConfig(name="boosted", task="pixel_pattern",
                                                       source_label=9, target_label=1,
                                                       pattern_pixels=5))
    task = PixelPatternTask(cfg, folder, None)
    x, y = load_partition(folder, 0)
    px, py = task.poison(x, y, 0)
    assert len(px) == int((np.asarray(y) == 9).sum()) and set(py) == {1}
    mask, _ = pixel_pattern(5, 28, 255)
    assert np.all(px[:, 0][:, mask > 0] == 255)
    unmasked = np.asarray(x)[np.asarray(y) == 9][:, 0][:, mask == 0]
    assert np.array_equal(px[:, 0][:, mask == 0], unmasked), "only trigger pixels change"
    tx, ty = task.test_set()
    _, test_y = load_test(folder)
    assert len(ty) == int((np.asarray(test_y) == 9).sum()) and set(ty) == {1}


def test_semantic_task_is_the_target_partitions_source_images(mnist_cache):
    cfg, folder = mnist_cache
    cfg = dataclasses.replace(cfg, attack=AttackConfig(name="boosted", source_label=7,
                                                       target_label=1))
    from flbackdoor.roles import Roles
    task = SemanticTask(cfg, folder, Roles(malicious=(0,), targets=(2, 4)))
    sevens = sum(int((np.asarray(load_partition(folder, p)[1]) == 7).sum()) for p in (2, 4))
    x, y = task.test_set()
    assert len(x) == sevens > 0 and set(y) == {1}
    assert task.poison(*load_partition(folder, 0), 0)[0] is x


@pytest.mark.parametrize("mix, steps_per_epoch", [("union", 2), ("alternate", 2 + 1)])
def test_data_mix_decides_the_passes(mix, steps_per_epoch):
    """alternate (the TFF reference): a pass over D_trn, then one over D_mal, every epoch."""
    cfg, model, local, poison = _tiny("boosted")
    cfg.attack.data_mix, cfg.client.batch_size = mix, 48
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _, result = craft_update(model, start, local, poison, cfg, 1.0, torch.device("cpu"),
                             torch.Generator().manual_seed(0))
    # 64 local + 16 poisoned images, batch 48: union 2 batches; alternate 2 + 1.
    assert result.steps == cfg.client.epochs * steps_per_epoch
    assert result.num_examples == 80
