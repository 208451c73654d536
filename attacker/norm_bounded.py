"""Sun et al. section 3, the norm-bounded attack: train on D_trn + D_mal from w_t, projecting
w onto the L2 ball of radius M / b around w_t after each epoch (or step), then boost by b: the
update's norm is at most M, so norm clipping at M does not touch it."""

from __future__ import annotations

from dataclasses import dataclass

from attacker.boosted import Boosted, BoostedConfig
from flbackdoor.config import ExperimentConfig, check, one_of
from flbackdoor.registries import ATTACKS


@dataclass
class NormBoundedConfig(BoostedConfig):
    name: str = "norm_bounded"
    norm_bound: float = 10.0  # M: the boosted update's L2 norm is at most this
    project_every: str = "epoch"  # project after each "epoch" or "step"

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.norm_bound > 0, f"attack.norm_bound={self.norm_bound} must be positive")
        one_of("attack.project_every", self.project_every, ("epoch", "step"))


@ATTACKS.register("norm_bounded")
class NormBounded(Boosted):
    Config = NormBoundedConfig

    def radius(self, factor: float | None) -> float:
        return self.config.norm_bound / (factor or 1.0)

    def project_each_step(self) -> bool:
        return self.config.project_every == "step"
