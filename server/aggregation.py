"""FedAvg with a server learning rate, as pure functions on state dicts of tensors.

w_{t+1} = w_t + eta * sum_k n_k * delta_k / sum_k n_k      (Sun et al., eq. for w_{t+1})
"""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]


def deltas_from(global_state: StateDict, client_state: StateDict) -> StateDict:
    """delta_k = w_k - w_t, computed in float32 for every floating-point entry."""
    return {k: client_state[k].float() - global_state[k].float() for k in global_state}


def weighted_mean(deltas: list[StateDict], weights: list[float]) -> StateDict:
    total = float(sum(weights))
    if not deltas or total <= 0:
        raise ValueError("weighted_mean needs at least one update with positive weight")
    return {
        k: sum(w / total * d[k] for d, w in zip(deltas, weights))  # type: ignore[misc]
        for k in deltas[0]
    }


def apply_update(global_state: StateDict, update: StateDict, server_lr: float) -> StateDict:
    """w_t + eta * update, cast back to each entry's dtype (integer buffers stay integers)."""
    return {
        k: (v.float() + server_lr * update[k]).to(v.dtype) for k, v in global_state.items()
    }


def fedavg(
    global_state: StateDict, deltas: list[StateDict], weights: list[float], server_lr: float
) -> StateDict:
    return apply_update(global_state, weighted_mean(deltas, weights), server_lr)
