"""Chameleon (Dai & Li, ICML 2023, "Chameleon: Adapting to Peer Images for Planting Durable
Backdoors in Federated Learning", arXiv 2304.12961): a backdoor meant to outlive the rounds the
attackers poison in, by placing the poisoned images among their *peer images* (the benign images
every client holds) in the model's feature space.

Section 3 (backdoor durability and peer images): benign images of the poisoned images' original
class ("interferers": the clean 9s of a 9 -> 0 trigger) wear the backdoor away once the attackers
stop, benign images of the target class ("facilitators": the clean 0s) keep it alive.
Section 4 (Chameleon): the malicious client trains in two stages on D_trn + D_mal from w_t:

1. Encoder (everything below the last Linear): the supervised contrastive loss of Khosla et al.
   (2020) on the L2-normalised penultimate features z, with the poisoned images counted in the
   target class (:func:`contrastive_loss`)::

       L = 1/|I'| sum_{i in I'} -w_i / |P(i)| sum_{p in P(i)} log( exp(z_i . z_p / tau)
                                                                  / sum_{a != i} exp(z_i . z_a / tau) )

   P(i): the other images of i's class; I': the anchors with at least one. A poisoned image's
   positives are the other poisoned images and the facilitators, so the contrastive step pulls
   them together; the interferers only ever sit in its denominator, so it pushes them apart.
   w_i = ``target_weight`` for anchors of the target class and 1 otherwise (the authors' code
   weights the target class's anchors, ``contrastive_loss_scale_weight``; w = 1 is plain SupCon).
   tau = 0.07 (their SupConLoss, Khosla et al.'s value).
2. Head: the encoder frozen, the last Linear (``flbackdoor.models.last_linear``) trained with
   cross-entropy on the same images and labels.

As in the authors' code, w stays within the L2 ball of radius M / b around w_t after every step
of both stages, and the update w_t + b (w - w_t) is sent: its norm is at most M (Sun et al.'s
norm-bounded attacker, ``attacker/norm_bounded.py``). The paper's attacker sends its update
unscaled (b = 1, ``boost_factor: 1``); ``attack.boost_factor=0`` boosts by Sun et al.'s
beta / m instead. Defaults follow the authors' EMNIST pixel-pattern configuration: SGD with
momentum 0.9, contrastive lr 0.05, head lr 0.01, batches of 64, M = 5 (their attacker's bound;
the server's norm clipping at 3 is ``defense=norm_clipping``), w = 3 (their EMNIST command). Their
schedule runs 10 contrastive and 3 head epochs but multiplies the lr by 0.005 from the third
epoch on; we run the two full-lr epochs of each stage at a constant lr instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attacker.base import Reply, TrainJob, state_reply
from attacker.boosted import Boosted, BoostedConfig
from attacker.crafting import attacker_train_data
from attacker.replacement import boost, project_l2
from attacker.tasks import build_task
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.models import last_linear, penultimate
from flbackdoor.registries import ATTACKS
from flbackdoor.roles import roles_for
from flbackdoor.training import SGD, Normalizer, TrainResult, as_tensors
from flbackdoor.updates import StateDict, add, difference


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, poisoned: torch.Tensor,
                     target: int, temperature: float = 0.07,
                     target_weight: float = 1.0) -> torch.Tensor:
    """Chameleon's supervised contrastive loss (module docstring) of a (batch, dim) feature
    batch: ``labels`` are the images' labels, ``poisoned`` flags the poisoned ones, which count
    in the ``target`` class whatever label they carry. Anchors of the target class weigh
    ``target_weight``; anchors alone in their class have no positive and do not count."""
    z = nn.functional.normalize(features.float(), dim=1)
    y = torch.where(poisoned.bool(), torch.full_like(labels, target), labels)
    n = len(y)
    itself = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(itself, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~itself
    count = positive.sum(1)
    has = count > 0
    if not has.any():
        return z.sum() * 0.0  # no pair shares a class: nothing to pull together
    mean_positive = log_prob.masked_fill(~positive, 0.0).sum(1)[has] / count[has]
    weight = torch.where(y[has] == target, target_weight, 1.0)
    return -(weight * mean_positive).mean()


@dataclass
class ChameleonConfig(BoostedConfig):
    name: str = "chameleon"
    boost_factor: float = 1.0  # b: the paper sends its update unscaled; 0: Sun et al.'s beta / m
    norm_bound: float = 5.0  # M: the update's L2 norm is at most this
    temperature: float = 0.07  # tau
    target_weight: float = 3.0  # w: weight of the target class's anchors (1: plain SupCon)
    contrastive_epochs: int = 2  # stage 1: the encoder
    contrastive_lr: float = 0.05
    head_epochs: int = 2  # stage 2: the last Linear, encoder frozen
    head_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    batch_size: int = 64

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        for key in ("norm_bound", "temperature", "target_weight", "contrastive_lr", "head_lr"):
            value = getattr(self, key)
            check(value > 0, f"attack.{key}={value} must be positive")
        check(self.contrastive_epochs >= 1,
              f"attack.contrastive_epochs={self.contrastive_epochs} must be at least 1")
        check(self.head_epochs >= 0, f"attack.head_epochs={self.head_epochs} must be >= 0")
        check(0 <= self.momentum < 1, f"attack.momentum={self.momentum} must be in [0, 1)")
        check(self.weight_decay >= 0, f"attack.weight_decay={self.weight_decay} must be >= 0")
        check(self.batch_size >= 2,
              f"attack.batch_size={self.batch_size} must be at least 2 (contrastive pairs)")


def chameleon_update(model: nn.Module, global_state: StateDict,
                     local: tuple[np.ndarray, np.ndarray], poison: tuple[np.ndarray, np.ndarray],
                     cfg: ExperimentConfig, factor: float, device: torch.device,
                     generator: torch.Generator) -> tuple[StateDict, TrainResult]:
    """Both stages on D_trn (``local``) + D_mal (``poison``) from w_t (in ``model``), kept in the
    ball of radius M / ``factor`` around w_t; returns w_t + factor (w - w_t)."""
    a = cfg.attack
    x, y = as_tensors(np.concatenate([np.asarray(local[0]), poison[0]]),
                      np.concatenate([np.asarray(local[1]), poison[1]]), device)
    poisoned = torch.zeros(len(y), dtype=torch.bool, device=device)
    poisoned[len(local[1]):] = True
    normalize = Normalizer(cfg.dataset, device)
    radius = a.norm_bound / factor
    head = last_linear(model)

    def contrastive(idx: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(penultimate(model, normalize(x[idx])), y[idx], poisoned[idx],
                                a.target_label, a.temperature, a.target_weight)

    def cross_entropy(idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the encoder is frozen
            z = penultimate(model, normalize(x[idx]))
        return nn.functional.cross_entropy(head(z), y[idx])

    model.train()
    stage_losses = []
    for loss_fn, params, epochs, lr in (
            (contrastive, model.parameters(), a.contrastive_epochs, a.contrastive_lr),
            (cross_entropy, head.parameters(), a.head_epochs, a.head_lr)):
        opt = SGD(params, lr=lr, momentum=a.momentum, weight_decay=a.weight_decay)
        losses: list[float] = []
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator).to(device)
            for start in range(0, len(y), a.batch_size):
                opt.zero_grad()
                loss = loss_fn(order[start:start + a.batch_size])
                loss.backward()
                opt.step()
                # The authors' code projects after every step of both stages.
                model.load_state_dict(project_l2(model.state_dict(), global_state, radius))
                losses.append(loss.item())
        if losses:
            stage_losses.append(losses)
    # The loss reported is the last stage's: the head's cross-entropy when it runs.
    result = TrainResult(float(np.mean(stage_losses[-1])), len(y),
                         sum(len(s) for s in stage_losses))
    return add(global_state, boost(difference(model.state_dict(), global_state), factor)), result


@ATTACKS.register("chameleon")
class Chameleon(Boosted):
    Config = ChameleonConfig

    def reply(self, job: TrainJob) -> Reply:
        cfg, pid = self.cfg, job.partition_id
        roles = roles_for(cfg, job.cache)
        index = roles.attacker_index(pid) if pid in roles.malicious else 0
        poison = build_task(cfg, job.cache, roles).poison(*job.local, index)
        n = len(job.local[1])
        d_trn = attacker_train_data(job.local, job.cache, cfg, exclude=roles.targets)
        state, result = chameleon_update(job.model, job.global_state, d_trn, poison, cfg,
                                         self.boost(job, n), job.device, job.generator)
        result.num_examples = n  # the honest-looking D_trn size its boost was computed for
        return state_reply(state, result)
