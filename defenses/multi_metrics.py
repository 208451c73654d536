"""Multi-metrics (Huang, Li, Chen, Shi, Gao, "Multi-Metrics Adaptively Identifies Backdoors in
Federated Learning", ICCV 2023), its method section ("multiple metrics as feature of gradient",
"dynamic weighting via whitening") and algorithm:

1. Multi-metric features: for every update Delta_i, its cosine distance, Manhattan (L1)
   distance and Euclidean (L2) distance to every other update of the round, summed per
   metric: x'_i = (sum_j 1 - cos(D_i, D_j), sum_j ||D_i - D_j||_1, sum_j ||D_i - D_j||_2)
   (:func:`metric_features`).
2. Dynamic weighting by whitening: Sigma = the sample covariance of the clients' x' vectors,
   score_i = sqrt(x'_i^T Sigma^-1 x'_i) (:func:`whitened_scores`). Sigma is singular when the
   round has 3 updates or fewer, or its features are collinear (identical updates): then the
   Moore-Penrose pseudo-inverse stands in for the inverse (stat ``multi_metrics_pinv``).
3. Selection: the fraction p of the clients with the lowest scores (the least divergent) is
   kept, floor(p * n) of them and at least one, and averaged n_k-weighted as FedAvg
   (:func:`select_lowest`); the others are flagged. p = 0.3 kept, as in the authors' code
   (github.com/siquanhuang/Multi-metrics, defense.py: ``p = 0.3``, the ``int(p * n)`` lowest
   scores are aggregated).

Deviations, where the authors' own texts disagree: their project page (the paper's feature
definition) builds per-client features (||D_i||_1, ||D_i||_2, cos(w_t, w_i)) and sums their
absolute differences, so its "Euclidean" term is the difference of lengths; the authors' code
uses the pairwise L1 distance, the difference of L2 lengths, and the squared cosine distance,
between whole models w_i rather than updates. This module takes the pairwise distances between
the updates named in the algorithm's summary (cosine distance, L1, L2), which treat all three
alike and need no global model; ties in the score are broken by partition order. The code
ranks by x'^T Sigma^-1 x' (no square root: the same order); the project page's sentence "we
select gradients with higher scores" contradicts its code, which keeps the lowest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates, excluded
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from defenses.similarity import cosine_distances
from flbackdoor.updates import flatten, weighted_mean


def metric_features(flat: torch.Tensor) -> torch.Tensor:
    """(n, 3): per update, the summed cosine, Manhattan and Euclidean distances to the others."""
    x = flat.double()
    cosine = torch.from_numpy(cosine_distances(x))
    manhattan = torch.cdist(x, x, p=1.0)
    euclidean = torch.cdist(x, x, p=2.0)
    return torch.stack([cosine.sum(1), manhattan.sum(1), euclidean.sum(1)], dim=1)


def whitened_scores(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """sqrt(x_i^T Sigma^-1 x_i) per row, Sigma the rows' sample covariance; also whether Sigma
    was singular (then its pseudo-inverse was used)."""
    x = features.double()
    n, k = x.shape
    sigma = torch.cov(x.T) if n > 1 else torch.zeros(k, k, dtype=x.dtype)
    singular = bool(torch.linalg.matrix_rank(sigma) < k)
    inverse = torch.linalg.pinv(sigma, hermitian=True) if singular else torch.linalg.inv(sigma)
    quad = torch.einsum("ij,jk,ik->i", x, inverse, x).clamp_min(0.0)
    return quad.sqrt(), singular


def select_lowest(scores: torch.Tensor, keep_fraction: float) -> list[int]:
    """The floor(p * n) (at least 1) lowest scores' indices, in partition order."""
    n = scores.numel()
    k = max(1, min(n, math.floor(keep_fraction * n + 1e-9)))
    order = torch.argsort(scores, stable=True)
    return sorted(int(i) for i in order[:k])


@dataclass
class MultiMetricsConfig(DefenseConfig):
    name: str = "multi_metrics"
    keep_fraction: float = 0.3  # p

    def check(self, cfg: ExperimentConfig) -> None:
        check(0 < self.keep_fraction <= 1,
              f"defense.keep_fraction={self.keep_fraction} must be in (0, 1]")
        kept = math.floor(self.keep_fraction * cfg.clients_per_round + 1e-9)
        check(kept >= 1, f"defense.keep_fraction={self.keep_fraction} keeps no client of "
                         f"clients_per_round={cfg.clients_per_round}; it must be >= "
                         f"1/{cfg.clients_per_round}")


@DEFENSES.register("multi_metrics")
class MultiMetrics(Defense):
    Config = MultiMetricsConfig
    detects = True

    def aggregate(self, updates: Updates) -> Aggregate:
        scores, singular = whitened_scores(metric_features(flatten(updates.deltas)))
        kept = select_lowest(scores, self.config.keep_fraction)
        return Aggregate(weighted_mean([updates.deltas[i] for i in kept],
                                       [updates.weights[i] for i in kept]),
                         flagged=excluded(updates, kept),
                         stats={"multi_metrics_num_kept": len(kept),
                                "multi_metrics_pinv": singular,
                                "multi_metrics_max_score": float(scores.max())})
