"""Chameleon (attacker/chameleon.py): its supervised contrastive loss on tiny feature batches,
its config's range checks, and its update: within the norm bound, and not the norm-bounded
attack's."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from attacker.base import TrainJob
from attacker.chameleon import Chameleon, chameleon_update, contrastive_loss
from attacker.crafting import craft_update
from attacker.norm_bounded import NormBounded
from conftest import attack_config
from flbackdoor.config import DataConfig, ExperimentConfig, ModelConfig, validate
from flbackdoor.errors import ConfigError
from flbackdoor.models import build_model
from flbackdoor.updates import difference, global_norm

SOURCE, TARGET = 9, 0


def test_three_samples_by_hand():
    """A poisoned 9 at (1, 0), a clean 0 at (0.6, 0.8), a clean 9 at (0, 1); tau = 1. The
    poisoned image and the 0 are each other's only positive; the 9 has none and does not count:
    L = 1/2 [(log(e^0.6 + e^0) - 0.6) + (log(e^0.6 + e^0.8) - 0.6)]."""
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([SOURCE, TARGET, SOURCE])
    poisoned = torch.tensor([True, False, False])
    by_hand = ((math.log(math.exp(0.6) + 1) - 0.6)
               + (math.log(math.exp(0.6) + math.exp(0.8)) - 0.6)) / 2
    assert contrastive_loss(z, labels, poisoned, TARGET, 1.0).item() == pytest.approx(by_hand)
    # Both anchors that count are of the target class: w scales the whole loss.
    assert contrastive_loss(z, labels, poisoned, TARGET, 1.0, target_weight=3.0).item() \
        == pytest.approx(3 * by_hand)
    # tau = 0.5 doubles every logit.
    halved = ((math.log(math.exp(1.2) + 1) - 1.2)
              + (math.log(math.exp(1.2) + math.exp(1.6)) - 1.2)) / 2
    assert contrastive_loss(z, labels, poisoned, TARGET, 0.5).item() == pytest.approx(halved)


def _peers(poison_at: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two clean 0s at (1, 0), two clean 9s at (0, 1), and two poisoned 9s at ``poison_at``."""
    z = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.05, 1.0], poison_at,
                      [poison_at[0] * 0.9, poison_at[1]]])
    labels = torch.tensor([TARGET, TARGET, SOURCE, SOURCE, SOURCE, SOURCE])
    poisoned = torch.tensor([False, False, False, False, True, True])
    return z, labels, poisoned


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_lower_when_the_poisoned_features_sit_with_the_target_class(tau):
    with_target = contrastive_loss(*_peers([1.0, 0.1]), TARGET, tau)
    with_source = contrastive_loss(*_peers([0.1, 1.0]), TARGET, tau)
    assert with_target < with_source


def test_poisoned_images_count_in_the_target_class_whatever_label_they_carry():
    z, labels, poisoned = _peers([0.5, 0.5])
    relabelled = torch.where(poisoned, TARGET, labels)
    assert torch.allclose(contrastive_loss(z, labels, poisoned, TARGET),
                          contrastive_loss(z, relabelled, poisoned, TARGET))
    # Unflagged, they would be 9s: a different loss.
    assert not torch.allclose(contrastive_loss(z, labels, poisoned, TARGET),
                              contrastive_loss(z, labels, torch.zeros_like(poisoned), TARGET))


def test_invariant_to_a_permutation_of_the_batch_and_to_the_features_scale():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=g)
    labels = torch.randint(0, 4, (12,), generator=g)
    poisoned = torch.rand(12, generator=g) < 0.3
    loss = contrastive_loss(z, labels, poisoned, 1, 0.07, target_weight=2.0)
    perm = torch.randperm(12, generator=g)
    assert torch.allclose(loss, contrastive_loss(z[perm], labels[perm], poisoned[perm], 1, 0.07,
                                                 target_weight=2.0))
    assert torch.allclose(loss, contrastive_loss(7 * z, labels, poisoned, 1, 0.07,
                                                 target_weight=2.0))


def test_gradient_is_finite_and_a_batch_without_pairs_gives_zero():
    z = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    contrastive_loss(z, labels, torch.zeros(6, dtype=torch.bool), 0).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    alone = contrastive_loss(z, torch.arange(6), torch.zeros(6, dtype=torch.bool), 0)
    assert alone.item() == 0.0


def _cfg(**fields) -> ExperimentConfig:
    return ExperimentConfig(attack=attack_config(name="chameleon", **fields))


def test_defaults_validate():
    validate(_cfg())


@pytest.mark.parametrize("key, value", [
    ("norm_bound", 0.0), ("temperature", 0.0), ("temperature", -0.1), ("target_weight", 0.0),
    ("contrastive_epochs", 0), ("head_epochs", -1), ("contrastive_lr", 0.0), ("head_lr", -1.0),
    ("momentum", 1.0), ("weight_decay", -0.1), ("batch_size", 1), ("boost_factor", -1.0)])
