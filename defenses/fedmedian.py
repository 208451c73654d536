"""Coordinate-wise median (Yin et al., ICML 2018, Definition 1): each coordinate of the
aggregate is the median of the updates' values there (the mean of the two middle ones for an
even count, as numpy and Flower's FedMedian). Nobody is flagged: every update takes part."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten, unflatten


def coordinate_median(flat: torch.Tensor) -> torch.Tensor:
    ordered = flat.sort(dim=0).values
    n = flat.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


@dataclass
class MedianConfig(DefenseConfig):
    name: str = "fedmedian"


@DEFENSES.register("fedmedian")
class FedMedian(Defense):
    Config = MedianConfig

    def aggregate(self, updates: Updates) -> Aggregate:
        return Aggregate(unflatten(coordinate_median(flatten(updates.deltas)),
                                   updates.deltas[0]))
