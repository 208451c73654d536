"""Min-Sum (Shejwalkar and Houmansadr, NDSS 2021), the second AGR-agnostic attack: mean + gamma
p with the largest gamma such that sum_i ||m - b_i||^2 <= max_i sum_j ||b_i - b_j||^2. The
perturbation and the search for gamma are Min-Max's (``min_max.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacker.min_max import MinMax, MinMaxConfig, agnostic_update, sum_distance
from flbackdoor.registries import ATTACKS


def min_sum_update(benign: torch.Tensor, kind: str = "std", gamma_init: float = 10.0,
                   tau: float = 1e-5) -> tuple[torch.Tensor, float]:
    return agnostic_update(benign, kind, gamma_init, tau, sum_distance)


@dataclass
class MinSumConfig(MinMaxConfig):
    name: str = "min_sum"


@ATTACKS.register("min_sum")
class MinSum(MinMax):
    Config = MinSumConfig
    score = staticmethod(sum_distance)
