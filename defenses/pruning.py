"""Federated pruning (Wu et al. 2020) as pure tensor functions: the clients' view of dormant
neurons, the server's aggregation of it, the pruning mask, extreme-weight adjustment, and the
stopping rule. Neurons are the output channels of the model's last conv layer.

Conventions: a *ranking* gives each channel its position in ascending order of activation
(0 = most dormant); an *order* lists channel indices, the first to prune first. Ties are broken
by channel index everywhere, so every client and the server derive the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn


@torch.no_grad()
def channel_activations(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(C,): per output channel of ``model.last_conv``, the sum over H x W of its output after
    the activation that follows it, averaged over the images of ``x`` (already normalized).

    The activation is read from the module right after the last conv (every model here has a
    ReLU there), so the figure is what the next layer sees, not the raw pre-activation."""
    conv = model.last_conv
    modules = list(model.features)
    after = modules[modules.index(conv) + 1] if modules.index(conv) + 1 < len(modules) else conv
    total: torch.Tensor | None = None
    seen: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        seen.append(output.sum(dim=(2, 3)).sum(dim=0))

    handle = after.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
            total = seen.pop() if total is None else total + seen.pop()
    finally:
        handle.remove()
        model.train(was_training)
    if total is None:
        return torch.zeros(conv.out_channels)
    return total / max(len(x), 1)


def ranking(activations: torch.Tensor) -> torch.Tensor:
    """Each channel's position (0..C-1) in ascending order of activation; ties by index."""
    order = torch.argsort(activations, stable=True)
    positions = torch.empty_like(order)
    positions[order] = torch.arange(len(order))
    return positions


def aggregate_rankings(rankings: Sequence[torch.Tensor]) -> list[int]:
    """Ranking vote: channels in ascending order of mean rank position (most dormant first)."""
    mean = torch.stack([r.double() for r in rankings]).mean(dim=0)
    return torch.argsort(mean, stable=True).tolist()


def keep_votes(activations: torch.Tensor, rate: float) -> torch.Tensor:
    """Majority vote: 0 for the floor(rate * C) least activated channels (ties by index), else 1."""
    n_prune = int(rate * len(activations))
    votes = torch.ones(len(activations), dtype=torch.int64)
    votes[torch.argsort(activations, stable=True)[:n_prune]] = 0
    return votes


def aggregate_votes(votes: Sequence[torch.Tensor]) -> list[int]:
    """Channels in ascending order of keep votes (fewest first); ties by index."""
    return torch.argsort(torch.stack(list(votes)).sum(dim=0), stable=True).tolist()


def prune_mask(order: Sequence[int], num_pruned: int, num_channels: int) -> torch.Tensor:
    """0/1 float mask over the channels: the first ``num_pruned`` of ``order`` are 0."""
    mask = torch.ones(num_channels)
    mask[list(order[:num_pruned])] = 0.0
    return mask


def extreme_weight_mask(weight: torch.Tensor, delta: float,
                        channels: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the weights to zero: those outside mu +- delta * sigma of the layer.

    ``channels`` (a 0/1 mask over output channels) restricts the statistics and the zeroing to
    the kept channels: pruned neurons are no longer part of the layer."""
    keep = torch.ones(weight.shape[0], dtype=torch.bool) if channels is None else channels > 0
    live = weight[keep]
    mu, sigma = live.mean(), live.std(unbiased=False)
    outside = (weight - mu).abs() > delta * sigma
    outside[~keep] = False
    return outside


def stop_index(accuracies: Sequence[float], max_drop: float) -> int:
    """Index of the last test point before accuracy drops by more than ``max_drop`` between two
    consecutive points (Wu et al.: 1 point); the last index when it never does."""
    for i in range(1, len(accuracies)):
        if accuracies[i - 1] - accuracies[i] > max_drop:
            return i - 1
    return len(accuracies) - 1


def pruning_levels(num_channels: int, step: int) -> list[int]:
    """Numbers of pruned channels the stopping rule tests: 0, step, 2 step, ..., at most C - 1
    (a layer keeps at least one channel)."""
    return list(range(0, num_channels, step))


@torch.no_grad()
def set_channel_mask(model: nn.Module, mask: torch.Tensor) -> None:
    """Prune ``model`` (a ConvNet): its ``channel_mask`` buffer becomes ``mask``."""
    model.channel_mask.copy_(mask.to(model.channel_mask))


@torch.no_grad()
def adjust_extreme_weights(model: nn.Module, delta: float) -> int:
    """Zero ``model.last_conv``'s weights outside mu +- delta * sigma of its kept channels, in
    place; returns how many were zeroed."""
    weight = model.last_conv.weight
    outside = extreme_weight_mask(weight, delta, model.channel_mask.to(weight.device))
    weight[outside] = 0.0
    return int(outside.sum())


def candidate_changes(spec: Mapping, base_mask: torch.Tensor) -> list[Callable[[nn.Module], object]]:
    """The candidates a stopping rule tests, as in-place changes of the global model: for
    ``kind`` "prune" the first n of ``order`` pruned for each n of ``levels``; for "adjust" the
    unchanged model, then extreme weights zeroed at each of ``deltas``. The server (on its
    validation set) and the clients (``query.prune_evaluate``) test the same list."""
    if str(spec["kind"]) == "prune":
        order = [int(c) for c in spec["order"]]
        masks = [prune_mask(order, int(n), len(base_mask)) * base_mask.cpu()
                 for n in spec["levels"]]
        return [lambda m, mask=mask: set_channel_mask(m, mask) for mask in masks]
    return [lambda m: None] + [lambda m, d=float(d): adjust_extreme_weights(m, d)
                               for d in spec["deltas"]]
