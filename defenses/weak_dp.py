"""Weak differential privacy with the Sun et al. reference's noise placement (TFF
``GaussianAverageQuery(l2_norm_clip=M, sum_stddev=sigma, denominator=m)``): clip each update to
M, sum them, add N(0, sigma^2) to every coordinate of the sum, divide by the m clients sampled.
The mean is unweighted, as in the reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.base import Aggregate, NoisyDefense, Updates
from defenses.norm_clipping import ClippingConfig, clip_all
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import StateDict


def gaussian_noise_like(update: StateDict, std: float, generator: torch.Generator) -> StateDict:
    return {k: torch.randn(v.shape, generator=generator) * std for k, v in update.items()}


def noisy_clipped_mean(deltas: list[StateDict], max_norm: float, noise_std: float,
                       num_sampled: int, generator: torch.Generator) -> StateDict:
    return noisy_mean(clip_all(deltas, max_norm)[0], noise_std, num_sampled, generator)


def noisy_mean(clipped: list[StateDict], noise_std: float, num_sampled: int,
               generator: torch.Generator) -> StateDict:
    """(sum_k Delta_k + N(0, sigma^2 I)) / m."""
    total = {k: sum(d[k] for d in clipped) for k in clipped[0]}
    if noise_std > 0:
        noise = gaussian_noise_like(total, noise_std, generator)
        total = {k: v + noise[k] for k, v in total.items()}
    return {k: v / num_sampled for k, v in total.items()}


@dataclass
class WeakDPConfig(ClippingConfig):
    name: str = "weak_dp"
    norm_bound: float = 5.0  # M
    noise_std: float = 0.025  # sigma of the noise added to the sum of clipped updates

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.noise_std >= 0, f"defense.noise_std={self.noise_std} must be >= 0")


@DEFENSES.register("weak_dp")
class WeakDP(NoisyDefense):
    Config = WeakDPConfig

    def aggregate(self, updates: Updates) -> Aggregate:
        c = self.config
        clipped, count = clip_all(updates.deltas, c.norm_bound)
        delta = noisy_mean(clipped, c.noise_std, self.cfg.clients_per_round, self.generator)
        return Aggregate(delta, stats={"fraction_clipped": count / len(updates.deltas)})
