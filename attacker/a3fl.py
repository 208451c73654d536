"""A3FL (Zhang, Jia, Chen, Lin, Wu, NeurIPS 2023, "A3FL: Adversarially Adaptive Backdoor Attacks
to Federated Learning", its method section and Algorithm 1): before poisoning, every attacker
fits its trigger to the global model w_t *and* to a copy of it that has unlearned the trigger,
so that the backdoor survives what the other clients' training will do to it.

Each round, on the attacker's node, from the trigger delta it used last (A3FL's starting patch in
its first attack round), for N = ``trigger_epochs`` passes over its victim-label images:

- every K = ``adv_interval`` passes, the adversarial model theta' is w_t trained for
  ``adv_epochs`` epochs (lr ``adv_lr``) on the attacker's data stamped with delta and labelled
  with the *true* labels: the worst case of a global model unlearning the backdoor
  (theta' = argmin_theta E L(x + delta, y; theta)), and lambda = lambda_0 * sim(theta', w_t);
- each batch: delta <- Pi(delta - alpha * sign(grad_delta [L(x + delta, y~; w_t)
  + lambda L(x + delta, y~; theta')])), y~ the target label, alpha = ``trigger_lr``.

Pi keeps delta within its budget: the ``trigger_size`` x ``trigger_size`` patch (the paper's
trigger area; zero outside it), pixel values in [0, 1], and at most ``trigger_eps`` (L_inf) from
the starting value ``trigger_init`` (1: only the pixel range bounds it, the paper's budget). The
update is then trained on D_trn + D_mal with D_mal the victim-label images stamped with delta,
relabelled, and sent unboosted (the authors' attackers train on poisoned data and send the model
as trained).

The trigger is the ``a3fl`` backdoor task's, adaptive: the attacker keeps it in its node state
between rounds and, asked after the round (``query.trigger_report``), reports it to the server,
which measures the backdoor with the trigger the attackers trained with. The testbed plays the
measurement side here: no defense sees the report (server/trigger_report.py).

Readings where the paper leaves a choice:
- the victim-label images (``attack.source_label``) carry the trigger, as in every trigger task
  of this testbed; the authors' code stamps every class (all-to-one);
- sim(theta', w_t) is the cosine similarity of the two models' flattened parameters, clamped at
  0; the authors' code takes the cosine of the conv layers' gradients instead;
- every attacker optimises its own trigger on its own data (the authors' code shares one
  trigger, found by the first attacker sampled); the server measures the lowest live attacker's;
- defaults are the authors' released values (alpha = lambda_0 = ``adv_lr`` = 0.01, 5x5 patch
  starting at 0.5) except N, K and the adversarial epochs, scaled down for CPU (they use 200
  passes, a new theta' every pass, 5 epochs each).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from attacker.base import TrainJob
from attacker.data_poisoning import DataPoisoning, DataPoisoningConfig
from attacker.tasks import TriggerTask, build_task
from attacker.triggers import patch_mask, stamp
from flbackdoor import protocol as P
from flbackdoor.config import ClientConfig, ExperimentConfig, check
from flbackdoor.registries import ATTACKS, TASKS
from flbackdoor.roles import Roles
from flbackdoor.training import Normalizer, as_tensors, train

# Slack for float32 round trips in the budget checks.
TOLERANCE = 1e-5


@dataclass
class A3FLConfig(DataPoisoningConfig):
    name: str = "a3fl"
    num_malicious: int = 1
    schedule: str = "random"
    task: str = "a3fl"  # the adaptive patch trigger below
    trigger_size: int = 5  # the patch side, pixels (the paper's 5x5)
    trigger_init: float = 0.5  # the patch's starting value in [0, 1] (the authors' gray)
    trigger_eps: float = 1.0  # L_inf budget around trigger_init (1: the pixel range alone)
    trigger_epochs: int = 20  # N: passes over the victim images per round (authors: 200)
    trigger_lr: float = 0.01  # alpha: the sign step, in [0, 1] pixel units
    adv_interval: int = 5  # K: passes between two adversarial models
    adv_epochs: int = 1  # unlearning epochs that make theta' (0: none; authors: 5)
    adv_lr: float = 0.01  # the adversarial model's learning rate
    lambda0: float = 0.01  # lambda_0: weight of the adversarial model's loss
    adaptive_trigger: ClassVar[bool] = True
    own_task: ClassVar[str] = "a3fl"

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        size = cfg.dataset.image_size
        check(1 <= self.trigger_size <= size - 2,
              f"attack.trigger_size={self.trigger_size} must be 1..{size - 2} (the patch sits 2 "
              "pixels from the corner)")
        check(0 <= self.trigger_init <= 1,
              f"attack.trigger_init={self.trigger_init} must be in [0, 1]")
        check(0 < self.trigger_eps <= 1, f"attack.trigger_eps={self.trigger_eps} must be in (0, 1]")
        check(self.trigger_epochs >= 1,
              f"attack.trigger_epochs={self.trigger_epochs} must be at least 1")
        check(self.trigger_lr > 0, f"attack.trigger_lr={self.trigger_lr} must be positive")
        check(self.adv_interval >= 1, f"attack.adv_interval={self.adv_interval} must be at least 1")
        check(self.adv_epochs >= 0, f"attack.adv_epochs={self.adv_epochs} must be >= 0")
        check(self.adv_lr > 0, f"attack.adv_lr={self.adv_lr} must be positive")
        check(self.lambda0 >= 0, f"attack.lambda0={self.lambda0} must be >= 0")


def project_trigger(pattern: torch.Tensor, mask: torch.Tensor, init: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """Pi: the closest trigger within the budget: zero off ``mask``, in [0, 1], and within
    ``eps`` (L_inf) of ``init``."""
    low, high = (init - eps).clamp(min=0.0), (init + eps).clamp(max=1.0)
    return torch.minimum(torch.maximum(pattern, low), high) * mask


def budget_violation(pattern: np.ndarray, mask: np.ndarray, init: np.ndarray,
                     eps: float) -> str | None:
    """Why ``pattern`` (C, H, W) is outside the budget Pi keeps it in, or None."""
    off = np.broadcast_to(mask == 0, pattern.shape)
    if np.any(pattern[off] != 0):
        return "nonzero values outside the trigger's mask"
    if pattern.min() < 0 or pattern.max() > 1:
        return f"values outside [0, 1] (min {pattern.min():.3g}, max {pattern.max():.3g})"
    gap = float(np.abs(pattern - init)[~off].max(initial=0.0))
    if gap > eps + TOLERANCE:
        return f"L_inf distance {gap:.3g} from the starting trigger exceeds trigger_eps={eps:g}"
    return None


def stamp_float(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 - mask) x + mask delta on raw images in [0, 1], differentiable in ``pattern``."""
    return (1.0 - mask) * x + mask * pattern


