"""Bulyan (El Mhamdi et al., ICML 2018, section 4, Algorithm 1): select theta = n - 2f updates
by applying Krum repeatedly (each time removing the chosen one from the pool), then, per
coordinate, average the beta = theta - 2f selected values closest to the coordinate's median.
Updates never selected are flagged. (Flower's Bulyan picks the theta lowest Krum scores of one
pass; the paper re-scores after each pick, which we follow.)"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.base import Aggregate, Defense, Updates, excluded
from defenses.krum import KrumConfig, krum_scores
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten, unflatten


def bulyan_select(flat: torch.Tensor, f: int) -> list[int]:
    """Indices of theta = n - 2f updates chosen by iterated Krum."""
    pool = list(range(flat.shape[0]))
    chosen = []
    for _ in range(flat.shape[0] - 2 * f):
        scores = krum_scores(flat[pool], f)
        best = pool[int(torch.argmin(scores))]
        chosen.append(best)
        pool.remove(best)
    return chosen


def closest_to_median_mean(selected: torch.Tensor, beta: int) -> torch.Tensor:
    """Per coordinate, the mean of the beta values closest to the coordinate-wise median."""
    median = selected.median(dim=0).values
    nearest = (selected - median).abs().argsort(dim=0, stable=True)[:beta]
    return selected.gather(0, nearest).mean(dim=0)


@dataclass
class BulyanConfig(KrumConfig):
    name: str = "bulyan"

    def check(self, cfg: ExperimentConfig) -> None:
        check(cfg.clients_per_round >= 4 * self.num_malicious + 3,
              f"defense=bulyan needs clients_per_round >= 4 * defense.num_malicious + 3 "
              f"({4 * self.num_malicious + 3}), not {cfg.clients_per_round}")


@DEFENSES.register("bulyan")
class Bulyan(Defense):
    Config = BulyanConfig
    detects = True

    def aggregate(self, updates: Updates) -> Aggregate:
        f = self.config.num_malicious
        n = len(updates.deltas)
        if n < 4 * f + 3:  # fewer replies came than the guarantee needs: keep the model
            return Aggregate(None, stats={"defense_skipped": f"{n} updates < 4f + 3"})
        flat = flatten(updates.deltas)
        chosen = bulyan_select(flat, f)
        vector = closest_to_median_mean(flat[chosen], len(chosen) - 2 * f)
        return Aggregate(unflatten(vector, updates.deltas[0]), flagged=excluded(updates, chosen))
