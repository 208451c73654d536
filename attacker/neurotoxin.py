"""Neurotoxin (Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning", ICML 2022,
section 3 and Algorithm 1): the norm-bounded (PGD) attack of Sun et al., with the attacker's
update kept off the coordinates the benign clients move most, so that the benign rounds after
the attack stops overwrite the backdoor less and it lasts longer.

Algorithm 1, as implemented:

1. The benign direction: the last global update w_t - w_{t-1}, which every client can compute
   from the two global models it received (``job.global_update``; the server hands it over
   because the Config sets ``reads_global_update``).
2. S: its top-``topk_ratio`` % coordinates by magnitude, over all of the model's parameters
   together (:func:`topk_mask`; buffers are never masked: no gradient moves them).
3. Train on D_trn + D_mal from w_t; after every step, w is moved back to w_t on S
   (``attacker.replacement.restrict``: the update's projection onto the coordinates outside S)
   and then onto the L2 ball of radius M / b around w_t (``attack.project_every=step``, the
   paper's per-step PGD), so the sent update w_t + b (w - w_t) is exactly zero on S and has norm
   at most M (``norm_bound``; b the boost, as in ``norm_bounded``).

Where the paper is silent: in a round with no last global update (the experiment's first
round after a reused pretraining checkpoint or a resume), the attacker's own benign update
(``job.honest()`` from w_t) stands in for it, logged; the authors' code likewise estimates the
benign direction from a gradient on clean data. ``topk_ratio`` 0 masks nothing (the attack is
then ``norm_bounded``); its default 5 (%) is the masking the authors' published commands use
(``--gradmask_ratio 0.95``: the bottom 95 % of the coordinates are kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO
from typing import ClassVar

import torch
from flwr.common.logger import log

from attacker.base import TrainJob
from attacker.norm_bounded import NormBounded, NormBoundedConfig
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import ATTACKS
from flbackdoor.updates import StateDict, difference, flatten, unflatten


def topk_mask(update: StateDict, ratio: float) -> StateDict:
    """A 0/1 mask shaped like ``update``: 0 on its top ``ratio`` % coordinates by magnitude
    (all entries ranked together, as one flat vector), 1 on the others."""
    magnitude = flatten([update])[0].abs()
    k = round(magnitude.numel() * ratio / 100)
    keep = torch.ones_like(magnitude)
    if k:
        keep[torch.topk(magnitude, k).indices] = 0.0
    return unflatten(keep, update)


@dataclass
class NeurotoxinConfig(NormBoundedConfig):
    name: str = "neurotoxin"
    project_every: str = "step"  # Algorithm 1 projects after every step
    topk_ratio: float = 5.0  # % of the coordinates (the global update's largest) left untouched

    reads_global_update: ClassVar[bool] = True

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(0 <= self.topk_ratio <= 100,
              f"attack.topk_ratio={self.topk_ratio} must be a percentage in [0, 100]")


@ATTACKS.register("neurotoxin")
class Neurotoxin(NormBounded):
    Config = NeurotoxinConfig

    def mask(self, job: TrainJob) -> StateDict:
        update = job.global_update
        if update is None:
            log(INFO, "neurotoxin (partition %d, round %d): no last global update; the mask "
                "comes from this attacker's own benign update", job.partition_id,
                job.server_round)
            state, _ = job.honest()
            update = difference({k: v.cpu() for k, v in state.items()}, job.global_state)
            job.model.load_state_dict(job.global_state)  # training starts from w_t again
        params = [k for k, _ in job.model.named_parameters()]
        return topk_mask({k: update[k].float().cpu() for k in params}, self.config.topk_ratio)
