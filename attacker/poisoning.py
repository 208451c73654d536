"""Outsider data poisoning (ABL's threat model): someone poisoned a share of a dataset before
training. Pure numpy transforms on raw uint8 (N, C, H, W) images, usable by every training path
(the centralized runner, an honest client's partition).

- ``badnets`` (Gu et al.): a white 3x3 patch near the bottom-right corner, label set to target
  (dirty label).
- ``blend`` (Chen et al.): a fixed uniform-noise image blended in, (1 - alpha) x + alpha p,
  label set to target (dirty label).
- ``sig`` (Barni et al.): a horizontal sinusoid x + delta sin(2 pi j f / W) added to images
  that already have the target label (clean label: labels are never changed).

Every poisoning returns the poisoned indices, the ground truth isolation precision is scored
against. Backdoor test sets: held-out images whose true label is not the target, with the
trigger, labelled target; ASR is the share classified as the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attacker.triggers import pixel_pattern, stamp
from flbackdoor.config import ExperimentConfig, PoisoningConfig
from flbackdoor.rng import stream

Trigger = Callable[[np.ndarray], np.ndarray]
EMPTY = np.zeros(0, np.int64)


def poison_indices(n: int, rate: float, rng: np.random.Generator, labels: np.ndarray | None = None,
                   target: int | None = None, clean_label: bool = False) -> np.ndarray:
    """round(rate * n) sorted indices out of n. With labels: dirty-label attacks draw from the
    non-target images (relabelling a target image would poison nothing), clean-label attacks
    from the target images (capped at how many there are)."""
    if labels is None:
        pool = np.arange(n)
    else:
        labels = np.asarray(labels)
        pool = np.flatnonzero(labels == target if clean_label else labels != target)
    k = min(int(round(rate * n)), len(pool))
    return np.sort(rng.choice(pool, k, replace=False)).astype(np.int64)


def badnets_trigger(image_size: int, value: int = 255) -> Trigger:
    mask, pattern = pixel_pattern(9, image_size, value)  # the 3x3 block, 1 pixel from the edge
    return lambda x: stamp(x, mask, pattern)


def blend_trigger(shape: tuple[int, int, int], alpha: float, seed: int) -> Trigger:
    """One fixed noise image per seed, so every client and the server blend the same one."""
    pattern = stream("blend_pattern", seed).integers(0, 256, shape, dtype=np.uint8)
    mask = np.full(shape, alpha, np.float32)
    return lambda x: stamp(x, mask, pattern)


def sig_trigger(image_size: int, delta: float, frequency: float) -> Trigger:
    signal = delta * np.sin(2 * np.pi * np.arange(image_size) * frequency / image_size)

    def apply(x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32) + signal.astype(np.float32)  # broadcast along the width
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return apply


def apply_poison(x: np.ndarray, y: np.ndarray, idx: np.ndarray, trigger: Trigger,
                 target: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of (x, y) with ``trigger`` on the images ``idx`` and, unless ``target`` is None
    (clean label), their labels set to ``target``."""
    x, y = np.array(x, dtype=np.uint8), np.array(y, dtype=np.int64)
    if len(idx):
        x[idx] = trigger(x[idx])
        if target is not None:
            y[idx] = target
    return x, y, idx


def badnets(x, y, idx, target: int, value: int = 255):
    return apply_poison(x, y, idx, badnets_trigger(x.shape[-1], value), target)


def blend(x, y, idx, target: int, alpha: float, seed: int):
    return apply_poison(x, y, idx, blend_trigger(tuple(x.shape[1:]), alpha, seed), target)


def sig(x, y, idx, delta: float, frequency: float):
    return apply_poison(x, y, idx, sig_trigger(x.shape[-1], delta, frequency), None)


@dataclass(frozen=True)
class Poisoning:
    """An experiment's poisoning: which trigger, which label, how much."""

    cfg: PoisoningConfig
    trigger: Trigger

    @property
    def clean_label(self) -> bool:
        return self.cfg.kind == "sig"

    def poison(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.cfg
        idx = poison_indices(len(y), p.rate, rng, y, p.target_label, self.clean_label)
        return apply_poison(x, y, idx, self.trigger, None if self.clean_label else p.target_label)

    def test_set(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.flatnonzero(np.asarray(y) != self.cfg.target_label)
        victims = np.asarray(x[keep])
        return self.trigger(victims), np.full(len(victims), self.cfg.target_label, np.int64)


def build_poisoning(cfg: ExperimentConfig) -> Poisoning | None:
    p, d = cfg.poisoning, cfg.dataset
    if not p.enabled:
        return None
    if p.kind == "badnets":
        trigger = badnets_trigger(d.image_size, 0 if d.invert else 255)  # bright to the model
    elif p.kind == "blend":
        trigger = blend_trigger((d.channels, d.image_size, d.image_size), p.blend_alpha, cfg.seed)
    else:
        trigger = sig_trigger(d.image_size, p.sig_delta, p.sig_frequency)
    return Poisoning(p, trigger)


def poisoned_partitions(cfg: ExperimentConfig, malicious: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The honest partitions the outsider poisoned: a seeded choice, the same on every node and
    on the server. Malicious nodes are never among them (they craft their own updates)."""
    p = cfg.poisoning
    if not p.enabled or p.num_clients == 0:
        return ()
    pool = np.setdiff1d(np.arange(cfg.num_clients), np.asarray(malicious, dtype=np.int64))
    rng = stream("poisoning", cfg.seed)
    return tuple(int(i) for i in np.sort(rng.choice(pool, min(p.num_clients, len(pool)),
                                                    replace=False)))


def poison_partition(cfg: ExperimentConfig, partition_id: int, x: np.ndarray, y: np.ndarray,
                     malicious: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A partition as its node trains on it: poisoned (deterministically per seed and
    partition) when the outsider chose it, else untouched; plus the poisoned indices."""
    poisoning = build_poisoning(cfg)
    if poisoning is None or partition_id not in poisoned_partitions(cfg, malicious):
        return x, y, EMPTY
    return poisoning.poison(x, y, stream("poisoning", cfg.seed, partition_id))


def poison_train_set(cfg: ExperimentConfig, x: np.ndarray, y: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole training set with ``poisoning.rate`` of it poisoned (centralized mode)."""
    poisoning = build_poisoning(cfg)
    if poisoning is None:
        return x, y, EMPTY
    return poisoning.poison(x, y, stream("poisoning", cfg.seed))


def backdoor_test_set(cfg: ExperimentConfig, cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    from flbackdoor.data.cache import load_test

    poisoning = build_poisoning(cfg)
    return poisoning.test_set(*load_test(cache)) if poisoning else None
