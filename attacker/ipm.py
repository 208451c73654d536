"""Inner product manipulation (Xie, Koyejo and Gupta, UAI 2020, "Fall of Empires"): every
attacker sends -epsilon times the mean of the benign updates, so the aggregate's inner product
with the true update turns negative once a robust rule lets enough of it through.

epsilon defaults to 0.1, the small epsilon of the paper's experiments against Krum and
coordinate-wise median: the attackers' identical copies sit just beside the benign cloud, so
Krum picks one of them and the median is pulled to the benign tail. Against plain averaging the
inner product turns negative only when m epsilon > n - m (n updates, m of them attackers), so
that setting needs a large epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacker.untargeted import OmniscientAttack, OmniscientConfig
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import ATTACKS


def ipm_update(benign: torch.Tensor, epsilon: float) -> torch.Tensor:
    """-epsilon times the mean of the rows of the (k, d) ``benign``."""
    return -epsilon * benign.mean(0)


@dataclass
class IpmConfig(OmniscientConfig):
    name: str = "ipm"
    epsilon: float = 0.1

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.epsilon > 0, f"attack.epsilon={self.epsilon} must be positive")


@ATTACKS.register("ipm")
class Ipm(OmniscientAttack):
    Config = IpmConfig

    def craft(self, benign: torch.Tensor, num_attackers: int) -> torch.Tensor:
        return ipm_update(benign, self.config.epsilon)