def parameter_similarity(a: nn.Module, b: nn.Module) -> float:
    """sim(theta', w_t): the cosine similarity of the flattened parameters, at least 0."""
    va = torch.cat([p.detach().flatten() for p in a.parameters()])
    vb = torch.cat([p.detach().flatten() for p in b.parameters()])
    return max(0.0, float(nn.functional.cosine_similarity(va, vb, dim=0)))


def adversarial_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: np.ndarray,
                      pattern: np.ndarray, client: ClientConfig, epochs: int, lr: float,
                      normalize: Normalizer, generator: torch.Generator) -> nn.Module:
    """theta': a copy of ``model`` trained on ``x`` (uint8) stamped with the trigger and
    labelled ``y``, their true labels: a global model that unlearns the backdoor."""
    adv = copy.deepcopy(model)
    stamped = torch.from_numpy(stamp(x.cpu().numpy(), mask, pattern * 255.0)).to(x.device)
    train(adv, stamped, y, dataclasses.replace(client, epochs=epochs, lr=lr), normalize, generator)
    adv.eval()
    return adv


def optimise_trigger(model: nn.Module, victims: torch.Tensor,
                     data: tuple[torch.Tensor, torch.Tensor], target: int, mask: np.ndarray,
                     start: np.ndarray, init: np.ndarray, a: A3FLConfig, client: ClientConfig,
                     normalize: Normalizer, generator: torch.Generator) -> np.ndarray:
    """Algorithm 1's trigger loop: delta from ``start`` after N passes over ``victims`` (uint8),
    against ``model`` (w_t, left as it is) and the adversarial models built from ``data``."""
    device = victims.device
    m = torch.from_numpy(mask).to(device)
    origin = torch.from_numpy(init).to(device)
    delta = project_trigger(torch.from_numpy(start).to(device), m, origin, a.trigger_eps)
    x01 = victims.float() / 255.0
    labels = torch.full((len(victims),), target, dtype=torch.long, device=device)
    loss_fn = nn.CrossEntropyLoss()
    model.eval()
    adv, lam = None, 0.0
    for i in range(a.trigger_epochs):
        if a.adv_epochs > 0 and a.lambda0 > 0 and i % a.adv_interval == 0:
            adv = adversarial_model(model, *data, mask, delta.cpu().numpy(), client, a.adv_epochs,
                                    a.adv_lr, normalize, generator)
            lam = a.lambda0 * parameter_similarity(adv, model)
        order = torch.randperm(len(victims), generator=generator).to(device)
        for s in range(0, len(victims), client.batch_size):
            idx = order[s:s + client.batch_size]
            delta.requires_grad_(True)
            inputs = normalize(255.0 * stamp_float(x01[idx], m, delta))
            loss = loss_fn(model(inputs), labels[idx])
            if adv is not None:
                loss = loss + lam * loss_fn(adv(inputs), labels[idx])
            grad, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = project_trigger(delta - a.trigger_lr * grad.sign(), m, origin,
                                        a.trigger_eps)
    return delta.detach().cpu().numpy().astype(np.float32)


