"""Weak differential privacy with the Sun et al. reference's noise placement (TFF
``GaussianAverageQuery(l2_norm_clip=M, sum_stddev=sigma, denominator=m)``): clip each update to
M, sum them, add N(0, sigma^2) to every coordinate of the sum, divide by the m clients sampled.
The mean is unweighted, as in the reference."""

from __future__ import annotations

import torch

from defenses.clipping import clip_all
from flbackdoor.updates import StateDict


def gaussian_noise_like(update: StateDict, std: float, generator: torch.Generator) -> StateDict:
    return {k: torch.randn(v.shape, generator=generator) * std for k, v in update.items()}


def noisy_clipped_mean(deltas: list[StateDict], max_norm: float, noise_std: float,
                       num_sampled: int, generator: torch.Generator) -> StateDict:
    clipped, _ = clip_all(deltas, max_norm)
    total = {k: sum(d[k] for d in clipped) for k in clipped[0]}
    if noise_std > 0:
        noise = gaussian_noise_like(total, noise_std, generator)
        total = {k: v + noise[k] for k, v in total.items()}
    return {k: v / num_sampled for k, v in total.items()}
