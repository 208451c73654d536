"""ABL's math (defenses/abl.py) on tiny tensors, and its config checks."""

import numpy as np
import pytest
import torch
from torch import nn

from defenses.abl import (complement_loss, gga_loss, isolate, isolation_count,
                          isolation_precision, lga_loss, per_example_losses, train_gga, train_lga)
from flbackdoor.config import ClientConfig, ConfigError, DatasetConfig, ExperimentConfig, validate
from flbackdoor.training import Normalizer


def test_lga_flips_the_sign_below_gamma():
    losses = torch.tensor([0.1, 0.4, 0.6, 2.0])
    # Per example: below gamma the loss counts negatively (ascent), above it positively.
    assert lga_loss(losses, 0.5, per_example=True).item() == pytest.approx(
        (-0.1 - 0.4 + 0.6 + 2.0) / 4)
    # On the minibatch mean (the authors' code): one sign for the whole batch.
    assert lga_loss(losses, 0.5).item() == pytest.approx(0.775)
    assert lga_loss(losses, 1.0).item() == pytest.approx(-0.775)
    assert lga_loss(torch.tensor([0.1, 0.2]), 0.5).item() == pytest.approx(-0.15)


def test_lga_gradient_ascends_below_gamma_and_descends_above():
    low = torch.tensor([0.2], requires_grad=True)
    lga_loss(low, 0.5, per_example=True).backward()
    high = torch.tensor([0.9], requires_grad=True)
    lga_loss(high, 0.5, per_example=True).backward()
    assert low.grad.item() == -1.0 and high.grad.item() == 1.0


def test_isolation_picks_exactly_the_lowest_fraction():
    losses = torch.tensor([0.5, 0.01, 0.3, 0.02, 0.9, 0.7, 0.001, 0.6, 0.8, 0.4])
    assert isolate(losses, 0.3).tolist() == [6, 1, 3]
    assert isolation_count(10, 0.3) == 3 and isolation_count(1000, 0.01) == 10
    assert isolation_count(50, 0.01) == 1  # at least one example
    assert isolation_count(0, 0.01) == 0
    rng = torch.Generator().manual_seed(0)
    big = torch.rand(1000, generator=rng)
    picked = isolate(big, 0.01)
    assert len(picked) == 10
    assert big[picked].max() < big[np.setdiff1d(np.arange(1000), picked.numpy())].min()


def test_isolation_precision():
    assert isolation_precision(np.array([1, 2, 3, 4]), np.array([2, 4, 9])) == 0.5
    assert isolation_precision(np.array([], np.int64), np.array([1])) == 0.0


def test_gga_descends_on_the_rest_and_ascends_on_the_isolated_set():
    rest = torch.tensor([0.4, 0.6], requires_grad=True)
    iso = torch.tensor([0.1, 0.3], requires_grad=True)
    loss = gga_loss(rest, iso)
    assert loss.item() == pytest.approx(0.5 - 0.2)
    loss.backward()
    # Minimising it lowers the rest's losses and raises the isolated ones'.
    assert torch.all(rest.grad > 0) and torch.all(iso.grad < 0)
    assert gga_loss(rest.detach(), torch.zeros(0)).item() == pytest.approx(0.5)


