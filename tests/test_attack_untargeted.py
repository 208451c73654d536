"""The untargeted model-poisoning attacks: each one's math on tiny tensors against its paper's
invariant, the shared fallback, the config checks, and every attack's reply end to end on a tiny
model (the arrays it sends are w_t plus the crafted update)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from attacker.alie import alie_update, z_max
from attacker.base import TrainJob
from attacker.gaussian import gaussian_update
from attacker.ipm import ipm_update
from attacker.min_max import (PERTURBATIONS, max_distance, min_max_update, perturbation,
                              search_gamma, sum_distance)
from attacker.min_sum import min_sum_update
from attacker.sign_flip import flip
from attacker.untargeted import as_matrix
from conftest import attack_config as AttackConfig
from flbackdoor import protocol as P
from flbackdoor.config import ConfigError, ExperimentConfig, ModelConfig, validate
from flbackdoor.models import build_model
from flbackdoor.registries import ATTACKS
from flbackdoor.training import TrainResult

UNTARGETED = ("alie", "ipm", "min_max", "min_sum", "sign_flip", "gaussian")
OMNISCIENT = ("alie", "ipm", "min_max", "min_sum")


def _benign(k: int = 6, d: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.1 * torch.randn(k, d, generator=g)  # a shared direction plus spread


# --- ALIE ---------------------------------------------------------------------------------------

def test_z_max_follows_the_papers_z_table():
    # n = 10, m = 2: s = floor(6) - 2 = 4, Phi(z) < 6/10.
    assert z_max(10, 2) == pytest.approx(norm.ppf(0.6)) == pytest.approx(0.2533, abs=1e-4)
    assert z_max(50, 12) == pytest.approx(norm.ppf(36 / 50))  # s = 26 - 12 = 14
    assert z_max(10, 1) == 0.0  # s = 5: half the workers, Phi(z) < 1/2
    assert z_max(10, 6) == pytest.approx(norm.ppf(0.9))  # attacker majority: s taken as 1
    assert z_max(1, 1) == 0.0
    assert z_max(10, 3) > z_max(10, 2), "more attackers hide farther out"
    with pytest.raises(ValueError):
        z_max(3, 4)


@pytest.mark.parametrize("z", [0.0, 0.25, 1.5])
def test_alie_lies_within_z_standard_deviations_of_the_benign_mean(z):
    b = _benign()
    mean, std = b.mean(0), b.std(0, correction=0)
    sent = alie_update(b, z)
    assert torch.all((sent - mean).abs() <= z * std + 1e-6)
    assert torch.allclose(sent, mean - z * std)
    assert z == 0 or torch.all(sent < mean), "below the mean wherever the benign updates differ"


# --- IPM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("epsilon", [0.1, 4.0])
def test_ipm_is_minus_epsilon_times_the_benign_mean(epsilon):
    b = _benign()
    sent = ipm_update(b, epsilon)
    assert torch.allclose(sent, -epsilon * b.mean(0))
    assert float(sent @ b.mean(0)) < 0, "the inner product with the true update is negative"


# --- Min-Max and Min-Sum ------------------------------------------------------------------------

def test_the_gamma_search_finds_the_largest_success_to_within_tau():
    assert search_gamma(lambda g: g <= 3.7, 10.0, 1e-5) == pytest.approx(3.7, abs=2e-5)
    assert search_gamma(lambda g: g <= 3.7, 10.0, 1e-5) <= 3.7
    assert search_gamma(lambda g: g <= 12.5, 10.0, 1e-5) == pytest.approx(12.5, abs=2e-5)
    assert search_gamma(lambda g: False, 10.0, 1e-5) == 0.0
    assert search_gamma(lambda g: True, 10.0, 1e-5) == pytest.approx(20.0, abs=2e-5)  # the cap
    assert search_gamma(lambda g: g <= 1.0, 10.0, 1e-300) == pytest.approx(1.0)  # ends anyway


def test_perturbations_are_the_papers_three_directions():
    b = _benign()
    mean = b.mean(0)
    assert torch.allclose(perturbation(b, "unit_vec"), -mean / mean.norm())
    assert torch.allclose(perturbation(b, "std"), -b.std(0, correction=0))
    assert torch.equal(perturbation(b, "sign"), -torch.sign(mean))
    assert torch.equal(perturbation(torch.zeros(3, 4), "unit_vec"), torch.zeros(4))
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation(b, "zero")


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_min_max_is_as_far_as_the_farthest_benign_pair_and_no_farther(kind):
    b = _benign()
    bound = max(max_distance(b, row) for row in b)  # max_{i,j} ||b_i - b_j||^2
    sent, gamma = min_max_update(b, kind)
    p = perturbation(b, kind)
    assert torch.allclose(sent, b.mean(0) + gamma * p)
    assert 0 < gamma < 19, "found inside the search's range, not at its cap"
    assert max_distance(b, sent) <= bound
    assert max_distance(b, b.mean(0) + (gamma + 1e-4) * p) > bound, "gamma is the largest"


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_min_sum_stays_within_the_worst_benign_sum_of_squares_and_gamma_is_the_largest(kind):
    b = _benign()
    bound = max(sum_distance(b, row) for row in b)  # max_i sum_j ||b_i - b_j||^2
    sent, gamma = min_sum_update(b, kind)
    p = perturbation(b, kind)
    assert sum_distance(b, sent) <= bound
    assert sum_distance(b, b.mean(0) + (gamma + 1e-4) * p) > bound
    # sum_i ||mean + g p - b_i||^2 = sum_i ||mean - b_i||^2 + k g^2 ||p||^2: solve for g.
    spread = sum_distance(b, b.mean(0))
    exact = math.sqrt((bound - spread) / (len(b) * float(p.double().norm()) ** 2))
    assert gamma == pytest.approx(exact, abs=3e-5)


def test_identical_benign_updates_leave_no_room():
    b = torch.ones(4, 5)
    for update in (min_max_update, min_sum_update):
        sent, _ = update(b, "unit_vec")
        assert torch.allclose(sent, torch.ones(5))


# --- sign flip and Gaussian ---------------------------------------------------------------------

def test_sign_flip_is_minus_scale_times_the_honest_update():
    u = torch.randn(30)
    assert torch.equal(flip(u, 1.0), -u)
    assert torch.allclose(flip(u, 3.0), -3 * u)


@pytest.mark.parametrize("sigma", [0.01, 200.0])
def test_gaussian_update_has_mean_zero_and_std_sigma(sigma):
    noise = gaussian_update(200_000, sigma, torch.Generator().manual_seed(0))
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(noise.mean())) < 0.01 * sigma
    again = gaussian_update(200_000, sigma, torch.Generator().manual_seed(0))
    assert torch.equal(noise, again), "the node's seeded generator makes it reproducible"


# --- config -------------------------------------------------------------------------------------

def test_every_untargeted_attack_is_registered_without_a_backdoor_task():
    for name in UNTARGETED:
        config = ATTACKS[name].Config
        assert config.backdoor is False and config.omniscient is (name in OMNISCIENT)
        assert config().schedule == "random"
        validate(ExperimentConfig(attack=AttackConfig(name=name)))


@pytest.mark.parametrize("name, fields, top, match", [
    ("alie", {"num_malicious": 10}, {}, "may hold none"),
    ("ipm", {"num_malicious": 3}, {"clients_per_round": 3}, "may hold none"),
    ("min_max", {"schedule": "fixed_frequency"}, {"clients_per_round": 1}, "may hold none"),
    ("min_sum", {"num_malicious": 4}, {"num_clients": 4, "clients_per_round": 4}, "hold none"),
    ("alie", {"z": -1.0}, {}, "attack.z=-1.0"),
    ("ipm", {"epsilon": 0.0}, {}, "attack.epsilon=0.0"),
    ("min_max", {"perturbation": "zero"}, {}, "attack.perturbation='zero'"),
    ("min_sum", {"perturbation": "unit"}, {}, "attack.perturbation='unit'"),
    ("min_max", {"gamma_init": 0.0}, {}, "attack.gamma_init=0.0"),
    ("min_sum", {"tau": -1e-5}, {}, "attack.tau=-1e-05"),
    ("gaussian", {"sigma": -1.0}, {}, "attack.sigma=-1.0"),
    ("sign_flip", {"scale": 0.0}, {}, "attack.scale=0.0"),
    ("gaussian", {"schedule": "none"}, {}, "needs attack.schedule"),
])
def test_bad_values_fail_in_one_line(name, fields, top, match):
    cfg = ExperimentConfig(**top, attack=AttackConfig(name=name, **fields))
    with pytest.raises(ConfigError, match=match) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_an_omniscient_attack_runs_wherever_a_round_keeps_a_benign_update():
    validate(ExperimentConfig(clients_per_round=3,
                              attack=AttackConfig(name="ipm", num_malicious=2)))
    validate(ExperimentConfig(clients_per_round=2, attack=AttackConfig(
        name="alie", num_malicious=5, schedule="fixed_frequency")))  # one attacker a round


# --- replies, end to end on a tiny model --------------------------------------------------------

def _job(name: str, benign_count: int = 5, attackers: int = 2, **fields):
    cfg = ExperimentConfig(model=ModelConfig(name="wu_mnist_cnn", conv_channels=[4, 8],
                                             hidden=[16]),
                           attack=AttackConfig(name=name, **fields))
    model = build_model(cfg.model, 1, 28, 10)
    w_t = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n for n, _ in model.named_parameters()}
    g = torch.Generator().manual_seed(1)

    def update():  # as the server hands them over: every entry, buffers unchanged
        return {k: (0.01 * torch.randn(v.shape, generator=g) if k in params
                    else torch.zeros_like(v)) for k, v in w_t.items()}

    honest_delta = update()
    calls = []

    def honest():
        calls.append(1)
        return ({k: w_t[k] + honest_delta[k] for k in w_t},
                TrainResult(loss=0.5, num_examples=64, steps=2))

    rng = np.random.default_rng(0)
    local = (rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64))
    job = TrainJob(cfg, 3, 1, model, w_t, local,
                   {P.ATTACK_NUM_ATTACKERS: attackers, P.ATTACK_ROUND_EXAMPLES: 640}, None,
                   torch.device("cpu"), torch.Generator().manual_seed(7), honest,
                   [update() for _ in range(benign_count)])
    names = [k for k in w_t if k in params]
    return ATTACKS[name](cfg), job, names, honest_delta, calls


def _sent(reply, w_t, names):
    arrays = reply.arrays.to_torch_state_dict()
    assert set(arrays) == set(w_t)
    for k in w_t:
        if k not in names:  # buffers (the pruning mask) go back as w_t has them
            assert torch.equal(arrays[k], w_t[k])
    return as_matrix([{k: arrays[k] - w_t[k] for k in names}], names)[0]


@pytest.mark.parametrize("name", UNTARGETED)
def test_each_reply_is_w_t_plus_the_crafted_update(name):
    attack, job, names, honest_delta, calls = _job(name)
    benign = as_matrix(job.benign_updates, names)
    expected = {
        "alie": lambda: alie_update(benign, z_max(5 + 2, 2)),
        "ipm": lambda: ipm_update(benign, 0.1),
        "min_max": lambda: min_max_update(benign)[0],
        "min_sum": lambda: min_sum_update(benign)[0],
        "sign_flip": lambda: -as_matrix([honest_delta], names)[0],
        "gaussian": lambda: gaussian_update(benign.shape[1], 200.0,
                                            torch.Generator().manual_seed(7)),
    }[name]()
    reply = attack.reply(job)
    sent = _sent(reply, job.global_state, names)
    tol = 1e-3 if name == "gaussian" else 1e-6  # float32 rounding of w_t + a large update
    assert torch.allclose(sent, expected, atol=tol)
    assert reply.num_examples == 64 and math.isfinite(reply.loss)
    assert len(calls) == (name == "sign_flip"), "only sign_flip trains"


@pytest.mark.parametrize("name", OMNISCIENT)
def test_without_benign_updates_the_attackers_own_honest_update_stands_in(name, caplog):
    fields = {"z": 1.0} if name == "alie" else {}  # any z: one estimate has no spread
    attack, job, names, honest_delta, calls = _job(name, benign_count=0, **fields)
    with caplog.at_level("WARNING", logger="flwr"):
        sent = _sent(attack.reply(job), job.global_state, names)
    assert calls == [1] and "no benign update reached partition 3" in caplog.text
    own = as_matrix([honest_delta], names)[0]
    # One estimate: no spread, so ALIE, Min-Max and Min-Sum send it as it is.
    assert torch.allclose(sent, -0.1 * own if name == "ipm" else own, atol=1e-6)
