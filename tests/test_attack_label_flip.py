"""Label flipping: exactly the chosen labels change, in both modes; the trigger-free task
measures the targeted flip; the untargeted flip plants no backdoor task."""

import numpy as np
import pytest
import torch

import attacker.label_flip as label_flip
import attacker.tasks as tasks
from attacker.base import TrainJob
from attacker.label_flip import LabelFlip, flip_labels
from attacker.tasks import LabelFlipTask, build_task
from conftest import attack_config as AttackConfig
from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.roles import Roles

Y = np.array([9, 0, 3, 9, 9, 1, 8, 2, 9, 4, 5, 6, 7, 0])


def test_targeted_flip_changes_exactly_the_source_labels_to_the_target():
    out = flip_labels(Y, "targeted", source=9, target=0, num_classes=10)
    changed = out != Y
    assert np.array_equal(changed, Y == 9)
    assert (out[changed] == 0).all() and np.array_equal(out[~changed], Y[~changed])


def test_flipping_all_maps_every_label_to_c_minus_1_minus_y():
    out = flip_labels(Y, "all", source=9, target=0, num_classes=10)
    assert np.array_equal(out, 9 - Y) and (out != Y).all()  # no fixed point for even C
    assert sorted(set(flip_labels(np.arange(10), "all", 9, 0, 10))) == list(range(10))
    odd = flip_labels(np.arange(5), "all", 4, 0, 5)
    assert np.array_equal(odd != np.arange(5), np.arange(5) != 2)  # only the middle stays


def _cfg(**fields) -> ExperimentConfig:
    return ExperimentConfig(attack=AttackConfig(name="label_flip", source_label=9,
                                                target_label=0, **fields))


@pytest.mark.parametrize("flip", ["targeted", "all"])
def test_the_attack_trains_on_its_data_with_exactly_the_chosen_labels_flipped(flip, monkeypatch):
    seen = {}

    def craft(model, global_state, local, poison, cfg, factor, *args, **kwargs):
        seen.update(local=local, poison=poison, factor=factor)
        return global_state, type("R", (), {"num_examples": 0, "loss": 0.0})()

    monkeypatch.setattr(label_flip, "craft_update", craft)
    x = np.random.default_rng(0).integers(0, 256, (len(Y), 1, 28, 28), dtype=np.uint8)
    cfg = _cfg(flip=flip)
    job = TrainJob(cfg, 0, 1, None, {"w": torch.zeros(1)}, (x, Y), {}, None,
                   torch.device("cpu"), None, None)
    reply = LabelFlip(cfg).reply(job)
    trained_x, trained_y = seen["local"]
    assert np.array_equal(trained_x, x) and len(seen["poison"][1]) == 0
    assert seen["factor"] is None  # sent as trained: no boost
    expected = np.where(Y == 9, 0, Y) if flip == "targeted" else 9 - Y
    assert np.array_equal(trained_y, expected)
    assert reply.num_examples == len(Y)


def test_label_flip_task_is_the_source_images_labelled_target(monkeypatch):
    x = np.arange(len(Y), dtype=np.uint8).reshape(-1, 1, 1, 1)
    task = LabelFlipTask(_cfg(), None, Roles())
    px, py = task.poison(x, Y, 0)
    assert np.array_equal(px[:, 0, 0, 0], np.flatnonzero(Y == 9)) and (py == 0).all()
    # What the attack flips is exactly the task's poison.
    flipped = flip_labels(Y, "targeted", 9, 0, 10) != Y
    assert np.array_equal(x[flipped], px)
    monkeypatch.setattr(tasks, "load_test", lambda cache: (x, Y))
    tx, ty = task.test_set()
    assert np.array_equal(tx, px) and (ty == 0).all()  # no image of the target class itself


def test_untargeted_flip_plants_no_backdoor_task():
    assert _cfg().attack.backdoor and not _cfg(flip="all").attack.backdoor
    assert build_task(_cfg(flip="all"), None, Roles()) is None


@pytest.mark.parametrize("fields, message", [
    ({"flip": "some"}, "attack.flip='some' is not one of targeted, all"),
    ({"task": "pixel_pattern"}, "is measured by attack.task=label_flip"),
])
def test_bad_flip_settings_fail_validation_in_one_line(fields, message):
    with pytest.raises(ConfigError) as err:
        validate(ExperimentConfig(attack={"name": "label_flip", **fields}))
    assert message in str(err.value) and "\n" not in str(err.value)
    validate(ExperimentConfig(attack={"name": "label_flip", "flip": "all",
                                      "task": "pixel_pattern"}))