def test_complement_loss_is_minus_log_one_minus_p_and_stays_finite():
    logits = torch.tensor([[2.0, 0.0, -1.0], [50.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    got = complement_loss(logits, y)
    assert got[0].item() == pytest.approx(-torch.log1p(-p[0]).item(), rel=1e-5)
    assert torch.isfinite(got).all() and got[1].item() == pytest.approx(50 - np.log(2), rel=1e-4)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: thread hand-offs would cost more than the math on a busy machine."""


def _toy(n=200, seed=0):
    """A 2-class problem whose last 20 examples are 'poisoned': a bright feature, label 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 120, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = (x.float().mean((1, 2, 3)) > 60).long()
    x[-20:, 0, 0, 0] = 255
    y[-20:] = 1
    return x, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def test_gga_training_raises_the_isolated_examples_loss():
    x, y = _toy()
    norm = Normalizer(DatasetConfig(mean=[0.2], std=[0.3]), torch.device("cpu"))
    cfg = ClientConfig(batch_size=32, lr=0.05, momentum=0.9)
    model = _model()
    train_lga(model, x, y, cfg, 0.0, norm, 10, torch.Generator().manual_seed(0))
    isolated = torch.arange(180, 190)
    before = per_example_losses(model, x, y, norm)
    for ascent in ("complement", "ce"):
        m = _model()
        m.load_state_dict(model.state_dict())
        result = train_gga(m, x, y, isolated, cfg, 0.05, norm, 3, torch.Generator().manual_seed(0),
                           ascent)
        after = per_example_losses(m, x, y, norm)
        assert after[isolated].mean() > before[isolated].mean() + 0.5, ascent
        assert result.num_examples == 190 and np.isfinite(result.loss)


@pytest.mark.parametrize("change, message", [
    (dict(kind="trojan"), "poisoning.kind='trojan' is not one of"),
    (dict(kind="badnets", rate=0.0), "poisoning.rate=0.0 must be in (0, 1)"),
    (dict(kind="badnets", target_label=10), "poisoning.target_label=10 is not a label"),
    (dict(kind="badnets", num_clients=0), "needs poisoning.num_clients >= 1"),
    (dict(kind="badnets", num_clients=11), "poisoning.num_clients=11 must be between 0 and"),
    (dict(kind="blend", num_clients=1, blend_alpha=1.5), "poisoning.blend_alpha=1.5 must be"),
])
def test_poisoning_config_errors(change, message):
    cfg = ExperimentConfig()
    for k, v in change.items():
        setattr(cfg.poisoning, k, v)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (dict(name="nad"), "client_defense.name='nad' is not one of"),
    (dict(name="abl", lga_rounds=3), "client_defense.lga_rounds=3 must be between 1 and"),
    (dict(name="abl", lga_rounds=0), "client_defense.lga_rounds=0 must be between 1 and"),
    (dict(isolation_fraction=0.0), "client_defense.isolation_fraction=0.0 must be in (0, 1)"),
    (dict(gamma=-1.0), "client_defense.gamma=-1.0 must be >= 0"),
    (dict(ascent="up"), "client_defense.ascent='up' is not one of"),
    (dict(clients="clean"), "client_defense.clients='clean' is not one of"),
    (dict(name="abl", lga_rounds=1, pretrain=5), "client_defense=abl needs pretrain_rounds=0"),
])
def test_client_defense_config_errors(change, message):
    change = dict(change)
    cfg = ExperimentConfig(num_rounds=3, pretrain_rounds=change.pop("pretrain", 0))
    for k, v in change.items():
        setattr(cfg.client_defense, k, v)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_centralized_mode_takes_no_attack():
    cfg = ExperimentConfig(attack={"name": "boosted", "schedule": "random"})
    cfg.federation.mode = "centralized"
    with pytest.raises(ConfigError, match="needs a federation"):
        validate(cfg)


def test_client_isolates_once_after_lga_rounds_and_keeps_the_set_in_node_state():
    from flwr.app import RecordDict

    from client.abl import STATE_KEY, abl_train

    x, y = _toy()
    norm = Normalizer(DatasetConfig(mean=[0.2], std=[0.3]), torch.device("cpu"))
    cfg = ExperimentConfig(num_rounds=4)
    cfg.client_defense.name, cfg.client_defense.lga_rounds = "abl", 2
    cfg.client_defense.isolation_fraction = 0.05
    cfg.client.batch_size, cfg.client.epochs = 32, 3
    poisoned = np.arange(180, 200)
    model, state = _model(), RecordDict()
    for rnd in (1, 2):
        _, metrics = abl_train(model, x, y, poisoned, cfg, rnd, state, norm,
                               torch.Generator().manual_seed(rnd))
        assert metrics == {"isolated_count": 0, "isolated_poisoned": 0, "poisoned_count": 20}
        assert STATE_KEY not in state.config_records
    _, metrics = abl_train(model, x, y, poisoned, cfg, 3, state, norm,
                           torch.Generator().manual_seed(3))
    first = list(state.config_records[STATE_KEY]["isolated"])
    assert metrics["isolated_count"] == len(first) == 10
    assert metrics["isolated_poisoned"] == np.isin(first, poisoned).sum()
    _, again = abl_train(model, x, y, poisoned, cfg, 4, state, norm,
                         torch.Generator().manual_seed(4))
    assert list(state.config_records[STATE_KEY]["isolated"]) == first and again == metrics
    assert state.config_records[STATE_KEY]["round"] == 3
    # A node that does not run ABL (clients=poisoned) reports the same keys: Flower refuses to
    # aggregate replies whose metrics differ.
    from client.abl import isolation_report
    assert isolation_report([], poisoned) == {"isolated_count": 0, "isolated_poisoned": 0,
                                               "poisoned_count": 20}


def test_only_poisoned_clients_run_abl_under_the_oracle_switch():
    from client.abl import runs_abl

    cfg = ExperimentConfig()
    none, some = np.zeros(0, np.int64), np.arange(3)
    assert not runs_abl(cfg, some)  # client_defense=none
    cfg.client_defense.name = "abl"
    assert runs_abl(cfg, none) and runs_abl(cfg, some)
    cfg.client_defense.clients = "poisoned"
    assert not runs_abl(cfg, none) and runs_abl(cfg, some)


def test_presets_compose_and_paper_scale_repeats_the_cifar_groups_exactly():
    import yaml

    from conftest import resolved as composed
    from launcher.cli import CONF_DIR

    cpu = composed("experiment=abl2021_centralized_sig")
    assert (cpu.federation.mode, cpu.poisoning.kind, cpu.client_defense.name) == (
        "centralized", "sig", "abl")
    assert composed("experiment=abl2021_centralized_badnets",
                    "dataset=fashion_mnist").dataset.name == "fashion_mnist"
    fed = composed("experiment=abl2021_federated_badnets")
    assert (fed.num_clients, fed.poisoning.num_clients, fed.poisoning.rate) == (10, 3, 0.1)
    paper = composed("experiment=abl2021_centralized_blend", "scale=paper")
    assert paper.poisoning.kind == "blend"
    assert (paper.num_rounds, paper.client_defense.lga_rounds, paper.client_defense.gamma) == (
        100, 20, 0.5)
    for group, name, got in (("dataset", "cifar10", paper.dataset),
                             ("model", "wu_cifar_cnn", paper.model)):
        for key, value in yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text()).items():
            assert getattr(got, key) == value, (group, key)