@TASKS.register("a3fl")
class A3FLTask(TriggerTask):
    """A3FL's trigger: a patch whose values the attackers optimise every round (``adaptive``).
    The patch and its budget are the ``a3fl`` attack's fields."""

    adaptive = True

    def __init__(self, cfg: ExperimentConfig, cache: Path, roles: Roles) -> None:
        super().__init__(cfg, cache, roles)
        a, d = cfg.attack, cfg.dataset
        self.mask = patch_mask(a.trigger_size, d.image_size)
        self.initial = np.broadcast_to(self.mask * np.float32(a.trigger_init),
                                       (d.channels, d.image_size, d.image_size)).copy()
        self.eps = a.trigger_eps
        self.pattern = self.initial.copy()

    def trigger(self, part: int | None) -> tuple[np.ndarray, np.ndarray]:
        return self.mask, self.pattern * 255.0

    def report_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"pattern": (self.initial.shape, "float32")}

    def report(self) -> dict[str, np.ndarray]:
        return {"pattern": self.pattern}

    def check_report(self, arrays: dict[str, np.ndarray]) -> str | None:
        return budget_violation(arrays["pattern"], self.mask, self.initial, self.eps)

    def adopt(self, arrays: dict[str, np.ndarray]) -> None:
        self.pattern = np.array(arrays["pattern"], dtype=np.float32)


@ATTACKS.register("a3fl")
class A3FL(DataPoisoning):
    Config = A3FLConfig

    def backdoor_task(self, job: TrainJob, roles: Roles) -> A3FLTask:
        """The task with the trigger fitted to this round's w_t, kept in the node's state."""
        task = build_task(self.cfg, job.cache, roles)
        saved = None if job.state is None else job.state.array_records.get(P.TRIGGER)
        if saved is not None:  # the trigger this node used last: Algorithm 1 goes on from it
            last = {k: v.numpy() for k, v in saved.items()}
            if task.check_report(last) is None:
                task.adopt(last)
        victims = torch.from_numpy(np.array(task.victims(*job.local), np.uint8)).to(job.device)
        pattern = optimise_trigger(job.model, victims, as_tensors(*job.local, job.device),
                                   self.config.target_label, task.mask, task.pattern, task.initial,
                                   self.config, self.cfg.client,
                                   Normalizer(self.cfg.dataset, job.device), job.generator)
        task.adopt({"pattern": pattern})
        if job.state is not None:
            job.state[P.TRIGGER] = ArrayRecord({k: Array(v) for k, v in task.report().items()})
        return task
