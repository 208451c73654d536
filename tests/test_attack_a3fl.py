"""A3FL (attacker/a3fl.py) and the trigger report (server/trigger_report.py): the optimised
trigger stays within its budget and does raise a model's target-class rate; the attacker keeps
it in its node state; the server adopts a valid report into its backdoor measurement and
rejects every hostile one with a logged reason, keeping the previous trigger."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from attacker.a3fl import A3FL, A3FLTask, budget_violation, optimise_trigger, project_trigger
from attacker.base import TrainJob
from attacker.triggers import patch_mask
from conftest import FakeGrid, attack_config
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig, ModelConfig, validate
from flbackdoor.errors import ConfigError
from flbackdoor.models import build_model
from flbackdoor.roles import Roles
from flbackdoor.training import Normalizer
from server.messaging import send_and_collect
from server.trigger_report import TriggerReport

pytestmark = pytest.mark.usefixtures("run_identity", "one_thread")


SIZE = 28
TINY = ModelConfig(name="wu_mnist_cnn", conv_channels=[4, 8], hidden=[16])


def _cfg(**fields) -> ExperimentConfig:
    attack = {"name": "a3fl", "num_malicious": 1, "schedule": "random", "source_label": 9,
              "target_label": 0, **fields}
    return validate(ExperimentConfig(num_clients=3, clients_per_round=3, model=TINY,
                                     attack=attack))


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, SIZE, SIZE),
                                                                 dtype=np.uint8))


def _optimise(cfg: ExperimentConfig, model, start=None):
    a = cfg.attack
    mask = patch_mask(a.trigger_size, SIZE)
    init = (mask * np.float32(a.trigger_init))[None]
    data = (_images(48, 1), torch.from_numpy(np.random.default_rng(2).integers(0, 10, 48)))
    return mask, init, optimise_trigger(
        model, _images(40, 0), data, a.target_label, mask, init if start is None else start, init,
        a, cfg.client, Normalizer(cfg.dataset, torch.device("cpu")),
        torch.Generator().manual_seed(0))


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.0])
def test_the_optimised_trigger_stays_within_its_budget(eps):
    """Large steps push every pixel to its bounds; Pi keeps them in the patch, in [0, 1] and
    within eps of the start, with and without the adversarial model."""
    torch.manual_seed(0)
    cfg = _cfg(trigger_eps=eps, trigger_lr=0.2, trigger_epochs=3, adv_interval=1, lambda0=1.0)
    mask, init, pattern = _optimise(cfg, build_model(TINY, 1, SIZE, 10))
    assert pattern.shape == (1, SIZE, SIZE) and pattern.dtype == np.float32
    assert np.all(pattern[0][mask == 0] == 0), "nothing outside the patch"
    assert 0 <= pattern.min() and pattern.max() <= 1
    assert np.abs(pattern - init).max() <= eps + 1e-6
    assert np.abs(pattern - init).max() > min(eps, 0.5) - 1e-6, "the steps reached the bound"
    assert budget_violation(pattern, mask, init, eps) is None
    # A start outside the budget (a tampered node state) is projected into it first.
    _, _, again = _optimise(cfg, build_model(TINY, 1, SIZE, 10), start=np.full_like(init, 7.0))
    assert budget_violation(again, mask, init, eps) is None


def test_projection_and_budget_check_agree_on_what_is_outside():
    mask = patch_mask(3, 8)
    init = (mask * np.float32(0.5))[None]
    wild = np.random.default_rng(0).normal(0, 3, init.shape).astype(np.float32)
    inside = project_trigger(torch.from_numpy(wild), torch.from_numpy(mask),
                             torch.from_numpy(init), 0.2).numpy()
    assert budget_violation(inside, mask, init, 0.2) is None
    assert "outside the trigger's mask" in budget_violation(wild, mask, init, 0.2)
    assert "outside [0, 1]" in budget_violation(np.where(mask > 0, 1.5, 0)[None].astype(
        np.float32), mask, init, 1.0)
    assert "exceeds trigger_eps=0.2" in budget_violation(mask[None] * np.float32(0.9), mask,
                                                           init, 0.2)


def _blocks(n: int, label: int, seed: int) -> torch.Tensor:
    """Dark noise, with a bright 6x6 block where ``label`` puts it: class 0's inside the
    trigger's patch (2..7), classes 1-8 along the bottom and right; class 9 has none."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 1, SIZE, SIZE), dtype=np.uint8)
    if label < 9:
        r, c = (2, 2) if label == 0 else ((20, 2 + 4 * (label - 1)) if label < 6 else
                                          (2 + 6 * (label - 6), 20))
        x[:, :, r:r + 6, c:c + 6] = 255
    return torch.from_numpy(x)


