"""Cosine similarity and distance of update (or model) rows, shared by the defenses that
compare directions (FLAME, FreqFed, DeepSight, Multi-metrics, FoolsGold). Float64 throughout; a
zero row has no direction: similarity 0, distance 1 to every other row."""

from __future__ import annotations

import numpy as np
import torch


def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """The rows scaled to norm 1, in float64 (zero rows stay zero)."""
    return torch.nn.functional.normalize(rows.double(), dim=1, eps=1e-300)


def cosine_similarities(rows: torch.Tensor) -> torch.Tensor:
    """cos(x_i, x_j) for every pair of rows, float64."""
    unit = unit_rows(rows)
    return unit @ unit.T


def cosine_distances(rows: torch.Tensor) -> np.ndarray:
    """1 - cos(x_i, x_j) for every pair of rows, float64. Computed as ||u_i - u_j||^2 / 2 of the
    unit rows (the same value) from their differences, so equal directions give exactly 0
    rather than 1 - (1 +- rounding), which a clustering would read as structure."""
    unit = unit_rows(rows)
    d = torch.cdist(unit, unit, compute_mode="donot_use_mm_for_euclid_dist") ** 2 / 2
    d = (d + d.T) / 2
    zero = unit.norm(dim=1) == 0
    d[zero, :] = 1.0
    d[:, zero] = 1.0
    d.fill_diagonal_(0.0)
    return d.numpy()
