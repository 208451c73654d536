"""Norm clipping (Sun et al. section 4): each update scaled by 1 / max(1, ||Delta_k|| / M)
before the n_k-weighted FedAvg mean."""

from __future__ import annotations

from flbackdoor.updates import StateDict, clip_to_norm
from server.aggregation import weighted_mean


def clip_all(deltas: list[StateDict], max_norm: float) -> tuple[list[StateDict], int]:
    """Every update clipped to ``max_norm``; also how many had to be scaled down."""
    clipped = [clip_to_norm(d, max_norm) for d in deltas]
    return [d for d, _ in clipped], sum(was for _, was in clipped)


def clipped_mean(deltas: list[StateDict], weights: list[float], max_norm: float) -> StateDict:
    return weighted_mean(clip_all(deltas, max_norm)[0], weights)