def _target_rate(model, victims, mask, pattern, target) -> float:
    from attacker.triggers import stamp

    x = torch.from_numpy(stamp(victims.numpy(), mask, pattern * 255.0))
    with torch.no_grad():
        model.eval()
        out = model(Normalizer(ExperimentConfig().dataset, torch.device("cpu"))(x))
    return float((out.argmax(1) == target).float().mean())


@pytest.mark.parametrize("adversarial", [False, True])
def test_the_optimisation_raises_the_target_rate_over_the_initial_trigger(adversarial):
    """A tiny model that tells apart where a bright block sits (class 9: nowhere): from a
    black patch, the trigger has to find class 0's block within its budget."""
    from flbackdoor.training import train

    torch.manual_seed(1)
    cfg = _cfg(trigger_size=6, trigger_init=0.0, trigger_lr=0.05, trigger_epochs=8,
               adv_interval=2, adv_epochs=1 if adversarial else 0, lambda0=1.0)
    model = build_model(TINY, 1, SIZE, 10)
    x = torch.cat([_blocks(40, c, c) for c in range(10)])
    y = torch.arange(10).repeat_interleave(40)
    normalize = Normalizer(cfg.dataset, torch.device("cpu"))
    train(model, x, y, dataclasses.replace(cfg.client, epochs=3), normalize,
          torch.Generator().manual_seed(0))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    a, victims = cfg.attack, _blocks(40, 9, 99)
    mask = patch_mask(a.trigger_size, SIZE)
    init = np.zeros((1, SIZE, SIZE), np.float32)
    pattern = optimise_trigger(model, victims, (x, y), 0, mask, init, init, a, cfg.client,
                               normalize, torch.Generator().manual_seed(0))
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items()), "w_t untouched"
    before = _target_rate(model, victims, mask, init, 0)
    after = _target_rate(model, victims, mask, pattern, 0)
    assert before <= 0.1 and after >= before + 0.5, (before, after)


def test_the_attacker_keeps_its_trigger_in_its_node_state_and_goes_on_from_it(tmp_path):
    cfg = _cfg(trigger_epochs=2, adv_epochs=0)
    rng = np.random.default_rng(0)
    local = (rng.integers(0, 256, (30, 1, SIZE, SIZE), dtype=np.uint8), np.full(30, 9))
    state = RecordDict()

    def job(rnd):
        torch.manual_seed(rnd)
        model = build_model(TINY, 1, SIZE, 10)
        return TrainJob(cfg, 0, rnd, model, model.state_dict(), local, {}, tmp_path,
                        torch.device("cpu"), torch.Generator().manual_seed(rnd), None,
                        state=state)

    attack = A3FL(cfg)
    first = attack.backdoor_task(job(1), Roles((0,)))
    saved = state[P.TRIGGER]["pattern"].numpy()
    assert np.array_equal(saved, first.pattern) and first.check_report({"pattern": saved}) is None
    assert not np.array_equal(saved, first.initial)
    second = attack.backdoor_task(job(2), Roles((0,)))
    # Two passes of alpha from the saved trigger, not from the start.
    assert np.abs(second.pattern - saved).max() <= 2 * 2 * cfg.attack.trigger_lr + 1e-6
    assert np.array_equal(state[P.TRIGGER]["pattern"].numpy(), second.pattern)


