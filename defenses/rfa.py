"""RFA, robust federated aggregation (Pillutla, Kakade, Harchaoui, "Robust Aggregation for
Federated Learning", IEEE Transactions on Signal Processing 2022): the aggregate is the
geometric median of the updates, argmin_v sum_k alpha_k ||v - w_k||, alpha_k = n_k / sum_j n_j
(section III), computed by the smoothed Weiszfeld algorithm (section III, Algorithm 2):

    beta_k = alpha_k / max(nu, ||v - w_k||),   v <- sum_k beta_k w_k / sum_k beta_k,

for at most R iterations (the paper's experiments use a small budget, R = 3), from the weighted
mean (the n_k-weighted FedAvg update, as the authors' code starts), stopping early when the
objective sum_k alpha_k ||v - w_k|| improves by less than ``tolerance`` times its value (the
authors' code's ``ftol`` test). ``rfa_objective`` is that (unsmoothed) objective at the returned
point. Nobody is flagged: every update gets a positive weight.

The arithmetic is float64 (the aggregate is cast back to float32), so identical updates come
back bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten, unflatten


def median_objective(v: torch.Tensor, points: torch.Tensor, alphas: torch.Tensor) -> float:
    """sum_k alpha_k ||v - w_k||."""
    return float((alphas * torch.linalg.vector_norm(points - v, dim=1)).sum())


def weiszfeld_step(v: torch.Tensor, points: torch.Tensor, alphas: torch.Tensor,
                   nu: float) -> torch.Tensor:
    """One smoothed Weiszfeld update: sum_k beta_k w_k / sum_k beta_k,
    beta_k = alpha_k / max(nu, ||v - w_k||)."""
    distances = torch.linalg.vector_norm(points - v, dim=1)
    betas = alphas / distances.clamp_min(nu)
    return (betas[:, None] * points).sum(dim=0) / betas.sum()


def smoothed_weiszfeld(points: torch.Tensor, weights: torch.Tensor, nu: float,
                       max_iterations: int, tolerance: float
                       ) -> tuple[torch.Tensor, int, float]:
    """The geometric median of the rows of ``points`` with weights n_k (normalized to alpha_k):
    (the median in float64, the number of Weiszfeld iterations run, the objective there)."""
    w = points.double()
    alphas = weights.double() / weights.double().sum()
    v = (alphas[:, None] * w).sum(dim=0)
    objective = median_objective(v, w, alphas)
    done = 0
    for _ in range(max_iterations):
        v = weiszfeld_step(v, w, alphas, nu)
        done += 1
        previous, objective = objective, median_objective(v, w, alphas)
        if abs(previous - objective) <= tolerance * objective:
            break
    return v, done, objective


@dataclass
class RFAConfig(DefenseConfig):
    name: str = "rfa"
    nu: float = 1.0e-6  # nu, the smoothing parameter
    max_iterations: int = 3  # R, the Weiszfeld budget
    tolerance: float = 1.0e-6  # early stop: relative improvement of the objective

    def check(self, cfg: ExperimentConfig) -> None:
        check(self.nu > 0, f"defense.nu={self.nu} must be > 0")
        check(self.max_iterations >= 1,
              f"defense.max_iterations={self.max_iterations} must be >= 1")
        check(self.tolerance >= 0, f"defense.tolerance={self.tolerance} must be >= 0")


@DEFENSES.register("rfa")
class RFA(Defense):
    Config = RFAConfig

    def aggregate(self, updates: Updates) -> Aggregate:
        c = self.config
        median, iterations, objective = smoothed_weiszfeld(
            flatten(updates.deltas), torch.tensor(updates.weights), c.nu, c.max_iterations,
            c.tolerance)
        return Aggregate(unflatten(median.float(), updates.deltas[0]),
                         stats={"rfa_iterations": iterations, "rfa_objective": objective})
