"""Label flipping: data poisoning by training on the attacker's own data with flipped labels
and sending the update as it is (no boosting, no projection), like ``data_poisoning``.

- ``attack.flip=targeted``: every ``source_label`` example becomes ``target_label``, nothing
  else changes. Measured as a backdoor task without a trigger (``attack.task=label_flip``,
  attacker/tasks.py): backdoor accuracy is the share of the held-out source-class images the
  global model classifies as the target.
- ``attack.flip=all``: every label y becomes C - 1 - y (a permutation without fixed points for
  an even number of classes C), an untargeted attack measured by the main-accuracy drop; no
  backdoor task.

The attacker's data is its own partition plus ``attack.aux_train_samples`` true-distribution
images (``attacker_train_data``), all relabelled by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacker.base import Attack, AttackConfig, Reply, TrainJob, state_reply
from attacker.crafting import attacker_train_data, craft_update
from flbackdoor.config import ExperimentConfig, check, one_of
from flbackdoor.registries import ATTACKS

FLIPS = ("targeted", "all")


def flip_labels(y: np.ndarray, flip: str, source: int, target: int,
                num_classes: int) -> np.ndarray:
    """The labels the attacker trains with: source -> target (``targeted``) or y -> C - 1 - y
    (``all``)."""
    y = np.asarray(y, np.int64)
    if flip == "all":
        return num_classes - 1 - y
    return np.where(y == source, target, y)


@dataclass
class LabelFlipConfig(AttackConfig):
    name: str = "label_flip"
    num_malicious: int = 1
    schedule: str = "fixed_frequency"
    task: str = "label_flip"  # the trigger-free task that measures the targeted flip
    flip: str = "targeted"  # targeted: source_label -> target_label; all: y -> C - 1 - y

    @property
    def backdoor(self) -> bool:  # type: ignore[override]
        # Flipping every label is untargeted: no backdoor task to plant or measure.
        return self.flip == "targeted"

    def check(self, cfg: ExperimentConfig) -> None:
        one_of("attack.flip", self.flip, FLIPS)
        super().check(cfg)
        if self.flip == "targeted":
            check(self.task == "label_flip",
                  f"attack=label_flip with attack.flip=targeted is measured by attack.task="
                  f"label_flip (source-label test images, no trigger), not {self.task}")


@ATTACKS.register("label_flip")
class LabelFlip(Attack):
    Config = LabelFlipConfig

    def reply(self, job: TrainJob) -> Reply:
        cfg, a = self.cfg, self.config
        x, y = attacker_train_data(job.local, job.cache, cfg)
        flipped = flip_labels(y, a.flip, a.source_label, a.target_label, cfg.dataset.num_classes)
        nothing = (np.zeros((0, *np.shape(x)[1:]), np.uint8), np.zeros(0, np.int64))
        state, result = craft_update(job.model, job.global_state, (x, flipped), nothing, cfg,
                                     None, job.device, job.generator)
        # Its honest-looking data size, as the other backdoor attacks report.
        result.num_examples = len(job.local[1])
        return state_reply(state, result)
