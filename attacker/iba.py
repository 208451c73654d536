"""IBA (Nguyen, Nguyen, Tran, Doan, Wong, NeurIPS 2023, "IBA: Towards Irreversible Backdoor
Attacks in Federated Learning", section 3: the trigger generation function and the attacker's
two-stage local training): the trigger is not a patch but a small network T_xi that makes a
sample-specific, imperceptible perturbation of every victim image, bounded in L_inf by
epsilon: T_xi(x) = clip(x + eps tanh(G_xi(x)), 0, 1).

Each round, on the attacker's node, from the generator it used last (a seeded initialisation
in its first attack round):

1. the generator is trained against the current global model w_t (left as it is), for
   ``gen_epochs`` passes over the attacker's victim-label images with Adam (lr ``gen_lr``):
   min_xi E L(f_{w_t}(T_xi(x)), y~), y~ the target label (the trigger learns the features
   w_t already maps to the target, so the backdoor needs little change of the model);
2. the local model is trained on D_trn + D_mal, D_mal the victim images with T_xi's
   triggers, labelled with the target;
3. the update is the PGD (norm-bounded) one of Sun et al., as the paper's attacker sends it:
   w projected after every ``project_every`` onto the L2 ball of radius M / b around w_t and
   sent as w_t + b (w - w_t) (``attacker/norm_bounded.py``).

The generator is the ``iba`` backdoor task's, adaptive: the attacker keeps its weights in its
node state between rounds and, asked after the round (``query.trigger_report``), reports them
to the server, which rebuilds its backdoor test set (every held-out victim image through the
generator, labelled with the target) and measures the backdoor with the generator the
attackers trained (``server/trigger_report.py``). No defense sees the report.

Readings where the paper leaves a choice:
- the generator is a tiny conv encoder-decoder (two stride-2 convolutions, two transposed
  ones; no batch norm, so the report is weights only) for any image side divisible by 4 and
  any channel count, its last layer initialised to zero (the first trigger is none); the
  authors use an autoencoder for MNIST and a U-Net for CIFAR-10;
- one eps for training and measuring (the authors' scripts train with ``atk_eps`` 0.3 on
  MNIST and may test with a smaller one); images go back to uint8, so the perturbation is
  within eps + 0.5/255 after rounding;
- the victim-label images (``attack.source_label``) carry the trigger, as in every trigger task
  of this testbed; the authors' code poisons every class (all-to-one);
- D_trn + D_mal is one union (``attack.data_mix``), not the authors' alpha-weighted sum of the
  clean and the poisoned loss;
- the variant that restricts the update to low-importance parameters is not the main method
  and is not implemented (``attack=neurotoxin`` is that restriction on its own);
- defaults: eps 0.3 (``atk_eps``), M = 2 (the PGD radius ``eps`` of the MNIST scripts),
  b = 1 (their ``scale`` 1, no model replacement), projection every step (``project_frequency``
  1), Adam lr 0.01 and 5 generator passes, CPU-scaled (a few hundred victim images per node).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from attacker.base import TrainJob
from attacker.norm_bounded import NormBounded, NormBoundedConfig
from attacker.tasks import Arrays, TriggerTask, build_task
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.data.cache import load_test
from flbackdoor.registries import ATTACKS, TASKS
from flbackdoor.roles import Roles
from flbackdoor.training import Normalizer

# A reported weight beyond this is no trained tiny generator's: a hostile report. (tanh saturates
# long before; the bound only keeps absurd values out of the measurement.)
WEIGHT_BOUND = 1e3
# Images per forward pass when the server or the attacker runs the generator.
BATCH = 256


@dataclass
class IBAConfig(NormBoundedConfig):
    name: str = "iba"
    num_malicious: int = 1
    schedule: str = "random"
    task: str = "iba"  # the adaptive trigger generator below
    boost_factor: float = 1.0  # b: the authors' scale 1 (no model replacement); 0: Sun's beta / m
    norm_bound: float = 2.0  # M: the PGD radius of the authors' MNIST runs
    project_every: str = "step"  # the authors project every step (project_frequency 1)
    trigger_eps: float = 0.3  # eps: L_inf budget of the perturbation (authors' MNIST atk_eps)
    gen_epochs: int = 5  # passes of the generator over the victim images per round
    gen_lr: float = 0.01  # the generator's Adam learning rate
    gen_width: int = 16  # channels of the generator's first conv (the second has twice as many)
    adaptive_trigger: ClassVar[bool] = True
    own_task: ClassVar[str] = "iba"

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(0 < self.trigger_eps <= 1, f"attack.trigger_eps={self.trigger_eps} must be in (0, 1]")
        check(self.gen_epochs >= 1, f"attack.gen_epochs={self.gen_epochs} must be at least 1")
        check(self.gen_lr > 0, f"attack.gen_lr={self.gen_lr} must be positive")
        check(self.gen_width >= 1, f"attack.gen_width={self.gen_width} must be at least 1")
        size = cfg.dataset.image_size
        check(size % 4 == 0, f"attack=iba's generator halves the image twice: image_size={size} "
                             "must be divisible by 4")


class TriggerGenerator(nn.Module):
    """G_xi: a conv encoder-decoder from (N, C, H, W) images in [0, 1] to unbounded maps of the
    same shape (H, W divisible by 4)."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def new_generator(channels: int, width: int, seed: int) -> TriggerGenerator:
    """The generator every attacker starts from and the server measures with before any report:
    the same seeded initialisation on every process, its last layer zero, so the first trigger
    is no perturbation at all. (A random last layer starts from a random perturbation, which
    against a confident w_t can sit in a basin that darkens the image until the clip stops
    every gradient.)"""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = TriggerGenerator(channels, width)
    last = generator.net[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return generator


def apply_trigger(generator: nn.Module, x01: torch.Tensor, eps: float) -> torch.Tensor:
    """T_xi(x) = clip(x + eps tanh(G_xi(x)), 0, 1) on images in [0, 1]: within eps of x in
    L_inf, differentiable in the generator's weights."""
    return (x01 + eps * torch.tanh(generator(x01))).clamp(0.0, 1.0)


def triggered(generator: nn.Module, images: np.ndarray, eps: float) -> np.ndarray:
    """uint8 (N, C, H, W) images with their triggers, computed on the CPU in batches."""
    out = np.empty_like(np.asarray(images, np.uint8))
    generator.eval()
    with torch.no_grad():
        for s in range(0, len(out), BATCH):
            x01 = torch.from_numpy(np.array(images[s:s + BATCH], np.float32)) / 255.0
            out[s:s + BATCH] = (apply_trigger(generator, x01, eps) * 255.0).round().to(
                torch.uint8).numpy()
    return out


def train_generator(generator: nn.Module, model: nn.Module, victims: torch.Tensor, target: int,
                    eps: float, epochs: int, lr: float, batch_size: int, normalize: Normalizer,
                    rng: torch.Generator) -> float:
    """Stage 1: min_xi E L(f_{w_t}(T_xi(x)), target) over ``victims`` (uint8), ``model`` (w_t)
    left as it is. Returns the last pass's mean loss."""
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    generator.train()
    x01 = victims.float() / 255.0
    labels = torch.full((len(victims),), target, dtype=torch.long, device=victims.device)
    losses: list[float] = []
    try:
        for _ in range(epochs):
            losses = []
            order = torch.randperm(len(victims), generator=rng).to(victims.device)
            for s in range(0, len(victims), batch_size):
                idx = order[s:s + batch_size]
                inputs = normalize(255.0 * apply_trigger(generator, x01[idx], eps))
                loss = loss_fn(model(inputs), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    generator.eval()
    return float(np.mean(losses)) if losses else 0.0


def weights_violation(arrays: dict[str, np.ndarray]) -> str | None:
    """Why reported generator weights are not a sane generator's, or None."""
    for name, values in arrays.items():
        if not np.isfinite(values).all():
            return f"{name}: non-finite values"
        peak = float(np.abs(values).max(initial=0.0))
        if peak > WEIGHT_BOUND:
            return f"{name}: |weight| {peak:.3g} exceeds {WEIGHT_BOUND:g}"
    return None


@TASKS.register("iba")
class IBATask(TriggerTask):
    """IBA's trigger: a generator whose weights the attackers train every round (``adaptive``).
    Its eps and width are the ``iba`` attack's fields."""

    adaptive = True

    def __init__(self, cfg: ExperimentConfig, cache: Path, roles: Roles) -> None:
        super().__init__(cfg, cache, roles)
        a = cfg.attack
        self.eps = a.trigger_eps
        self.generator = new_generator(cfg.dataset.channels, a.gen_width, cfg.seed)

    def poison(self, x: np.ndarray, y: np.ndarray, attacker_index: int) -> Arrays:
        victims = self.victims(x, y)
        return (triggered(self.generator, victims, self.eps),
                np.full(len(victims), self.cfg.attack.target_label, np.int64))

    def test_set(self) -> Arrays:
        a = self.cfg.attack
        x, y = load_test(self.cache)
        victims = np.asarray(x[np.asarray(y) == a.source_label])
        return (triggered(self.generator, victims, self.eps),
                np.full(len(victims), a.target_label, np.int64))

    def report_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (tuple(v.shape), "float32") for k, v in self.generator.state_dict().items()}

    def report(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().astype(np.float32)
                for k, v in self.generator.state_dict().items()}

    def check_report(self, arrays: dict[str, np.ndarray]) -> str | None:
        spec = self.report_spec()
        if sorted(arrays) != sorted(spec):
            return f"arrays {sorted(arrays)} are not exactly {sorted(spec)}"
        for name, (shape, _) in spec.items():
            if tuple(arrays[name].shape) != shape:
                return f"{name}: shape {tuple(arrays[name].shape)} is not {shape}"
        return weights_violation(arrays)

    def adopt(self, arrays: dict[str, np.ndarray]) -> None:
        self.generator.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                                        for k, v in arrays.items()})
        self.generator.eval()


@ATTACKS.register("iba")
class IBA(NormBounded):
    Config = IBAConfig

    def backdoor_task(self, job: TrainJob, roles: Roles) -> IBATask:
        """The task with the generator trained against this round's w_t, kept in the node's
        state."""
        task = build_task(self.cfg, job.cache, roles)
        saved = None if job.state is None else job.state.array_records.get(P.TRIGGER)
        if saved is not None:  # the generator this node trained last: stage 1 goes on from it
            last = {k: v.numpy() for k, v in saved.items()}
            if task.check_report(last) is None:
                task.adopt(last)
        a = self.config
        victims = torch.from_numpy(np.array(task.victims(*job.local), np.uint8)).to(job.device)
        task.generator.to(job.device)
        train_generator(task.generator, job.model, victims, a.target_label, a.trigger_eps,
                        a.gen_epochs, a.gen_lr, self.cfg.client.batch_size,
                        Normalizer(self.cfg.dataset, job.device), job.generator)
        task.generator.cpu()
        if job.state is not None:
            job.state[P.TRIGGER] = ArrayRecord({k: Array(v) for k, v in task.report().items()})
        return task
