"""FreqFed (Fereidooni, Pegoraro, Rieger, Dmitrienko, Sadeghi, "FreqFed: A Frequency
Analysis-Based Approach for Mitigating Poisoning Attacks in Federated Learning", NDSS 2024;
arXiv 2312.04432), section IV and Algorithm 1, one round with K local models W_k:

1. Frequency analysis: every layer's weight matrix W (P x Q) of W_k goes through the 2-D
   orthonormal DCT-II (the paper's DCT equation),
       V(u, v) = a(u) b(v) sum_{m<P} sum_{n<Q} W(m, n) cos(pi (2m+1) u / 2P) cos(pi (2n+1) v / 2Q),
       a(0) = sqrt(1/P), a(u>0) = sqrt(2/P), b likewise with Q
   (``scipy.fft.dctn(W, type=2, norm="ortho")``).
2. Model filtering: the low-frequency components are the upper-left triangle of V (Algorithm 2,
   the low-frequency filter); the kept components of all layers form the vector F_k.
3. The pairwise cosine distances of F_1..F_K are clustered by HDBSCAN; the largest cluster is
   admitted, every other model flagged.
4. Aggregation: FedAvg (n_k-weighted mean) of the admitted updates.

Choices where this interface and the paper differ, stated:

- What is transformed. Algorithm 1 transforms the local models W_k (the abstract: "model
  updates (i.e., weights)"); ``transform_on: models`` (the default) does so with
  W_k = w_t + Delta_k, ``transform_on: updates`` transforms Delta_k. The DCT is linear, so the
  models' spectra are the updates' spectra plus a common w_t spectrum. Without a w_t (tests)
  the models are the updates. Server-only buffers (``channel_mask``) are left out.
- Layers as matrices: a tensor of rank >= 2 is read as (its first dimension) x (the rest),
  e.g. a conv kernel (out, in, kh, kw) as out x (in kh kw); a bias (rank 1) as one row.
- The triangle. The paper's window keeps V(u, v) with u + v <= floor(P/2) on a square matrix;
  for rectangular layers the triangle is taken in normalised frequencies,
  u / P + v / Q <= ``low_frequency_fraction`` (0.5: the paper's half), which is the paper's
  window when P = Q and keeps the first half of a single row (a bias).
- HDBSCAN (scikit-learn's): minimum cluster size K/2 + 1, min_samples 1 (``hdbscan``-package
  convention, given to scikit-learn as 2), a single cluster allowed, as in FLAME by the same
  group; with min size above K/2 at most one cluster exists, so "largest" is "majority". A
  round where HDBSCAN labels every model noise admits all of them (the paper assumes a benign
  majority and does not say).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.fft import dctn

from defenses.base import Aggregate, Defense, DefenseConfig, Updates, excluded
from defenses.flame import check_clustering, learned_entries, local_models
from defenses.similarity import cosine_distances
from defenses.flame import majority_cluster
from flbackdoor.config import ExperimentConfig, check, one_of
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import StateDict, weighted_mean


def as_matrix(tensor: torch.Tensor) -> np.ndarray:
    """A layer's weights as a 2-D float64 matrix: (first dim) x (the rest); a vector is a row."""
    t = tensor.detach().double()
    if t.dim() == 0:
        return t.reshape(1, 1).numpy()
    if t.dim() == 1:
        return t.reshape(1, -1).numpy()
    return t.reshape(t.shape[0], -1).numpy()


def dct2(matrix: np.ndarray) -> np.ndarray:
    """The 2-D orthonormal DCT-II of a matrix."""
    return dctn(matrix, type=2, norm="ortho")


def low_frequency_mask(rows: int, cols: int, fraction: float = 0.5) -> np.ndarray:
    """The upper-left triangle u / rows + v / cols <= fraction (u + v <= rows/2 when square)."""
    u = np.arange(rows)[:, None]
    v = np.arange(cols)[None, :]
    return u * cols + v * rows <= fraction * rows * cols


def low_frequencies(state: StateDict, fraction: float = 0.5) -> torch.Tensor:
    """F_k: every layer's low-frequency DCT components, concatenated in state-dict order."""
    parts = []
    for v in state.values():
        spectrum = dct2(as_matrix(v))
        parts.append(spectrum[low_frequency_mask(*spectrum.shape, fraction)])
    return torch.from_numpy(np.concatenate(parts))


def freqfed_select(states: list[StateDict], fraction: float = 0.5, min_cluster_size: int = 0,
                   min_samples: int = 1) -> tuple[list[int], int, int]:
    """The admitted indices (the largest HDBSCAN cluster of the low-frequency vectors' cosine
    distances), the number of clusters and the length of F_k."""
    features = torch.stack([low_frequencies(s, fraction) for s in states])
    admitted, num_clusters = majority_cluster(cosine_distances(features), min_cluster_size,
                                              min_samples)
    return admitted, num_clusters, int(features.shape[1])


TRANSFORM_ON = ("models", "updates")


@dataclass
class FreqFedConfig(DefenseConfig):
    name: str = "freqfed"
    transform_on: str = "models"  # DCT of the local models W_k (Algorithm 1) or of the updates
    low_frequency_fraction: float = 0.5  # keep u / P + v / Q <= this (u + v <= P/2 if square)
    min_cluster_size: int = 0  # 0: K // 2 + 1 of the round's K models
    min_samples: int = 1  # HDBSCAN min_samples, hdbscan-package convention

    def check(self, cfg: ExperimentConfig) -> None:
        one_of("defense.transform_on", self.transform_on, TRANSFORM_ON)
        check(0 < self.low_frequency_fraction <= 2,
              f"defense.low_frequency_fraction={self.low_frequency_fraction} must be in (0, 2] "
              "(2 keeps every component)")
        check_clustering(self, cfg)


@DEFENSES.register("freqfed")
class FreqFed(Defense):
    Config = FreqFedConfig
    detects = True

    def aggregate(self, updates: Updates) -> Aggregate:
        c = self.config
        rows = local_models(updates) if c.transform_on == "models" else updates.deltas
        admitted, num_clusters, length = freqfed_select(
            [learned_entries(r) for r in rows], c.low_frequency_fraction, c.min_cluster_size,
            c.min_samples)
        delta = weighted_mean([updates.deltas[i] for i in admitted],
                              [updates.weights[i] for i in admitted])
        return Aggregate(delta, flagged=excluded(updates, admitted), stats={
            "freqfed_num_admitted": len(admitted),
            "freqfed_num_clusters": num_clusters,
            "freqfed_num_components": length,
        })
