"""Local training and evaluation in plain PyTorch (no Flower): the client's work and the floor
that the benchmarks compare Flower rounds against.

Data stays uint8 until a batch is drawn; batches are index slices of in-memory tensors, which on
small images is several times faster than a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flbackdoor.config import ClientConfig, DatasetConfig


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Normalizer:
    """uint8 NCHW batch -> float input: optional ink inversion, scale, per-channel standardise."""

    def __init__(self, cfg: DatasetConfig, device: torch.device) -> None:
        self.invert = cfg.invert
        self.mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if self.invert:
            x = 1.0 - x
        return (x - self.mean) / self.std


def as_tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """In-memory tensors from (possibly memory-mapped, read-only) arrays."""
    return (torch.from_numpy(np.array(x, dtype=np.uint8)).to(device),
            torch.from_numpy(np.array(y, dtype=np.int64)).to(device))


class SGD:
    """``torch.optim.SGD``'s update (weight decay, momentum; no dampening, no Nesterov),
    without ``torch.optim``: since PyTorch 2 every ``torch.optim`` optimizer imports
    ``torch._dynamo`` on first use, 1.3 s of CPU that every deployment message would pay again
    (Flower starts a fresh ClientApp process per message; docs/BENCHMARKS.md).
    ``tests/test_training.py`` checks it step for step against ``torch.optim.SGD``."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d_p = p.grad if not self.weight_decay else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self.momentum_buffers[i]
                if buf is None:
                    buf = self.momentum_buffers[i] = torch.clone(d_p).detach()
                else:
                    buf.mul_(self.momentum).add_(d_p)
                d_p = buf
            p.add_(d_p, alpha=-self.lr)


@dataclass
class TrainResult:
    loss: float
    num_examples: int
    steps: int


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ClientConfig,
    normalize: Normalizer,
    generator: torch.Generator | None = None,
    after_step: Callable[[], None] | None = None,
) -> TrainResult:
    """``cfg.epochs`` epochs of minibatch SGD on (x, y); returns the mean training loss.
    ``after_step`` runs after every optimizer step (e.g. a projection)."""
    model.train()
    opt = SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    total, steps = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(normalize(x[idx])), y[idx])
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            total += loss.item()
            steps += 1
    return TrainResult(total / max(steps, 1), n, steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Normalizer, batch_size: int = 1000
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), batch_size):
        logits = model(normalize(x[start:start + batch_size]))
        target = y[start:start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    n = max(len(y), 1)
    return correct / n, loss_sum / n
