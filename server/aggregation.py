"""FedAvg with a server learning rate, as pure functions on state dicts of tensors.

w_{t+1} = w_t + eta * sum_k n_k * delta_k / sum_k n_k      (Sun et al., eq. for w_{t+1})
"""

from __future__ import annotations

from flbackdoor.updates import StateDict, add


def weighted_mean(deltas: list[StateDict], weights: list[float]) -> StateDict:
    total = float(sum(weights))
    if not deltas or total <= 0:
        raise ValueError("weighted_mean needs at least one update with positive weight")
    return {
        k: sum(w / total * d[k] for d, w in zip(deltas, weights))  # type: ignore[misc]
        for k in deltas[0]
    }


def fedavg(
    global_state: StateDict, deltas: list[StateDict], weights: list[float], server_lr: float
) -> StateDict:
    return add(global_state, weighted_mean(deltas, weights), server_lr)
