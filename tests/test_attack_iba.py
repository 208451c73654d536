"""IBA (attacker/iba.py) and its generator report (server/trigger_report.py): the generated
trigger stays within eps; training the generator against a model raises its target-class rate;
the attacker keeps the generator in its node state; the server adopts a valid generator into its
backdoor measurement and rejects every hostile one, keeping the previous generator; the update
stays within the norm bound."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from attacker.base import TrainJob
from attacker.iba import (IBA, IBATask, WEIGHT_BOUND, apply_trigger, new_generator,
                          train_generator, triggered)
from conftest import FakeGrid
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig, ModelConfig, validate
from flbackdoor.errors import ConfigError
from flbackdoor.models import build_model
from flbackdoor.roles import Roles
from flbackdoor.training import Normalizer, train
from flbackdoor.updates import difference, global_norm
from server.messaging import send_and_collect
from server.trigger_report import TriggerReport

pytestmark = pytest.mark.usefixtures("run_identity", "one_thread")


SIZE = 28
TINY = ModelConfig(name="wu_mnist_cnn", conv_channels=[4, 8], hidden=[16])


def _cfg(**fields) -> ExperimentConfig:
    attack = {"name": "iba", "num_malicious": 1, "schedule": "random", "source_label": 9,
              "target_label": 0, "gen_width": 4, **fields}
    return validate(ExperimentConfig(num_clients=3, clients_per_round=3, model=TINY,
                                     attack=attack))


def _random(generator, seed, scale=1.0):
    """``generator`` with every weight drawn anew (a trained one's last layer is not zero)."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in generator.parameters():
            p.copy_(scale * 0.3 * torch.randn(p.shape, generator=rng))
    return generator


def test_the_first_generator_is_no_trigger():
    generator = new_generator(3, 4, seed=0)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(apply_trigger(generator, x, 0.3), x)


@pytest.mark.parametrize("eps", [0.02, 0.3, 1.0])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_trigger_stays_within_eps_and_the_pixel_range(eps, channels):
    """Weights blown up saturate tanh: the perturbation reaches eps and goes no further."""
    generator = _random(new_generator(channels, 4, seed=0), 1, scale=50.0)
    x = torch.rand(8, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    out = apply_trigger(generator, x, eps)
    assert out.shape == x.shape
    assert 0 <= out.min() and out.max() <= 1
    gap = (out - x).abs().max()
    assert gap <= eps + 1e-6 and gap > 0.9 * min(eps, 0.5), float(gap)
    images = (x * 255).round().to(torch.uint8).numpy()
    stamped = triggered(generator, images, eps)
    assert stamped.dtype == np.uint8 and stamped.shape == images.shape
    # Rounding back to uint8 adds at most half a grey level.
    assert np.abs(stamped.astype(float) - images).max() <= eps * 255 + 0.5 + 1e-6


def _blocks(n: int, label: int, seed: int) -> torch.Tensor:
    """Dark noise; class 0 the same noise lifted to mid-grey everywhere; classes 1-8 a bright
    6x6 block along the bottom or the right; class 9 nothing. (A fully convolutional generator
    cannot place a block on featureless noise, but it can lift an image within eps.)"""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 1, SIZE, SIZE), dtype=np.uint8)
    if label == 0:
        x += 100
    elif label < 9:
        r, c = (20, 2 + 4 * (label - 1)) if label < 6 else (2 + 6 * (label - 6), 20)
        x[:, :, r:r + 6, c:c + 6] = 255
    return torch.from_numpy(x)


def _target_rate(model, generator, victims, eps, target=0) -> float:
    x = torch.from_numpy(triggered(generator, victims.numpy(), eps))
    with torch.no_grad():
        model.eval()
        out = model(Normalizer(ExperimentConfig().dataset, torch.device("cpu"))(x))
    return float((out.argmax(1) == target).float().mean())


def test_training_the_generator_raises_the_target_rate():
    """A tiny model that tells dark noise (class 9) from grey noise (class 0) and bright blocks:
    the generator has to learn to lift the victims towards grey within eps, w_t left as it
    is."""
    torch.manual_seed(1)
    cfg = _cfg()
    model = build_model(TINY, 1, SIZE, 10)
    x = torch.cat([_blocks(40, c, c) for c in range(10)])
    y = torch.arange(10).repeat_interleave(40)
    normalize = Normalizer(cfg.dataset, torch.device("cpu"))
    train(model, x, y, dataclasses.replace(cfg.client, epochs=3), normalize,
          torch.Generator().manual_seed(0))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    victims, eps = _blocks(64, 9, 99), 0.5
    generator = new_generator(1, 4, seed=0)
    before = _target_rate(model, generator, victims, eps)
    train_generator(generator, model, victims, 0, eps, epochs=5, lr=0.01, batch_size=32,
                    normalize=normalize, rng=torch.Generator().manual_seed(0))
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items()), "w_t untouched"
    assert all(p.requires_grad for p in model.parameters())
    after = _target_rate(model, generator, victims, eps)
    assert before <= 0.2 and after >= before + 0.5, (before, after)


