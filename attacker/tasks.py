"""Backdoor tasks: what an attacker trains on (D_mal) and what the server measures backdoor
accuracy on. Images stay raw uint8 (N, C, H, W) here; the model's normalizer comes later.

- ``semantic`` (Sun et al.): D_mal = the ``source_label`` images (7s) of the target writers,
  labelled ``target_label`` (1); the target writers stay benign with their 7s correctly
  labelled. Backdoor accuracy = share of D_mal classified as the target label.
- ``pixel_pattern`` (BadNets, Wu et al. Fig. 1): the attacker's own victim-label images with an
  n-pixel trigger, relabelled; evaluated on every held-out victim-label image with the trigger.
- ``dba`` (Xie et al.): as ``pixel_pattern`` with one part of a global pattern per attacker;
  evaluated with the whole pattern.
- ``label_flip`` (targeted label flipping, no trigger): the attacker's own ``source_label``
  images relabelled ``target_label`` (``attack=label_flip`` trains on them in place of their
  true labels); evaluated on every held-out source-label image, so backdoor accuracy is the
  share of the source class classified as the target.

Backdoor test sets never contain images whose true label is already the target label.

A task whose trigger the attack re-optimises every round (``adaptive``: A3FL's patch, a future
trigger generator) says what the attacker reports of it (:meth:`BackdoorTask.report_spec`), which
reports are within its budget (:meth:`~BackdoorTask.check_report`) and takes a report as its
current trigger (:meth:`~BackdoorTask.adopt`): the server's measurement rebuilds its backdoor test
set from the trigger the attackers actually trained with (``server/trigger_report.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from attacker.triggers import dba_pattern, pixel_pattern, stamp
from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import load_partition, load_test, load_train
from flbackdoor.registries import TASKS
from flbackdoor.rng import stream
from flbackdoor.roles import Roles

Arrays = tuple[np.ndarray, np.ndarray]


class BackdoorTask:
    """D_mal for an attacker (:meth:`poison`) and the backdoor test set (:meth:`test_set`)."""

    # Whether the task's D_mal are other (benign) writers' images: roles then picks target
    # writers, and attackers among the others.
    uses_target_writers = False
    # Whether the attack re-optimises the trigger every round (only an attack whose Config sets
    # ``adaptive_trigger`` may use such a task); the methods below are then its report.
    adaptive: ClassVar[bool] = False

    def __init__(self, cfg: ExperimentConfig, cache: Path, roles: Roles) -> None:
        self.cfg, self.cache = cfg, cache

    def poison(self, x: np.ndarray, y: np.ndarray, attacker_index: int) -> Arrays:
        raise NotImplementedError

    def test_set(self) -> Arrays:
        raise NotImplementedError

    def report_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Adaptive: the arrays a trigger report holds, name -> (shape, dtype)."""
        raise NotImplementedError

    def report(self) -> dict[str, np.ndarray]:
        """Adaptive: the current trigger as those arrays."""
        raise NotImplementedError

    def check_report(self, arrays: dict[str, np.ndarray]) -> str | None:
        """Adaptive: why a report of the right arrays is outside the trigger's budget, or None."""
        raise NotImplementedError

    def adopt(self, arrays: dict[str, np.ndarray]) -> None:
        """Adaptive: take a checked report as the current trigger."""
        raise NotImplementedError


@TASKS.register("semantic")
class SemanticTask(BackdoorTask):
    uses_target_writers = True

    def __init__(self, cfg: ExperimentConfig, cache: Path, roles: Roles) -> None:
        super().__init__(cfg, cache, roles)
        a = cfg.attack
        xs = []
        for pid in roles.targets:
            x, y = load_partition(cache, pid)
            xs.append(np.asarray(x[np.asarray(y) == a.source_label]))
        self.x = np.concatenate(xs) if xs else np.zeros((0, cfg.dataset.channels,
                                                          cfg.dataset.image_size,
                                                          cfg.dataset.image_size), np.uint8)
        self.y = np.full(len(self.x), a.target_label, np.int64)

    def poison(self, x: np.ndarray, y: np.ndarray, attacker_index: int) -> Arrays:
        return self.x, self.y

    def test_set(self) -> Arrays:
        return self.x, self.y


class TriggerTask(BackdoorTask):
    """A pixel trigger stamped on victim-label images, relabelled to the target."""

    def __init__(self, cfg: ExperimentConfig, cache: Path, roles: Roles) -> None:
        super().__init__(cfg, cache, roles)
        # "Bright" in the model's eyes: raw 0 where the dataset is inverted (FEMNIST).
        self.value = 0 if cfg.dataset.invert else 255

    def trigger(self, part: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Attacker ``part``'s (mask, pattern); ``None``: the one the server tests with."""
        raise NotImplementedError

    def victims(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The attacker's victim-label images, or ``aux_samples`` of the training set's when it
        holds none."""
        a = self.cfg.attack
        victims = np.asarray(x[np.asarray(y) == a.source_label])
        if len(victims) == 0:  # the attacker also holds samples of the true distribution
            tx, ty = load_train(self.cache)
            pool = np.flatnonzero(np.asarray(ty) == a.source_label)
            pick = stream("aux_victims", self.cfg.seed).choice(
                pool, min(a.aux_samples, len(pool)), replace=False)
            victims = np.asarray(tx[np.sort(pick)])
        return victims

    def poison(self, x: np.ndarray, y: np.ndarray, attacker_index: int) -> Arrays:
        a = self.cfg.attack
        victims = self.victims(x, y)
        mask, pattern = self.trigger(attacker_index)
        return stamp(victims, mask, pattern), np.full(len(victims), a.target_label, np.int64)

    def test_set(self) -> Arrays:
        a = self.cfg.attack
        x, y = load_test(self.cache)
        victims = np.asarray(x[np.asarray(y) == a.source_label])
        mask, pattern = self.trigger(None)
        return stamp(victims, mask, pattern), np.full(len(victims), a.target_label, np.int64)


@TASKS.register("pixel_pattern")
class PixelPatternTask(TriggerTask):
    def trigger(self, part: int | None) -> tuple[np.ndarray, np.ndarray]:
        return pixel_pattern(self.cfg.attack.pattern_pixels, self.cfg.dataset.image_size,
                             self.value)


@TASKS.register("dba")
class DBATask(TriggerTask):
    def trigger(self, part: int | None) -> tuple[np.ndarray, np.ndarray]:
        return dba_pattern(self.cfg.attack.dba_parts, self.cfg.dataset.image_size, self.value,
                           part)


@TASKS.register("label_flip")
class LabelFlipTask(BackdoorTask):
    def relabelled(self, x: np.ndarray, y: np.ndarray) -> Arrays:
        a = self.cfg.attack
        source = np.asarray(y) == a.source_label
        return np.asarray(x[source]), np.full(int(source.sum()), a.target_label, np.int64)

    def poison(self, x: np.ndarray, y: np.ndarray, attacker_index: int) -> Arrays:
        return self.relabelled(x, y)

    def test_set(self) -> Arrays:
        return self.relabelled(*load_test(self.cache))


def build_task(cfg: ExperimentConfig, cache: Path, roles: Roles) -> BackdoorTask | None:
    """The attack's backdoor task, or None for an attack that plants none."""
    if not cfg.attack.backdoor:
        return None
    return TASKS[cfg.attack.task](cfg, cache, roles)
