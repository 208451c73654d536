"""Sign flipping: train as a benign node would, then send the update negated and scaled,
w_t - scale (w - w_t) (the sign-flipping baseline of the Byzantine-robustness literature, e.g.
Karimireddy, He and Jaggi, ICML 2021; FLPoison). Each attacker flips its own update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacker.base import TrainJob
from attacker.untargeted import UntargetedAttack, UntargetedConfig, as_matrix, honest_update
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import ATTACKS


def flip(update: torch.Tensor, scale: float) -> torch.Tensor:
    return -scale * update


@dataclass
class SignFlipConfig(UntargetedConfig):
    name: str = "sign_flip"
    scale: float = 1.0

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.scale > 0, f"attack.scale={self.scale} must be positive")


@ATTACKS.register("sign_flip")
class SignFlip(UntargetedAttack):
    Config = SignFlipConfig

    def delta(self, job: TrainJob, names: list[str]) -> tuple[torch.Tensor, float]:
        update, result = honest_update(job)
        return flip(as_matrix([update], names)[0], self.config.scale), result.loss
