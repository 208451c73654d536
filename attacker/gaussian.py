"""The Gaussian attack: send a random update whose entries are drawn from N(0, sigma^2), the
Gaussian Byzantine workers of Blanchard et al. (NeurIPS 2017, "Machine Learning with
Adversaries", section 5: mean zero, isotropic, standard deviation 200), the baseline Fang et al.
(USENIX Security 2020) and FLPoison run as "Gaussian attack". sigma defaults to Blanchard et
al.'s 200 (FLPoison's default is 1). Each attacker draws its own noise from its node's seeded
generator, so a run is reproducible.

Blanchard et al.'s workers send gradients; we draw the update w - w_t, so sigma is the spread
around w_t whatever the model's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacker.base import TrainJob
from attacker.untargeted import UntargetedAttack, UntargetedConfig, own_loss
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import ATTACKS


def gaussian_update(d: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return sigma * torch.randn(d, generator=generator)


@dataclass
class GaussianConfig(UntargetedConfig):
    name: str = "gaussian"
    sigma: float = 200.0

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.sigma >= 0, f"attack.sigma={self.sigma} must be >= 0")


@ATTACKS.register("gaussian")
class Gaussian(UntargetedAttack):
    Config = GaussianConfig

    def delta(self, job: TrainJob, names: list[str]) -> tuple[torch.Tensor, float]:
        d = sum(job.global_state[k].numel() for k in names)
        return gaussian_update(d, self.config.sigma, job.generator), own_loss(job)
