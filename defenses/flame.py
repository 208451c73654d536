"""FLAME (Nguyen, Rieger, Chen, Yalame, Moellering, Fereidooni, Marchal, Miettinen, Mirhoseini,
Zeitouni, Koushanfar, Sadeghi, Schneider, "FLAME: Taming Backdoors in Federated Learning",
USENIX Security 2022; arXiv 2101.02281), Algorithm 1, one round with n local models:

1. Dynamic model filtering (design section, "Dynamic Model Filtering"; Algorithm 1,
   CosineDistance + Clustering): the pairwise cosine distances
   c_ij = 1 - <W_i, W_j> / (||W_i|| ||W_j||) of the local models W_i, clustered by HDBSCAN with
   minimum cluster size n/2 + 1, min_samples 1 and a single cluster allowed; the models of the
   majority cluster are admitted (b_1..b_L), every other one is flagged.
2. Adaptive clipping ("Adaptive Clipping"; Algorithm 1, EuclideanDistances + Median):
   e_i = ||W_i - G_{t-1}|| for all n models, S_t = median(e_1..e_n); each admitted model becomes
   G_{t-1} + (W_i - G_{t-1}) * min(1, S_t / e_i).
3. Aggregation (Algorithm 1): G_t = the plain (unweighted) mean of the L clipped admitted models.
4. Adaptive noising ("Adaptive Noising"; Algorithm 1, last step): G*_t = G_t + N(0, sigma^2) per
   weight, sigma = lambda * S_t, lambda = (1/epsilon) sqrt(2 ln(1.25/delta)) (the Gaussian
   mechanism). The default is the paper's image-classification noise level lambda = 0.001
   (0.01 for its word-prediction and IoT tasks); epsilon = 3705, delta = 0.001 give 0.00102.

Choices where this interface and the paper differ, stated:

- What is clustered. Algorithm 1 computes the cosine distances of the local *models* W_i (not of
  the updates W_i - G_{t-1}); ``cluster_on: models`` (the default) does so, with W_i = w_t +
  Delta_i from ``updates.global_state``. ``cluster_on: updates`` clusters Delta_i instead (what
  several later re-implementations do). With a common w_t the two differ: every model shares the
  w_t component, so model cosines are all near 1 and only their relative spread matters to
  HDBSCAN. Without a w_t (hand-made Updates in tests) the models are the updates.
  Server-only buffers (``channel_mask``, the pruning mask) are left out of the comparison.
- HDBSCAN is scikit-learn's. The paper's min_samples = 1 is in the convention of the
  ``hdbscan`` package (neighbours other than the point itself); scikit-learn counts the point
  itself, so it is given min_samples + 1 (scikit-learn's own note on HDBSCAN says so).
- A round where HDBSCAN labels every model noise (the paper assumes a benign majority, so it
  does not say): every model is admitted, still clipped and noised (``flame_num_clusters`` 0).
- The noise is added to the aggregate update rather than to the model: the server steps
  w_{t+1} = w_t + eta * delta, which is G*_t exactly at the paper's eta = 1 (with another
  server learning rate the noise is scaled by eta too). It is drawn from NoisyDefense's seeded
  generator, so a resumed run draws the same noise.
- ``fraction_clipped`` is over the admitted models (only those are clipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import HDBSCAN

from defenses.base import Aggregate, DefenseConfig, NoisyDefense, Updates, excluded
from defenses.similarity import cosine_distances
from flbackdoor.config import ExperimentConfig, check, one_of
from flbackdoor.models import SERVER_BUFFERS
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import StateDict, flatten, unflatten


def privacy_lambda(epsilon: float, delta: float) -> float:
    """lambda = (1/epsilon) sqrt(2 ln(1.25/delta)), the Gaussian mechanism's noise multiplier
    (FLAME section 4.4)."""
    return math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def learned_entries(state: StateDict) -> StateDict:
    """``state`` without the buffers only the server sets (they are no client's doing)."""
    return {k: v for k, v in state.items() if k not in SERVER_BUFFERS}


def local_models(updates: Updates) -> list[StateDict]:
    """W_k = w_t + Delta_k (the updates themselves when ``updates`` carries no w_t)."""
    w_t = updates.global_state
    if not w_t:
        return list(updates.deltas)
    return [{k: w_t[k].float() + v for k, v in d.items()} for d in updates.deltas]


def majority_cluster(distances: np.ndarray, min_cluster_size: int = 0,
                     min_samples: int = 1) -> tuple[list[int], int]:
    """HDBSCAN over precomputed distances (single cluster allowed): the indices of the largest
    cluster, and how many clusters there were. ``min_cluster_size`` 0 means n // 2 + 1 (above
    half of the n points, so at most one cluster qualifies); a larger one is capped at n.
    ``min_samples`` counts neighbours other than the point (the ``hdbscan`` package's
    convention). All points are returned when HDBSCAN finds no cluster (or n < 2)."""
    n = distances.shape[0]
    if n < 2:
        return list(range(n)), int(n)
    size = n // 2 + 1 if min_cluster_size <= 0 else min(min_cluster_size, n)
    labels = HDBSCAN(metric="precomputed", min_cluster_size=max(2, size),
                     min_samples=min(min_samples + 1, n), allow_single_cluster=True,
                     copy=True).fit_predict(distances)
    clusters = labels[labels >= 0]
    if clusters.size == 0:
        return list(range(n)), 0
    largest = int(np.bincount(clusters).argmax())
    return [i for i in range(n) if labels[i] == largest], int(np.unique(clusters).size)


def clip_bound(flat_deltas: torch.Tensor) -> tuple[torch.Tensor, float]:
    """e_i = ||W_i - G_{t-1}|| = ||Delta_i|| for every model, and S_t = median(e)."""
    e = flat_deltas.double().norm(dim=1)
    return e, float(torch.quantile(e, 0.5))


def clipped_mean(flat_deltas: torch.Tensor, admitted: list[int],
                 bound: float) -> tuple[torch.Tensor, int]:
    """The unweighted mean of the admitted Delta_i * min(1, S_t / e_i), and how many of them
    were scaled down."""
    rows = flat_deltas[admitted].double()
    e = rows.norm(dim=1)
    gamma = torch.where(e > bound, bound / e.clamp_min(1e-300), torch.ones_like(e))
    return (rows * gamma[:, None]).mean(dim=0).float(), int((e > bound).sum())


def flame(flat_deltas: torch.Tensor, features: torch.Tensor, noise_lambda: float,
          generator: torch.Generator, min_cluster_size: int = 0,
          min_samples: int = 1) -> tuple[torch.Tensor, list[int], dict]:
    """One FLAME round on (n, d) updates; ``features`` are the rows compared by cosine (the
    models or the updates). Returns the noised aggregate update, the admitted indices and
    the stats."""
    admitted, num_clusters = majority_cluster(cosine_distances(features), min_cluster_size,
                                              min_samples)
    _, bound = clip_bound(flat_deltas)
    mean, count = clipped_mean(flat_deltas, admitted, bound)
    sigma = noise_lambda * bound
    if sigma > 0:
        mean = mean + torch.randn(mean.shape, generator=generator) * sigma
    return mean, admitted, {
        "flame_num_admitted": len(admitted),
        "flame_num_clusters": num_clusters,
        "flame_clip_bound": bound,
        "fraction_clipped": count / len(admitted),
        "flame_noise_std": sigma,
    }


CLUSTER_ON = ("models", "updates")


@dataclass
class FlameConfig(DefenseConfig):
    name: str = "flame"
    cluster_on: str = "models"  # cosine of the local models W_k (Algorithm 1) or the updates
    min_cluster_size: int = 0  # 0: n // 2 + 1 of the round's n models
    min_samples: int = 1  # HDBSCAN min_samples, hdbscan-package convention
    noise_lambda: float = 0.001  # lambda: sigma = lambda * S_t (epsilon 3705, delta 0.001)

    def check(self, cfg: ExperimentConfig) -> None:
        one_of("defense.cluster_on", self.cluster_on, CLUSTER_ON)
        check_clustering(self, cfg)
        check(self.noise_lambda >= 0, f"defense.noise_lambda={self.noise_lambda} must be >= 0")


def check_clustering(config, cfg: ExperimentConfig) -> None:
    """The HDBSCAN settings FLAME and FreqFed share, against clients_per_round."""
    n = cfg.clients_per_round
    check(config.min_cluster_size == 0 or 2 <= config.min_cluster_size <= n,
          f"defense.min_cluster_size={config.min_cluster_size} must be 0 (n // 2 + 1) or "
          f"between 2 and clients_per_round={n}")
    check(1 <= config.min_samples <= max(1, n - 1),
          f"defense.min_samples={config.min_samples} must be between 1 and "
          f"clients_per_round - 1={max(1, n - 1)}")


@DEFENSES.register("flame")
class Flame(NoisyDefense):
    Config = FlameConfig
    detects = True

    def aggregate(self, updates: Updates) -> Aggregate:
        c = self.config
        rows = local_models(updates) if c.cluster_on == "models" else updates.deltas
        features = flatten([learned_entries(r) for r in rows])
        delta, admitted, stats = flame(flatten(updates.deltas), features, c.noise_lambda,
                                       self.generator, c.min_cluster_size, c.min_samples)
        return Aggregate(unflatten(delta, updates.deltas[0]),
                         flagged=excluded(updates, admitted), stats=stats)
