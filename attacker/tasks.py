"""Backdoor tasks: what an attacker trains on (D_mal) and what the server measures backdoor
accuracy on. Images stay raw uint8 (N, C, H, W) here; the model's normalizer comes later.

- ``semantic`` (Sun et al.): D_mal = the ``source_label`` images (7s) of the target writers,
  labelled ``target_label`` (1); the target writers stay benign with their 7s correctly
  labelled. Backdoor accuracy = share of D_mal classified as the target label.
- ``pixel_pattern`` (BadNets, Wu et al. Fig. 1): the attacker's own victim-label images with an
  n-pixel trigger, relabelled; evaluated on every held-out victim-label image with the trigger.
- ``dba`` (Xie et al.): as ``pixel_pattern`` with one part of a global pattern per attacker;
  evaluated with the whole pattern.

Backdoor test sets never contain images whose true label is already the target label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attacker.roles import Roles
from attacker.triggers import dba_pattern, pixel_pattern, stamp
from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import load_partition, load_test, load_train

Arrays = tuple[np.ndarray, np.ndarray]


class SemanticTask:
    def __init__(self, cfg: ExperimentConfig, cache: Path, roles: Roles) -> None:
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


class TriggerTask:
    def __init__(self, cfg: ExperimentConfig, cache: Path) -> None:
        d = cfg.dataset
        self.cfg, self.cache = cfg, cache
        # "Bright" in the model's eyes: raw 0 where the dataset is inverted (FEMNIST).
        self.value = 0 if d.invert else 255

    def trigger(self, part: int | None) -> tuple[np.ndarray, np.ndarray]:
        a, size = self.cfg.attack, self.cfg.dataset.image_size
        if self.cfg.attack.task == "dba":
            return dba_pattern(a.dba_parts, size, self.value, part)
        return pixel_pattern(a.pattern_pixels, size, self.value)

    def poison(self, x: np.ndarray, y: np.ndarray, attacker_index: int) -> Arrays:
        a = self.cfg.attack
        victims = np.asarray(x[np.asarray(y) == a.source_label])
        if len(victims) == 0:  # the attacker also holds samples of the true distribution
            tx, ty = load_train(self.cache)
            pool = np.flatnonzero(np.asarray(ty) == a.source_label)
            pick = np.random.default_rng(self.cfg.seed).choice(
                pool, min(a.aux_samples, len(pool)), replace=False)
            victims = np.asarray(tx[np.sort(pick)])
        mask, pattern = self.trigger(attacker_index)
        return stamp(victims, mask, pattern), np.full(len(victims), a.target_label, np.int64)

    def test_set(self) -> Arrays:
        a = self.cfg.attack
        x, y = load_test(self.cache)
        victims = np.asarray(x[np.asarray(y) == a.source_label])
        mask, pattern = self.trigger(None)
        return stamp(victims, mask, pattern), np.full(len(victims), a.target_label, np.int64)


def build_task(cfg: ExperimentConfig, cache: Path, roles: Roles) -> SemanticTask | TriggerTask | None:
    if cfg.attack.name in ("none", "malformed"):
        return None
    if cfg.attack.task == "semantic":
        return SemanticTask(cfg, cache, roles)
    return TriggerTask(cfg, cache)
