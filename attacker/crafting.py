"""A malicious node's update (Sun et al. section 3), from w_t, its data D_trn and D_mal.

- ``boosted``: train w* on D_trn + D_mal from w_t, send w_t + b (w* - w_t).
- ``norm_bounded``: the same, projecting w onto the L2 ball of radius M / b around w_t after
  every epoch (or step), so the boosted update's norm is at most M.
- ``neurotoxin`` (Zhang et al. 2022): ``norm_bounded`` with w kept equal to w_t, after every
  step, on the coordinates the benign clients move most (a mask, ``neurotoxin.py``).

An epoch is one pass over D_trn + D_mal (``attack.data_mix=union``) or, as in the TFF reference,
a pass over D_trn followed by a pass over D_mal (``alternate``).
- ``data_poisoning``: train on D_trn + D_mal and send w* unboosted (the baseline).

Each is a registered :class:`BackdoorAttack` in its own module (``boosted.py``,
``norm_bounded.py``, ``data_poisoning.py``); this module holds what they share.

b is the boost each attacker applies: beta / m with beta = sum n_k / (eta n_attacker) over the
round's sampled nodes and m attackers in the round, or a fixed ``attack.boost_factor``.

We implement the paper's eq. (1) on w* trained on the union; the TFF reference instead sends a
benign update (D_trn only) plus the boosted update trained on D_mal alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attacker.base import Attack, Reply, TrainJob, state_reply
from attacker.replacement import boost, project_l2, restrict
from attacker.tasks import BackdoorTask, build_task
from flbackdoor.config import ExperimentConfig
from flbackdoor.rng import stream
from flbackdoor.roles import Roles, roles_for
from flbackdoor.data.cache import load_train
from flbackdoor.training import Normalizer, TrainResult, as_tensors, train
from flbackdoor.updates import StateDict, add, difference


def attacker_train_data(local: tuple[np.ndarray, np.ndarray], cache: Path, cfg: ExperimentConfig,
                        exclude: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """D_trn: the attacker's own data plus ``attack.aux_train_samples`` images of the true
    distribution (Sun et al.'s attacker holds such samples), drawn from every partition but
    ``exclude`` (the target writers, whose correctly labelled 7s would fight D_mal)."""
    k = cfg.attack.aux_train_samples
    if k <= 0:
        return local
    x, y = load_train(cache)
    offsets = np.load(cache / "offsets.npy")
    allowed = np.ones(len(y), bool)
    for p in exclude:
        allowed[offsets[p]:offsets[p + 1]] = False
    pool = np.flatnonzero(allowed)
    rng = stream("aux_train", cfg.seed)
    pick = np.sort(rng.choice(pool, min(k, len(pool)), replace=False))
    return (np.concatenate([np.asarray(local[0]), np.asarray(x[pick])]),
            np.concatenate([np.asarray(local[1]), np.asarray(y[pick])]))


def craft_update(model: nn.Module, global_state: StateDict, local: tuple[np.ndarray, np.ndarray],
                 poison: tuple[np.ndarray, np.ndarray], cfg: ExperimentConfig,
                 factor: float | None, device: torch.device, generator: torch.Generator,
                 radius: float | None = None, project_each_step: bool = False,
                 mask: StateDict | None = None) -> tuple[StateDict, TrainResult]:
    """Train w* on D_trn + D_mal from w_t, projecting onto the L2 ball of ``radius`` around
    w_t (if given) after every epoch or step, and after every step onto the coordinates
    ``mask`` allows (if given: w stays w_t where it is 0); send w_t + factor (w* - w_t), or
    w* itself when ``factor`` is None (no boosting)."""
    a = cfg.attack
    # The model may live on an accelerator; the constraints are computed beside it.
    global_state = {k: v.to(device) for k, v in global_state.items()}
    if mask is not None:
        mask = {k: v.to(device) for k, v in mask.items()}
    if a.data_mix == "union":
        passes = [as_tensors(np.concatenate([np.asarray(local[0]), poison[0]]),
                             np.concatenate([np.asarray(local[1]), poison[1]]), device)]
    else:
        passes = [as_tensors(*local, device), as_tensors(*poison, device)]
    normalize = Normalizer(cfg.dataset, device)
    project = None
    if radius is not None:
        def project_to_ball() -> None:
            model.load_state_dict(project_l2(model.state_dict(), global_state, radius))

        project = project_to_ball

    def after_step() -> None:
        # The mask first: the L2 projection scales the update and keeps its zeros.
        if mask is not None:
            model.load_state_dict(restrict(model.state_dict(), global_state, mask))
        if project is not None and project_each_step:
            project()

    constrained = mask is not None or (project is not None and project_each_step)
    epochs = a.epochs
    # One train() call per pass keeps the optimizer (and its momentum) across epochs when
    # nothing has to happen between them.
    calls, per_call = (1, epochs) if project is None and len(passes) == 1 else (epochs, 1)
    results = []
    for _ in range(calls):
        results += [train(model, x, y, dataclasses.replace(cfg.client, epochs=per_call),
                          normalize, generator, after_step=after_step if constrained else None)
                    for x, y in passes if len(y)]
        if project is not None:
            project()
    steps = sum(r.steps for r in results)
    result = TrainResult(sum(r.loss * r.steps for r in results) / max(steps, 1),
                         sum(len(y) for _, y in passes), steps)
    w_star = model.state_dict()
    if factor is None:
        return w_star, result
    return add(global_state, boost(difference(w_star, global_state), factor)), result


class BackdoorAttack(Attack):
    """Train on the attacker's data plus the backdoor task's D_mal, then shape the update:
    subclasses say by which factor it is boosted and within which radius it is projected."""

    def boost(self, job: TrainJob, attacker_examples: int) -> float | None:
        """The factor b the update is boosted by; None sends w* as trained."""
        return None

    def radius(self, factor: float | None) -> float | None:
        """The L2 radius around w_t that training is projected onto; None: no projection."""
        return None

    def project_each_step(self) -> bool:
        """Project after every step instead of every epoch."""
        return False

    def mask(self, job: TrainJob) -> StateDict | None:
        """The 0/1 mask of the coordinates the update may move (kept after every step); None:
        all of them."""
        return None

    def backdoor_task(self, job: TrainJob, roles: Roles) -> BackdoorTask:
        """The task whose D_mal this round's update trains on (an adaptive attack first fits
        its trigger to w_t)."""
        return build_task(self.cfg, job.cache, roles)

    def reply(self, job: TrainJob) -> Reply:
        cfg, pid = self.cfg, job.partition_id
        roles = roles_for(cfg, job.cache)
        index = roles.attacker_index(pid) if pid in roles.malicious else 0
        poison = self.backdoor_task(job, roles).poison(*job.local, index)
        n = len(job.local[1])
        d_trn = attacker_train_data(job.local, job.cache, cfg, exclude=roles.targets)
        factor = self.boost(job, n)
        state, result = craft_update(job.model, job.global_state, d_trn, poison, cfg, factor,
                                     job.device, job.generator, self.radius(factor),
                                     self.project_each_step(), self.mask(job))
        # The attacker reports its honest-looking D_trn size, the n_k its boost was computed for.
        result.num_examples = n
        return state_reply(state, result)
