"""Krum (Blanchard et al., NeurIPS 2017, section 4, Definition 1): with n updates of which at
most f are Byzantine, each update's score is the sum of squared distances to its n - f - 2
nearest others; Krum keeps the update with the lowest score. Every other update is flagged."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates, excluded
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten, weighted_mean


def krum_scores(flat: torch.Tensor, f: int) -> torch.Tensor:
    """score(i) = sum of the squared L2 distances from row i to its n - f - 2 closest rows
    (at least one, as in Flower's implementation when n is small)."""
    n = flat.shape[0]
    distances = torch.cdist(flat.double(), flat.double()) ** 2
    closest = max(1, n - f - 2)
    nearest = distances.sort(dim=1).values[:, 1:closest + 1]  # column 0 is the row itself
    return nearest.sum(dim=1)


def multikrum_select(flat: torch.Tensor, f: int, m: int) -> list[int]:
    """The indices of the m lowest Krum scores, best first (Multi-Krum, section 5)."""
    order = torch.argsort(krum_scores(flat, f), stable=True)
    return [int(i) for i in order[:m]]


@dataclass
class KrumConfig(DefenseConfig):
    name: str = "krum"
    num_malicious: int = 1  # f

    def check(self, cfg: ExperimentConfig) -> None:
        check(self.num_malicious >= 0, f"defense.num_malicious={self.num_malicious} must be >= 0")
        check(cfg.clients_per_round > 2 * self.num_malicious + 2,
              f"defense={self.name} needs clients_per_round > 2 * defense.num_malicious + 2")


class Selection(Defense):
    """A defense that keeps some updates whole and averages them (n_k-weighted)."""

    detects = True

    def select(self, updates: Updates) -> list[int]:
        raise NotImplementedError

    def aggregate(self, updates: Updates) -> Aggregate:
        kept = self.select(updates)
        return Aggregate(weighted_mean([updates.deltas[i] for i in kept],
                                       [updates.weights[i] for i in kept]),
                         flagged=excluded(updates, kept))


@DEFENSES.register("krum")
class Krum(Selection):
    Config = KrumConfig

    def select(self, updates: Updates) -> list[int]:
        return multikrum_select(flatten(updates.deltas), self.config.num_malicious, 1)
