"""Anti-Backdoor Learning (Li et al., NeurIPS 2021), eq. (3): the loss functions as pure tensor
functions, and the two training stages they drive.

- LGA, epochs t < T_te: E_D[sign(l - gamma) * l]. An example whose loss fell below gamma is
  ascended back up to it; backdoor examples, learned much faster than clean ones, escape the
  floor and end up with the lowest losses.
- Isolation at T_te: the lowest-loss fraction p of the examples is the isolated set D_b.
- GGA, t >= T_te: E_{D_c}[l] - E_{D_b}[l]: descent on the rest, ascent on D_b, which breaks
  the trigger -> target correlation while the clean task keeps being learned.

Each GGA step pairs a minibatch of the rest with a minibatch of the isolated set (cycled), so
both expectations are estimated at every step, as the equation weighs them.

Two readings, measured on MNIST (docs/REPRODUCTION.md):
- LGA's sign is taken on the minibatch's mean loss by default, as in the authors' code
  (``criterion`` with mean reduction, then ``sign(loss - gamma) * loss``); taken per example
  (eq. 3 literally, ``per_example=True``) every example is pinned at gamma, backdoor ones
  included, and isolation precision fell to 0.3-0.7.
- The ascent side: -CE on an isolated example the model fits with loss ~1e-5 has a vanishing
  gradient (softmax saturated), so ascent never leaves the backdoor's minimum, and once it does
  it diverges (NaN within an epoch at equal weights). ``ascent="complement"`` (default) ascends
  the same CE by descending -log(1 - p_y): the same direction per example (p_y down), a gradient
  that does not vanish at p_y -> 1, and bounded below, so it cannot diverge.
  ``ascent="ce"`` is eq. 3 literally.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flbackdoor.config import ClientConfig
from flbackdoor.training import SGD, Normalizer, TrainResult


def lga_loss(per_example_loss: torch.Tensor, gamma: float, per_example: bool = False
             ) -> torch.Tensor:
    """Local gradient ascent, sign(l - gamma) * l: on the minibatch's mean loss (the authors'
    code), or on each example's loss before the mean (eq. 3 read literally)."""
    if per_example:
        return (torch.sign(per_example_loss - gamma) * per_example_loss).mean()
    loss = per_example_loss.mean()
    return torch.sign(loss - gamma) * loss


def isolation_count(n: int, fraction: float) -> int:
    """How many of n examples a fraction isolates: at least one when there are any."""
    return min(n, max(1, int(round(fraction * n)))) if n else 0


def isolate(per_example_loss: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``fraction`` lowest-loss examples, lowest first (ties: lower index)."""
    k = isolation_count(len(per_example_loss), fraction)
    return torch.argsort(per_example_loss, stable=True)[:k]


def complement_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example -log(1 - p_y), from logits without forming 1 - p_y (exact as p_y -> 1):
    logsumexp over all classes minus logsumexp over the classes other than y."""
    others = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return torch.logsumexp(logits, 1) - torch.logsumexp(others, 1)


def gga_loss(loss_rest: torch.Tensor, loss_isolated: torch.Tensor) -> torch.Tensor:
    """Global gradient ascent: mean loss on the rest minus mean loss on the isolated set (an
    empty side contributes nothing). With ``ascent="complement"`` the training routine passes
    -complement_loss as the isolated side, so the minus sign still means "push p_y down"."""
    rest = loss_rest.mean() if len(loss_rest) else loss_rest.sum()
    isolated = loss_isolated.mean() if len(loss_isolated) else loss_isolated.sum()
    return rest - isolated


def isolation_precision(isolated: np.ndarray, poisoned: np.ndarray) -> float:
    """Share of the isolated examples that were really poisoned (0 when none isolated)."""
    if len(isolated) == 0:
        return 0.0
    return float(np.isin(isolated, poisoned).sum() / len(isolated))


@torch.no_grad()
def per_example_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Normalizer,
                       batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    out = [nn.functional.cross_entropy(model(normalize(x[i:i + batch_size])), y[i:i + batch_size],
                                       reduction="none") for i in range(0, len(y), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


def _optimizer(model: nn.Module, cfg: ClientConfig, lr: float) -> SGD:
    return SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_lga(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ClientConfig, gamma: float,
              normalize: Normalizer, epochs: int, generator: torch.Generator | None = None,
              per_example: bool = False) -> TrainResult:
    """``epochs`` epochs of minibatch SGD on the LGA loss; returns its mean."""
    model.train()
    opt = _optimizer(model, cfg, cfg.lr)
    n, total, steps = len(y), 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            losses = nn.functional.cross_entropy(model(normalize(x[idx])), y[idx], reduction="none")
            loss = lga_loss(losses, gamma, per_example)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
    return TrainResult(total / max(steps, 1), n, steps)


def train_gga(model: nn.Module, x: torch.Tensor, y: torch.Tensor, isolated: torch.Tensor,
              cfg: ClientConfig, lr: float, normalize: Normalizer, epochs: int,
              generator: torch.Generator | None = None, ascent: str = "complement"
              ) -> TrainResult:
    """``epochs`` passes over the rest (everything but ``isolated``), each step paired with the
    next minibatch of the isolated set; returns the mean GGA loss."""
    model.train()
    opt = _optimizer(model, cfg, lr)
    keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
    keep[isolated.to(y.device)] = False
    rest, iso = torch.nonzero(keep).flatten(), isolated.to(y.device)
    iso_batch = min(cfg.batch_size, len(iso))
    total, steps, cursor = 0.0, 0, 0
    iso_order = iso[torch.randperm(len(iso), generator=generator).to(y.device)]
    for _ in range(epochs):
        order = rest[torch.randperm(len(rest), generator=generator).to(y.device)]
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if iso_batch:
                if cursor + iso_batch > len(iso_order):
                    iso_order = iso[torch.randperm(len(iso), generator=generator).to(y.device)]
                    cursor = 0
                b = iso_order[cursor:cursor + iso_batch]
                cursor += iso_batch
            else:
                b = iso_order[:0]
            both = torch.cat([idx, b])
            logits = model(normalize(x[both]))
            rest_loss = nn.functional.cross_entropy(logits[:len(idx)], y[idx], reduction="none")
            if ascent == "ce":
                iso_loss = nn.functional.cross_entropy(logits[len(idx):], y[b], reduction="none")
            else:
                iso_loss = -complement_loss(logits[len(idx):], y[b])
            opt.zero_grad(set_to_none=True)
            loss = gga_loss(rest_loss, iso_loss)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
    return TrainResult(total / max(steps, 1), len(rest), steps)