@pytest.mark.parametrize("fields, message", [
    ({"trigger_eps": -0.1}, "attack.trigger_eps=-0.1 must be in (0, 1]"),
    ({"trigger_eps": 0.0}, "attack.trigger_eps=0.0 must be in (0, 1]"),
    ({"trigger_size": 0}, "attack.trigger_size=0 must be 1..26"),
    ({"trigger_size": 27}, "attack.trigger_size=27 must be 1..26"),
    ({"trigger_init": 1.5}, "attack.trigger_init=1.5 must be in [0, 1]"),
    ({"trigger_epochs": 0}, "attack.trigger_epochs=0 must be at least 1"),
    ({"trigger_lr": 0.0}, "attack.trigger_lr=0.0 must be positive"),
    ({"adv_interval": 0}, "attack.adv_interval=0 must be at least 1"),
    ({"adv_epochs": -1}, "attack.adv_epochs=-1 must be >= 0"),
    ({"adv_lr": -1.0}, "attack.adv_lr=-1.0 must be positive"),
    ({"lambda0": -0.5}, "attack.lambda0=-0.5 must be >= 0"),
    ({"task": "pixel_pattern"}, "attack.task='pixel_pattern' must be a3fl"),
])
def test_bad_a3fl_settings_fail_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        _cfg(**fields)
    assert "\n" not in message


def test_only_an_adaptive_attack_may_use_the_adaptive_task():
    with pytest.raises(ConfigError, match="attack.task=a3fl has an adaptive trigger, which "
                                          "attack=boosted does not optimise"):
        validate(ExperimentConfig(attack=attack_config(
            name="boosted", num_malicious=1, schedule="random", task="a3fl")))


# ---- the trigger report -------------------------------------------------------------------


def _cache(tmp_path):
    """A test set of 4 victims (label 9), 2 others."""
    x = np.zeros((6, 1, SIZE, SIZE), np.uint8)
    np.save(tmp_path / "test_x.npy", x)
    np.save(tmp_path / "test_y.npy", np.array([9, 9, 3, 9, 0, 9]))
    return tmp_path


class Measurement:
    def __init__(self):
        self.backdoor = None

    def set_backdoor(self, backdoor):
        self.backdoor = backdoor


def _report(tmp_path, answer, **fields):
    """One trigger query to partition 2's node (id 102), answered with ``answer``."""
    cfg = _cfg(**fields)
    task = A3FLTask(cfg, _cache(tmp_path), Roles((2,)))
    measurement = Measurement()
    grid = FakeGrid([102], lambda node_id, msg: answer(task))
    report = TriggerReport(task, measurement)
    before = task.pattern.copy()
    entry = report.refresh(lambda msgs: send_and_collect(grid, msgs, 0.3, 0.01), 4, 2, 102)
    assert [m.metadata.message_type for m in grid.sent] == [P.TRIGGER_REPORT]
    return entry, task, before, measurement


def _trigger(**arrays):
    return RecordDict({P.TRIGGER: ArrayRecord({k: Array(v) for k, v in arrays.items()})})


def _valid(task, value=0.9):
    return (task.mask * np.float32(value))[None]


def _lying(task):
    """Declares the pattern's shape, carries the bytes of a smaller array."""
    real = Array(np.zeros((1, 4, 4), np.float32))
    return RecordDict({P.TRIGGER: ArrayRecord({"pattern": Array(
        dtype="float32", shape=(1, SIZE, SIZE), stype=real.stype, data=real.data)})})


def _padded(task):
    real = Array(_valid(task))
    return RecordDict({P.TRIGGER: ArrayRecord({"pattern": Array(
        dtype=real.dtype, shape=real.shape, stype=real.stype, data=real.data + b"\0" * 10**6)})})