def _cache(tmp_path, counts=None):
    """A test set of 4 victims (label 9), 2 others; every partition holds 9s."""
    x = np.random.default_rng(0).integers(0, 256, (6, 1, SIZE, SIZE), dtype=np.uint8)
    np.save(tmp_path / "test_x.npy", x)
    np.save(tmp_path / "test_y.npy", np.array([9, 9, 3, 9, 0, 9]))
    (tmp_path / "meta.json").write_text(json.dumps(
        {"label_counts": counts or [[5] * 10 for _ in range(3)]}))
    return tmp_path


def _job(cfg, tmp_path, rnd, state, local):
    torch.manual_seed(rnd)
    model = build_model(TINY, 1, SIZE, 10)
    return TrainJob(cfg, 0, rnd, model, {k: v.clone() for k, v in model.state_dict().items()},
                    local, {}, tmp_path, torch.device("cpu"), torch.Generator().manual_seed(rnd),
                    None, state=state)


def _local(n=40):
    rng = np.random.default_rng(3)
    return (rng.integers(0, 256, (n, 1, SIZE, SIZE), dtype=np.uint8),
            np.array([9, 1, 2, 3] * (n // 4)))


def test_the_attacker_keeps_its_generator_in_its_node_state_and_goes_on_from_it(tmp_path,
                                                                             monkeypatch):
    import attacker.iba as iba

    starts = []
    real = iba.train_generator

    def spy(generator, *args, **kwargs):
        starts.append({k: v.clone() for k, v in generator.state_dict().items()})
        return real(generator, *args, **kwargs)

    monkeypatch.setattr(iba, "train_generator", spy)
    cfg = _cfg(gen_epochs=1)
    state, local = RecordDict(), _local()
    attack = IBA(cfg)
    first = attack.backdoor_task(_job(cfg, tmp_path, 1, state, local), Roles((0,)))
    fresh = new_generator(1, 4, cfg.seed).state_dict()
    assert all(torch.equal(starts[0][k], v) for k, v in fresh.items()), "round 1: the seeded one"
    saved = {k: v.numpy() for k, v in state[P.TRIGGER].items()}
    assert first.check_report(saved) is None
    assert any(not np.array_equal(saved[k], fresh[k].numpy()) for k in saved), "it trained"
    second = attack.backdoor_task(_job(cfg, tmp_path, 2, state, local), Roles((0,)))
    assert all(np.array_equal(starts[1][k].numpy(), v) for k, v in saved.items()), \
        "round 2 goes on from the saved generator"
    assert all(np.array_equal(state[P.TRIGGER][k].numpy(), v)
               for k, v in second.report().items())
    # A tampered state (NaN weights) is not adopted: the attacker starts from the seeded one.
    state[P.TRIGGER] = ArrayRecord({k: Array(np.full_like(v, np.nan)) for k, v in saved.items()})
    attack.backdoor_task(_job(cfg, tmp_path, 3, state, local), Roles((0,)))
    assert all(torch.equal(starts[2][k], v) for k, v in fresh.items())


@pytest.mark.parametrize("bound", [0.5, 2.0])
def test_the_reply_stays_within_the_norm_bound(tmp_path, bound):
    cfg = _cfg(gen_epochs=1, norm_bound=bound, boost_factor=3.0)
    cfg.client.lr = 0.5  # steps large enough to leave the ball without the projection
    job = _job(cfg, _cache(tmp_path), 1, RecordDict(), _local(64))
    start = {k: v.clone() for k, v in job.global_state.items()}
    reply = IBA(cfg).reply(job)
    sent = {k: torch.from_numpy(v.numpy()) for k, v in reply.arrays.items()}
    norm = float(global_norm(difference(sent, start)))
    assert 0 < norm <= bound + 1e-4, norm
    assert norm > 0.5 * bound, "the update reached the ball's edge"
    assert P.TRIGGER in job.state


@pytest.mark.parametrize("fields, message", [
    ({"trigger_eps": 0.0}, "attack.trigger_eps=0.0 must be in (0, 1]"),
    ({"trigger_eps": -0.1}, "attack.trigger_eps=-0.1 must be in (0, 1]"),
    ({"trigger_eps": 1.5}, "attack.trigger_eps=1.5 must be in (0, 1]"),
    ({"gen_epochs": 0}, "attack.gen_epochs=0 must be at least 1"),
    ({"gen_lr": 0.0}, "attack.gen_lr=0.0 must be positive"),
    ({"gen_width": 0}, "attack.gen_width=0 must be at least 1"),
    ({"norm_bound": 0.0}, "attack.norm_bound=0.0 must be positive"),
    ({"boost_factor": -1.0}, "attack.boost_factor=-1.0 must be >= 0"),
    ({"task": "pixel_pattern"}, "attack.task='pixel_pattern' must be iba"),
])
def test_bad_iba_settings_fail_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")) as err:
        _cfg(**fields)
    assert "\n" not in str(err.value)


def test_an_image_side_the_generator_cannot_halve_twice_fails():
    cfg = ExperimentConfig(num_clients=3, clients_per_round=3, model=TINY, attack={
        "name": "iba", "num_malicious": 1, "schedule": "random"})
    cfg.dataset.image_size = 30
    with pytest.raises(ConfigError, match="image_size=30 must be divisible by 4"):
        validate(cfg)


# ---- the generator report -----------------------------------------------------------------


class Measurement:
    def __init__(self):
        self.backdoor = None

    def set_backdoor(self, backdoor):
        self.backdoor = backdoor


def _report(tmp_path, answer, **fields):
    """One trigger query to partition 2's node (id 102), answered with ``answer``."""
    task = IBATask(_cfg(**fields), _cache(tmp_path), Roles((2,)))
    measurement = Measurement()
    grid = FakeGrid([102], lambda node_id, msg: answer(task))
    before = {k: v.clone() for k, v in task.generator.state_dict().items()}
    entry = TriggerReport(task, measurement).refresh(
        lambda msgs: send_and_collect(grid, msgs, 0.3, 0.01), 4, 2, 102)
    assert [m.metadata.message_type for m in grid.sent] == [P.TRIGGER_REPORT]
    return entry, task, before, measurement


def _weights(seed=7, **changes):
    arrays = {k: v.numpy().copy()
              for k, v in _random(new_generator(1, 4, 0), seed).state_dict().items()}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def _trigger(arrays):
    return RecordDict({P.TRIGGER: ArrayRecord({k: Array(v) for k, v in arrays.items()})})


FIRST = "net.0.weight"
HOSTILE = {
    "no record": (lambda: RecordDict(), "records [] are not"),
    "a missing array": (lambda: _trigger(_weights(**{FIRST: None})), "are not exactly"),
    "an extra array": (lambda: _trigger({**_weights(), "extra": np.zeros(3, np.float32)}),
                       "are not exactly"),
    "renamed arrays": (lambda: _trigger({"x" + k: v for k, v in _weights().items()}),
                       "are not exactly"),
    "wrong shape": (lambda: _trigger(_weights(**{FIRST: np.zeros((4, 1, 3, 3), np.float32)})),
                    f"{FIRST}: float32 (4, 1, 3, 3) is not float32 (4, 1, 4, 4)"),
    "wrong dtype": (lambda: _trigger(_weights(**{FIRST: np.zeros((4, 1, 4, 4))})),
                    f"{FIRST}: float64"),
    "NaN": (lambda: _trigger(_weights(**{FIRST: np.full((4, 1, 4, 4), np.nan, np.float32)})),
            f"{FIRST}: non-finite values"),
    "huge weights": (lambda: _trigger(_weights(**{FIRST: np.full((4, 1, 4, 4), 1e6,
                                                                  np.float32)})),
                     f"outside the trigger's budget: {FIRST}: |weight| 1e+06 exceeds"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_generator_report_is_rejected_and_the_previous_generator_kept(case, tmp_path,
                                                                               caplog):
    answer, reason = HOSTILE[case]
    with caplog.at_level("WARNING", logger="flwr"):
        entry, task, before, measurement = _report(tmp_path, lambda t: answer())
    assert entry["accepted"] is False and entry["partition"] == 2
    assert reason in entry["reason"], entry["reason"]
    assert f"trigger report of partition 2 rejected: {entry['reason']}" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in task.generator.state_dict().items())
    assert measurement.backdoor is None


def test_check_report_alone_rejects_what_the_channel_would_not_see():
    """The attacker also checks its own saved generator (a tampered node state)."""
    task = IBATask(_cfg(), None, Roles((0,)))
    assert task.check_report(_weights()) is None
    assert "are not exactly" in task.check_report(_weights(**{FIRST: None}))
    assert "shape (2,) is not" in task.check_report(_weights(**{FIRST: np.zeros(2, np.float32)}))
    big = np.full((4, 1, 4, 4), 2 * WEIGHT_BOUND, np.float32)
    assert "exceeds" in task.check_report(_weights(**{FIRST: big}))


def test_a_valid_generator_report_changes_the_backdoor_test_set(tmp_path):
    entry, task, before, measurement = _report(tmp_path, lambda t: _trigger(_weights(seed=7)))
    assert entry == {"partition": 2, "accepted": True}
    x, y = measurement.backdoor
    assert len(y) == 4 and set(y.tolist()) == {0}, "the victims, relabelled to the target"
    victims = np.load(tmp_path / "test_x.npy")[[0, 1, 3, 5]]
    assert np.array_equal(x, triggered(_random(new_generator(1, 4, 0), 7), victims, 0.3))
    initial_x, _ = IBATask(_cfg(), tmp_path, Roles((2,))).test_set()
    assert np.array_equal(initial_x, victims), "before any report: the untrained generator's"
    assert not np.array_equal(x, initial_x)
    assert np.abs(x.astype(int) - victims).max() <= round(0.3 * 255) + 1
