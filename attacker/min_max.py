"""Min-Max (Shejwalkar and Houmansadr, NDSS 2021, "Manipulating the Byzantine"), the first of
its two AGR-agnostic attacks, and what it shares with Min-Sum (``min_sum.py``).

Every attacker sends m = mean + gamma p: the benign mean moved along a perturbation p, the
paper's inverse unit vector (``unit_vec``: -mean / ||mean||), inverse standard deviation
(``std``: -std, coordinate-wise) or inverse sign (``sign``: -sign(mean)). gamma is as large
as the attack's constraint allows:

- Min-Max: max_i ||m - b_i|| <= max_{i,j} ||b_i - b_j|| (m is no farther from any benign
  update than the two farthest benign updates are from each other);
- Min-Sum: sum_i ||m - b_i||^2 <= max_i sum_j ||b_i - b_j||^2 (m's sum of squared distances is
  no larger than that of the worst benign update).

gamma comes from the paper's Algorithm 1: start at gamma_init, step up after a success and down
after a failure by gamma_init / 2, gamma_init / 4, ..., and stop when gamma is within tau of the
last success, which is returned (gamma reaches at most 2 gamma_init). The defaults are the
authors' released AGR-agnostic setting: p = std, gamma_init = 10, tau = 1e-5.

The authors' released Min-Sum compares against the smallest benign sum (min_i); we follow the
paper's max_i, as written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attacker.untargeted import OmniscientAttack, OmniscientConfig
from flbackdoor.config import ExperimentConfig, check, one_of
from flbackdoor.registries import ATTACKS

PERTURBATIONS = ("unit_vec", "std", "sign")


def perturbation(benign: torch.Tensor, kind: str) -> torch.Tensor:
    """The direction p the benign mean is moved along (the rows of ``benign`` are updates)."""
    mean = benign.mean(0)
    if kind == "unit_vec":
        norm = mean.norm()
        return -mean / norm if norm > 0 else torch.zeros_like(mean)
    if kind == "std":
        return -benign.std(0, correction=0)
    if kind == "sign":
        return -torch.sign(mean)
    raise ValueError(f"unknown perturbation {kind!r}; one of {', '.join(PERTURBATIONS)}")


def max_distance(benign: torch.Tensor, m: torch.Tensor) -> float:
    """max_i ||m - b_i||^2."""
    return float(((benign.double() - m.double()) ** 2).sum(1).max())


def sum_distance(benign: torch.Tensor, m: torch.Tensor) -> float:
    """sum_i ||m - b_i||^2."""
    return float(((benign.double() - m.double()) ** 2).sum())


def search_gamma(fits: Callable[[float], bool], gamma_init: float, tau: float) -> float:
    """Algorithm 1: the largest gamma (to within tau) that ``fits``, at most 2 gamma_init."""
    gamma, step, success = gamma_init, gamma_init / 2, 0.0
    while abs(success - gamma) > tau and step > 0:  # step > 0: tau below float resolution
        if fits(gamma):
            success, gamma = gamma, gamma + step
        else:
            gamma -= step
        step /= 2
    return success


def agnostic_update(benign: torch.Tensor, kind: str, gamma_init: float, tau: float,
                    score: Callable[[torch.Tensor, torch.Tensor], float]
                    ) -> tuple[torch.Tensor, float]:
    """mean + gamma p with the largest gamma whose ``score`` is at most the largest score of a
    benign update; returns the update and gamma."""
    mean, p = benign.mean(0), perturbation(benign, kind)
    bound = max(score(benign, b) for b in benign)
    gamma = search_gamma(lambda g: score(benign, mean + g * p) <= bound, gamma_init, tau)
    return mean + gamma * p, gamma


def min_max_update(benign: torch.Tensor, kind: str = "std", gamma_init: float = 10.0,
                   tau: float = 1e-5) -> tuple[torch.Tensor, float]:
    return agnostic_update(benign, kind, gamma_init, tau, max_distance)


@dataclass
class MinMaxConfig(OmniscientConfig):
    name: str = "min_max"
    perturbation: str = "std"  # unit_vec | std | sign
    gamma_init: float = 10.0
    tau: float = 1.0e-5  # the search stops within tau of the largest gamma it found

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        one_of("attack.perturbation", self.perturbation, PERTURBATIONS)
        check(self.gamma_init > 0, f"attack.gamma_init={self.gamma_init} must be positive")
        check(self.tau > 0, f"attack.tau={self.tau} must be positive")


@ATTACKS.register("min_max")
class MinMax(OmniscientAttack):
    Config = MinMaxConfig
    score = staticmethod(max_distance)

    def craft(self, benign: torch.Tensor, num_attackers: int) -> torch.Tensor:
        c = self.config
        return agnostic_update(benign, c.perturbation, c.gamma_init, c.tau, self.score)[0]