HOSTILE = {
    "no record (a node that never attacked)": (lambda t: RecordDict(), "records [] are not"),
    "wrong record": (lambda t: RecordDict({P.ARRAYS: ArrayRecord({"pattern": Array(
        _valid(t))})}), "records ['arrays'] are not exactly ['trigger']"),
    "an extra record": (lambda t: RecordDict({**dict(_trigger(pattern=_valid(t)).items()),
                                              P.METRICS: MetricRecord({"x": 1.0})}),
                        "are not exactly ['trigger']"),
    "config record": (lambda t: RecordDict({P.TRIGGER: ConfigRecord({"pattern": 1.0})}),
                      "is a ConfigRecord, not an ArrayRecord"),
    "wrong array name": (lambda t: _trigger(mask=_valid(t)),
                         "arrays ['mask'] are not exactly ['pattern']"),
    "an extra array": (lambda t: _trigger(pattern=_valid(t), extra=_valid(t)),
                       "arrays ['extra', 'pattern'] are not"),
    "wrong shape": (lambda t: _trigger(pattern=np.zeros((1, SIZE, SIZE - 1), np.float32)),
                    "pattern: float32 (1, 28, 27) is not float32 (1, 28, 28)"),
    "wrong dtype": (lambda t: _trigger(pattern=_valid(t).astype(np.float64)),
                    "pattern: float64 (1, 28, 28) is not float32"),
    "lying header": (_lying, "bytes decode to float32 (1, 4, 4)"),
    "padded bytes": (_padded, "bytes for a float32 (1, 28, 28) array"),
    "NaN": (lambda t: _trigger(pattern=np.where(t.mask > 0, np.nan, 0)[None].astype(
        np.float32)), "pattern: non-finite values"),
    "above 1": (lambda t: _trigger(pattern=_valid(t, 1.5)), "values outside [0, 1]"),
    "outside the mask": (lambda t: _trigger(pattern=np.full((1, SIZE, SIZE), 0.5, np.float32)),
                         "nonzero values outside the trigger's mask"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_trigger_report_is_rejected_and_the_previous_trigger_kept(case, tmp_path,
                                                                           caplog):
    answer, reason = HOSTILE[case]
    with caplog.at_level("WARNING", logger="flwr"):
        entry, task, before, measurement = _report(tmp_path, answer)
    assert entry["accepted"] is False and entry["partition"] == 2
    assert reason in entry["reason"], entry["reason"]
    assert f"trigger report of partition 2 rejected: {entry['reason']}" in caplog.text
    assert np.array_equal(task.pattern, before) and measurement.backdoor is None


def test_an_out_of_budget_report_and_a_silent_attacker_are_rejected(tmp_path):
    entry, task, before, _ = _report(tmp_path, lambda t: _trigger(pattern=_valid(t, 0.9)),
                                     trigger_eps=0.2)
    assert "outside the trigger's budget: L_inf distance 0.4 from the starting trigger " \
           "exceeds trigger_eps=0.2" in entry["reason"]
    assert np.array_equal(task.pattern, before)
    entry, task, before, measurement = _report(tmp_path, lambda t: None)
    assert entry == {"partition": 2, "accepted": False, "reason": "no reply"}
    assert measurement.backdoor is None


def test_a_valid_report_changes_the_backdoor_test_set(tmp_path):
    entry, task, before, measurement = _report(tmp_path, lambda t: _trigger(
        pattern=_valid(t, 0.9)))
    assert entry == {"partition": 2, "accepted": True}
    x, y = measurement.backdoor
    assert len(y) == 4 and set(y.tolist()) == {0}, "the victims, relabelled to the target"
    patch = patch_mask(5, SIZE) > 0
    assert np.all(x[:, 0][:, patch] == round(0.9 * 255)) and np.all(x[:, 0][:, ~patch] == 0)
    assert np.array_equal(task.pattern, _valid(task, 0.9))
    initial_x, _ = A3FLTask(_cfg(), tmp_path, Roles((2,))).test_set()
    assert np.all(initial_x[:, 0][:, patch] == round(0.5 * 255)), "it started gray"


def test_the_round_asks_its_lowest_live_attacker_and_measures_with_its_trigger(tmp_path):
    """A whole round over a fake Grid with a real evaluator: the measurement asks only after
    the round's attackers trained, only the lowest live one, and its backdoor accuracy uses the
    reported trigger; a benign-only round asks nobody; a hostile report leaves it as it was."""
    from defenses.base import build_defense
    from flbackdoor.evaluation import CentralEvaluator
    from server.nodes import Membership, Node
    from server.rounds import RoundRunner

    cfg = _cfg(num_malicious=2)
    cfg.server.round_timeout_s, cfg.server.poll_interval_s = 1.0, 0.01
    cache = _cache(tmp_path)
    task = A3FLTask(cfg, cache, Roles((1, 2)))
    evaluator = CentralEvaluator(cfg, cache, task.test_set())
    torch.manual_seed(0)
    state = build_model(TINY, 1, SIZE, 10).state_dict()
    nodes = {p: Node(100 + p, p, "benign" if p == 0 else "malicious", 10) for p in range(3)}
    reports = {101: lambda t: _trigger(pattern=_valid(t, 1.0)), 102: None}

    def respond(node_id, msg):
        if msg.metadata.message_type == P.TRIGGER_REPORT:
            return reports[node_id](task)
        return RecordDict({P.ARRAYS: ArrayRecord(state), P.METRICS: MetricRecord(
            {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 0.0})})

    grid = FakeGrid([n.node_id for n in nodes.values()], respond)
    runner = RoundRunner(grid, cfg, Membership(grid, nodes, 3, 1.0, 0.01), evaluator,
                         TriggerReport(task, evaluator))
    before = evaluator.backdoor[0].clone()
    _, row = runner.run(1, ArrayRecord(state), build_defense(cfg))
    asked = [m.metadata.dst_node_id for m in grid.sent
             if m.metadata.message_type == P.TRIGGER_REPORT]
    assert asked == [101] and row["trigger_report"] == {"partition": 1, "accepted": True}
    assert not torch.equal(evaluator.backdoor[0], before)
    assert int(evaluator.backdoor[0][0, 0, 3, 3]) == 255 and "backdoor_accuracy" in row

    reports[101] = lambda t: _trigger(pattern=_valid(t, float("nan")))
    adopted = evaluator.backdoor[0].clone()
    _, row = runner.run(2, ArrayRecord(state), build_defense(cfg))
    assert row["trigger_report"]["accepted"] is False
    assert torch.equal(evaluator.backdoor[0], adopted)

    _, row = runner.run(3, ArrayRecord(state), build_defense(cfg), attacks_on=False)
    assert "trigger_report" not in row


def test_the_client_answers_the_trigger_query_only_as_an_adaptive_attacker():
    import client.app as client_app
    from flbackdoor.config import to_json
    from flwr.app import Message

    def ask(role, state, cfg=None):
        cfg = cfg or _cfg()
        context = Context(1, 7, {"partition-id": 0, "num-partitions": 3, "role": role}, state,
                          {"experiment": to_json(cfg), "output-dir": ""})
        msg = Message(RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})}), dst_node_id=7,
                      message_type=P.TRIGGER_REPORT)
        return client_app.trigger_report(msg, context).content

    kept = RecordDict({P.TRIGGER: ArrayRecord({"pattern": Array(np.ones((1, 2, 2), np.float32))})})
    assert list(ask("malicious", kept).keys()) == [P.TRIGGER]
    assert ask("malicious", kept)[P.TRIGGER]["pattern"].numpy().sum() == 4
    assert list(ask("malicious", RecordDict()).keys()) == []
    assert list(ask("benign", kept).keys()) == []
    boosted = validate(ExperimentConfig(num_clients=3, clients_per_round=3, attack=attack_config(
        name="boosted", num_malicious=1, schedule="random", task="pixel_pattern")))
    assert list(ask("malicious", kept, boosted).keys()) == []
