"""A Little Is Enough (Baruch, Baruch and Goldberg, NeurIPS 2019), the convergence-prevention
attack: every attacker sends, coordinate by coordinate, the benign mean shifted by z_max
standard deviations, mu_j - z_max sigma_j: far enough to drag the aggregate, near enough that
median- and distance-based rules keep it.

z_max comes from the paper's z-table step: with n workers in the round and m of them
attackers, s = floor(n/2 + 1) - m benign workers must side with the attackers for a majority,
and z_max = max_z Phi(z) < (n - s) / n, i.e. Phi^{-1}((n - s) / n). ``attack.z`` > 0 fixes it.

Where the paper's attackers estimate mu and sigma from their own data, ours read the round's
benign updates (the omniscient variant of Shejwalkar and Houmansadr's evaluation and FLPoison).
sigma is the population standard deviation (numpy's ``std``), defined for a single update.
With an attacker majority (s <= 0) the z-table gives infinity; we take s = 1, its largest
finite value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import norm

from attacker.untargeted import OmniscientAttack, OmniscientConfig
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import ATTACKS


def z_max(n: int, m: int) -> float:
    """Phi^{-1}((n - s) / n) with s = floor(n/2 + 1) - m (at least 1): n workers, m attackers."""
    if not 1 <= m <= n:
        raise ValueError(f"z_max needs 1 <= m <= n, not n={n}, m={m}")
    s = max(n // 2 + 1 - m, 1)
    return max(float(norm.ppf((n - s) / n)), 0.0)  # n = 1: nobody to hide among, z = 0


def alie_update(benign: torch.Tensor, z: float) -> torch.Tensor:
    """mu - z sigma, coordinate-wise over the rows of the (k, d) ``benign``."""
    return benign.mean(0) - z * benign.std(0, correction=0)


@dataclass
class AlieConfig(OmniscientConfig):
    name: str = "alie"
    z: float = 0.0  # 0: z_max from the round's n and m; > 0: this many standard deviations

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.z >= 0, f"attack.z={self.z} must be >= 0 (0: from n and m)")


@ATTACKS.register("alie")
class Alie(OmniscientAttack):
    Config = AlieConfig

    def craft(self, benign: torch.Tensor, num_attackers: int) -> torch.Tensor:
        z = self.config.z or z_max(len(benign) + num_attackers, num_attackers)
        return alie_update(benign, z)