def test_out_of_range_values_fail_in_one_line(key, value):
    with pytest.raises(ConfigError, match=f"attack.{key}=") as err:
        validate(_cfg(**{key: value}))
    assert "\n" not in str(err.value)


def _tiny(**fields):
    cfg = ExperimentConfig(model=ModelConfig(name="wu_mnist_cnn", conv_channels=[4, 8],
                                             hidden=[16]),
                           attack=attack_config(name="chameleon", **fields))
    cfg.client.lr = 0.1
    model = build_model(cfg.model, 1, 28, 10)
    rng = np.random.default_rng(0)
    local = (rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64))
    poison = (rng.integers(0, 256, (16, 1, 28, 28), dtype=np.uint8),
              np.full(16, TARGET, np.int64))
    return cfg, model, local, poison


@pytest.mark.parametrize("factor", [1.0, 5.0])
def test_update_stays_within_the_norm_bound_and_is_not_the_norm_bounded_one(factor):
    cfg, model, local, poison = _tiny(norm_bound=2.0, batch_size=16, contrastive_lr=0.5,
                                      head_lr=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    sent, result = chameleon_update(model, start, local, poison, cfg, factor,
                                    torch.device("cpu"), torch.Generator().manual_seed(0))
    norm = global_norm(difference(sent, start))
    assert 0 < norm <= 2.0 * (1 + 1e-4)
    assert result.steps == (2 + 2) * 5 and result.num_examples == 80

    model.load_state_dict(start)
    bounded_cfg = dataclasses.replace(cfg, attack=attack_config(name="norm_bounded",
                                                                norm_bound=2.0))
    other, _ = craft_update(model, start, local, poison, bounded_cfg, factor, torch.device("cpu"),
                            torch.Generator().manual_seed(0), radius=2.0 / factor)
    assert global_norm(difference(sent, other)) > 1e-3 * norm


def test_the_head_stage_moves_only_the_last_linear():
    cfg, model, local, poison = _tiny(contrastive_lr=1e-12, head_lr=0.5, weight_decay=0.0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    sent, _ = chameleon_update(model, start, local, poison, cfg, 1.0, torch.device("cpu"),
                               torch.Generator().manual_seed(0))
    moved = {k for k, v in difference(sent, start).items() if v.abs().max() > 1e-6}
    assert moved == {"classifier.3.weight", "classifier.3.bias"}


@pytest.fixture(scope="module")
def mnist_job(tmp_path_factory):
    from conftest import SHARED_DATA
    from flbackdoor.data.cache import load_partition, prepare
    from flbackdoor.roles import roles_for

    if not (SHARED_DATA / "MNIST").exists():
        pytest.skip("shared MNIST absent")
    cfg = ExperimentConfig(num_clients=5, clients_per_round=5,
                           model=ModelConfig(name="wu_mnist_cnn", conv_channels=[4, 8],
                                             hidden=[16]),
                           data=DataConfig(root=str(SHARED_DATA),
                                           cache_dir=str(tmp_path_factory.mktemp("c"))),
                           attack=attack_config(name="chameleon", task="pixel_pattern",
                                                source_label=SOURCE, target_label=TARGET,
                                                norm_bound=3.0))
    cfg.dataset.max_train_samples = 2000
    folder = prepare(cfg)
    pid = roles_for(cfg, folder).malicious[0]

    def job(cfg: ExperimentConfig) -> TrainJob:
        torch.manual_seed(0)
        model = build_model(cfg.model, 1, 28, 10)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        hints = {"attack-round-examples": 2000, "attack-num-attackers": 1}
        return TrainJob(cfg, pid, 1, model, state, load_partition(folder, pid), hints, folder,
                        torch.device("cpu"), torch.Generator().manual_seed(0), None)

    return cfg, job


def test_reply_on_real_data_is_bounded_and_differs_from_norm_bounded(mnist_job):
    cfg, job = mnist_job
    first = job(cfg)
    reply = Chameleon(cfg).reply(first)
    sent = reply.arrays.to_torch_state_dict()
    norm = global_norm(difference(sent, first.global_state))
    assert 0 < norm <= 3.0 * (1 + 1e-4)
    assert reply.num_examples == len(first.local[1])

    bounded_cfg = dataclasses.replace(cfg, attack=attack_config(
        name="norm_bounded", task="pixel_pattern", source_label=SOURCE, target_label=TARGET,
        norm_bound=3.0, boost_factor=1.0))
    second = job(bounded_cfg)
    other = NormBounded(bounded_cfg).reply(second).arrays.to_torch_state_dict()
    assert all(torch.equal(first.global_state[k], second.global_state[k])
               for k in first.global_state)
    assert global_norm(difference(sent, other)) > 0.1 * norm
