"""Norm clipping (Sun et al. section 4): each update scaled by 1 / max(1, ||Delta_k|| / M)
before the n_k-weighted FedAvg mean."""

from __future__ import annotations

from dataclasses import dataclass

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import StateDict, clip_to_norm, weighted_mean


def clip_all(deltas: list[StateDict], max_norm: float) -> tuple[list[StateDict], int]:
    """Every update clipped to ``max_norm``; also how many had to be scaled down."""
    clipped = [clip_to_norm(d, max_norm) for d in deltas]
    return [d for d, _ in clipped], sum(was for _, was in clipped)


def clipped_mean(deltas: list[StateDict], weights: list[float], max_norm: float) -> StateDict:
    return weighted_mean(clip_all(deltas, max_norm)[0], weights)


@dataclass
class ClippingConfig(DefenseConfig):
    name: str = "norm_clipping"
    norm_bound: float = 3.0  # M

    def check(self, cfg: ExperimentConfig) -> None:
        check(self.norm_bound > 0, f"defense.norm_bound={self.norm_bound} must be positive")


@DEFENSES.register("norm_clipping")
class NormClipping(Defense):
    Config = ClippingConfig

    def aggregate(self, updates: Updates) -> Aggregate:
        clipped, count = clip_all(updates.deltas, self.config.norm_bound)
        return Aggregate(weighted_mean(clipped, updates.weights),
                         stats={"fraction_clipped": count / len(updates.deltas)})
