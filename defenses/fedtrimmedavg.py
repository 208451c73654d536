"""Coordinate-wise trimmed mean (Yin et al., ICML 2018, Definition 2): per coordinate, drop
the floor(beta n) largest and smallest values and average the rest. Nobody is flagged."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten, unflatten


def trimmed_mean(flat: torch.Tensor, beta: float) -> torch.Tensor:
    cut = int(beta * flat.shape[0])
    ordered = flat.sort(dim=0).values
    return ordered[cut:flat.shape[0] - cut].mean(dim=0)


@dataclass
class TrimmedMeanConfig(DefenseConfig):
    name: str = "fedtrimmedavg"
    trim_fraction: float = 0.2  # beta: the share cut at each end

    def check(self, cfg: ExperimentConfig) -> None:
        check(0 <= self.trim_fraction < 0.5,
              f"defense.trim_fraction={self.trim_fraction} must be in [0, 0.5)")


@DEFENSES.register("fedtrimmedavg")
class FedTrimmedAvg(Defense):
    Config = TrimmedMeanConfig

    def aggregate(self, updates: Updates) -> Aggregate:
        vector = trimmed_mean(flatten(updates.deltas), self.config.trim_fraction)
        return Aggregate(unflatten(vector, updates.deltas[0]))
