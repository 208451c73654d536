"""What the untargeted model-poisoning attacks share: they plant no backdoor task, they only try
to lower the global model's main accuracy, and each sends w_t + delta with a crafted delta.

- ``sign_flip`` and ``gaussian`` craft delta alone, from the attacker's own honest update or
  from noise (:class:`UntargetedAttack`).
- ``alie``, ``ipm``, ``min_max`` and ``min_sum`` are omniscient (:class:`OmniscientAttack`):
  they craft delta from the round's validated benign updates w_k - w_t, which the testbed's side
  channel hands the round's attackers once the benign replies are in (server/rounds.py). Each
  maps a (k, d) matrix of flattened benign updates to one d vector; every attacker of a round
  computes it from the same matrix, so all of them send the same update (they collude).

The crafted delta covers the model's parameters (what the papers attack: gradients, i.e.
parameter updates); buffers (the pruning mask) are sent as w_t has them. An attacker that does
not train reports the loss of w_t on its own data, and every attacker reports its own partition
size as its num-examples, as a benign node would.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING
from typing import ClassVar

import torch
from flwr.app import ArrayRecord
from flwr.common.logger import log

from attacker.base import Attack, AttackConfig, Reply, TrainJob
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.training import Normalizer, TrainResult, as_tensors, evaluate
from flbackdoor.updates import StateDict, add, difference, flatten, unflatten


@dataclass
class UntargetedConfig(AttackConfig):
    num_malicious: int = 1
    schedule: str = "random"
    backdoor: ClassVar[bool] = False  # measured by the main-accuracy drop


@dataclass
class OmniscientConfig(UntargetedConfig):
    omniscient: ClassVar[bool] = True  # reads the round's benign updates

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        # fixed_frequency samples one attacker a round; random up to num_malicious of them.
        most = 1 if self.schedule == "fixed_frequency" else self.num_malicious
        check(most < cfg.clients_per_round and self.num_malicious < cfg.num_clients,
              f"attack={self.name} crafts its update from the round's benign updates, but with "
              f"attack.num_malicious={self.num_malicious}, schedule {self.schedule} and "
              f"clients_per_round={cfg.clients_per_round} of num_clients={cfg.num_clients} a "
              "round may hold none")


def parameter_names(job: TrainJob) -> list[str]:
    """The entries the crafted delta covers: the model's parameters, in state-dict order."""
    params = {name for name, _ in job.model.named_parameters()}
    return [k for k in job.global_state if k in params]


def as_matrix(updates: list[StateDict], names: list[str]) -> torch.Tensor:
    """The updates' ``names`` entries as rows of one (k, d) float32 matrix, on the CPU."""
    return flatten([{k: u[k].detach().cpu() for k in names} for u in updates])


def honest_update(job: TrainJob) -> tuple[StateDict, TrainResult]:
    """What a benign node would send, as the update w - w_t (on the CPU, where w_t is)."""
    state, result = job.honest()
    return difference({k: v.detach().cpu() for k, v in state.items()}, job.global_state), result


def own_loss(job: TrainJob) -> float:
    """The loss of w_t on the attacker's own data: what it reports when it did not train."""
    x, y = as_tensors(*job.local, job.device)
    return evaluate(job.model, x, y, Normalizer(job.cfg.dataset, job.device))[1]


def crafted_reply(job: TrainJob, delta: torch.Tensor, names: list[str], loss: float) -> Reply:
    """w_t + delta on ``names`` (delta: a flat d vector), w_t elsewhere."""
    w_t = job.global_state
    full = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in w_t.items()}
    full.update(unflatten(delta.float().cpu(), {k: w_t[k] for k in names}))
    state = add({k: v.detach().cpu() for k, v in w_t.items()}, full)
    return Reply(ArrayRecord(state), len(job.local[1]), loss)


class UntargetedAttack(Attack):
    """Send w_t + :meth:`delta`; subclasses say how delta is made."""

    def delta(self, job: TrainJob, names: list[str]) -> tuple[torch.Tensor, float]:
        """The flat crafted update over ``names``, and the loss to report."""
        raise NotImplementedError

    def reply(self, job: TrainJob) -> Reply:
        names = parameter_names(job)
        delta, loss = self.delta(job, names)
        return crafted_reply(job, delta, names, loss)


class OmniscientAttack(UntargetedAttack):
    """Craft delta from the round's benign updates: :meth:`craft` maps their (k, d) matrix and
    the round's attacker count to one d vector."""

    def craft(self, benign: torch.Tensor, num_attackers: int) -> torch.Tensor:
        raise NotImplementedError

    def benign(self, job: TrainJob, names: list[str]) -> torch.Tensor:
        """The round's benign updates; when none came (every benign node of the round died or
        was rejected), the attacker's own honest update is the only estimate it has."""
        if job.benign_updates:
            return as_matrix(job.benign_updates, names)
        log(WARNING, "attack=%s, round %d: no benign update reached partition %d; its own "
            "honest update stands in for them", self.config.name, job.server_round,
            job.partition_id)
        return as_matrix([honest_update(job)[0]], names)

    def delta(self, job: TrainJob, names: list[str]) -> tuple[torch.Tensor, float]:
        loss = own_loss(job)  # first: the fallback's honest() trains the model away from w_t
        benign = self.benign(job, names)
        attackers = int(job.hints.get(P.ATTACK_NUM_ATTACKERS, 1))
        return self.craft(benign, attackers), loss
