"""A malicious node's update (Sun et al. section 3), from w_t, its data D_trn and D_mal.

- ``boosted``: train w* on D_trn + D_mal from w_t, send w_t + b (w* - w_t).
- ``norm_bounded``: the same, projecting w onto the L2 ball of radius M / b around w_t after
  every epoch (or step), so the boosted update's norm is at most M.

An epoch is one pass over D_trn + D_mal (``attack.data_mix=union``) or, as in the TFF reference,
a pass over D_trn followed by a pass over D_mal (``alternate``).
- ``data_poisoning``: train on D_trn + D_mal and send w* unboosted (the baseline).

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

from attacker.replacement import boost, boost_factor, project_l2
from flbackdoor.config import ExperimentConfig
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
    rng = np.random.default_rng([cfg.seed, 104729])
    pick = np.sort(rng.choice(pool, min(k, len(pool)), replace=False))
    return (np.concatenate([np.asarray(local[0]), np.asarray(x[pick])]),
            np.concatenate([np.asarray(local[1]), np.asarray(y[pick])]))


def attack_boost(cfg: ExperimentConfig, hints: dict, attacker_examples: int) -> float:
    """The factor b this attacker boosts by (1 for plain data poisoning)."""
    a = cfg.attack
    if a.name == "data_poisoning":
        return 1.0
    if a.boost_factor > 0:
        return a.boost_factor
    return boost_factor(float(hints["attack-round-examples"]), cfg.server.lr,
                        float(attacker_examples), int(hints.get("attack-num-attackers", 1)))


def craft_update(model: nn.Module, global_state: StateDict, local: tuple[np.ndarray, np.ndarray],
                 poison: tuple[np.ndarray, np.ndarray], cfg: ExperimentConfig, factor: float,
                 device: torch.device, generator: torch.Generator) -> tuple[StateDict, TrainResult]:
    a = cfg.attack
    if a.data_mix == "union":
        passes = [as_tensors(np.concatenate([np.asarray(local[0]), poison[0]]),
                             np.concatenate([np.asarray(local[1]), poison[1]]), device)]
    else:
        passes = [as_tensors(*local, device), as_tensors(*poison, device)]
    normalize = Normalizer(cfg.dataset, device)
    project = None
    if a.name == "norm_bounded":
        radius = a.norm_bound / factor

        def project() -> None:
            model.load_state_dict(project_l2(model.state_dict(), global_state, radius))

    after_step = project if a.project_every == "step" else None
    epochs = a.epochs or cfg.client.epochs
    # One train() call per pass keeps the optimizer (and its momentum) across epochs when
    # nothing has to happen between them.
    calls, per_call = (1, epochs) if project is None and len(passes) == 1 else (epochs, 1)
    results = []
    for _ in range(calls):
        results += [train(model, x, y, dataclasses.replace(cfg.client, epochs=per_call),
                          normalize, generator, after_step=after_step)
                    for x, y in passes if len(y)]
        if project is not None:
            project()
    steps = sum(r.steps for r in results)
    result = TrainResult(sum(r.loss * r.steps for r in results) / max(steps, 1),
                         sum(len(y) for _, y in passes), steps)
    w_star = model.state_dict()
    if a.name == "data_poisoning":
        return w_star, result
    return add(global_state, boost(difference(w_star, global_state), factor)), result
