"""Model updates as state dicts of tensors: the arithmetic shared by clients, attackers,
defenses and the server (differences, scaling, the global L2 norm, clipping to a norm)."""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]


def difference(new: StateDict, base: StateDict) -> StateDict:
    """new - base, in float32 for every entry of ``base``."""
    return {k: new[k].float() - base[k].float() for k in base}


def add(base: StateDict, update: StateDict, scale: float = 1.0) -> StateDict:
    """base + scale * update, cast back to each entry's dtype (integer buffers stay integers)."""
    return {k: (v.float() + scale * update[k]).to(v.dtype) for k, v in base.items()}


def scale(update: StateDict, factor: float) -> StateDict:
    return {k: v * factor for k, v in update.items()}


def global_norm(update: StateDict) -> float:
    """The L2 norm of all entries together, as if flattened into one vector."""
    return float(torch.sqrt(sum((v.float() ** 2).sum() for v in update.values())))


def clip_to_norm(update: StateDict, max_norm: float) -> tuple[StateDict, bool]:
    """update / max(1, ||update|| / max_norm), and whether it was scaled down."""
    norm = global_norm(update)
    if norm <= max_norm:
        return update, False
    return scale(update, max_norm / norm), True


def weighted_mean(deltas: list[StateDict], weights: list[float]) -> StateDict:
    """FedAvg's mean sum_k n_k delta_k / sum_k n_k (Sun et al., the equation for w_{t+1})."""
    total = float(sum(weights))
    if not deltas or total <= 0:
        raise ValueError("weighted_mean needs at least one update with positive weight")
    return {
        k: sum(w / total * d[k] for d, w in zip(deltas, weights))  # type: ignore[misc]
        for k in deltas[0]
    }


def flatten(updates: list[StateDict]) -> torch.Tensor:
    """The updates as rows of one (n, d) float matrix, entries in state-dict order."""
    return torch.stack([torch.cat([v.float().reshape(-1) for v in u.values()]) for u in updates])


def unflatten(vector: torch.Tensor, like: StateDict) -> StateDict:
    """A flat vector back into ``like``'s names and shapes (float32)."""
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vector[i:i + v.numel()].reshape(v.shape).float()
        i += v.numel()
    return out
