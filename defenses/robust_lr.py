"""Robust learning rate (Ozdayi, Kantarcioglu, Gel, "Defending against Backdoors in Federated
Learning with Robust Learning Rate", AAAI 2021, section 4, eqs. (3) and (4)): the server's
learning rate is set per coordinate and per round from the agents' sign agreement.

- Eq. (3): eta_theta,i = +eta if |sum_k sgn(Delta_k,i)| >= theta, else -eta. A backdoor needs
  coordinates that most honest agents leave alone or push the other way; there the sum of
  signs stays below theta and the step is reversed.
- Eq. (4): w_{t+1} = w_t + eta_theta (.) (sum_k n_k Delta_k / sum_k n_k). The aggregate returned
  here is sgn_theta (.) weighted mean, with sgn_theta = +-1 per coordinate; the round loop
  multiplies it by the server's eta (``server.lr``), so the +-eta of eq. (3) comes out whole.
  The sign vote is unweighted (one agent, one vote) as in the paper and the authors' code.

Not a detector: nobody is flagged (``detects = False``), as in the paper. Stats:
``robust_lr_fraction_flipped``, the share of coordinates whose rate is -eta (all entries of
the state dict, buffers included: a coordinate no update moves has sum 0 < theta and counts as
flipped, its step being 0 either way).

Deviation: with fewer replies than theta (dead nodes), eq. (3) would flip every coordinate and
step against the mean update; the round keeps the model instead (delta None,
``defense_skipped``). ``check`` bounds theta by ``clients_per_round``.

The default theta = 4 is the paper's for 10 agents a round (Fashion-MNIST, the authors'
``runner.sh``); they use 8 for CIFAR-10 with 40 agents and Federated EMNIST with ~34 a round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten, unflatten


def robust_lr_signs(flat: torch.Tensor, theta: int) -> torch.Tensor:
    """Eq. (3) over the eta: +1 where |sum_k sgn(Delta_k)| >= theta, else -1 (float)."""
    votes = torch.sign(flat).sum(dim=0).abs()
    return torch.where(votes >= theta, 1.0, -1.0)


def robust_lr_aggregate(flat: torch.Tensor, weights: list[float],
                        theta: int) -> tuple[torch.Tensor, float]:
    """Eq. (4) over the eta: sgn_theta (.) the n_k-weighted mean; also the share flipped."""
    signs = robust_lr_signs(flat, theta)
    w = torch.tensor(weights, dtype=torch.float64)
    mean = (w.unsqueeze(1) * flat.double()).sum(dim=0) / w.sum()
    return (signs.double() * mean).float(), float((signs < 0).double().mean())


@dataclass
class RobustLRConfig(DefenseConfig):
    name: str = "robust_lr"
    theta: int = 4  # theta, the sign-agreement threshold of eq. (3)

    def check(self, cfg: ExperimentConfig) -> None:
        check(1 <= self.theta <= cfg.clients_per_round,
              f"defense.theta={self.theta} must be between 1 and "
              f"clients_per_round={cfg.clients_per_round}")


@DEFENSES.register("robust_lr")
class RobustLR(Defense):
    Config = RobustLRConfig

    def aggregate(self, updates: Updates) -> Aggregate:
        theta, n = self.config.theta, len(updates.deltas)
        if n < theta:  # every coordinate would be flipped: keep the model
            return Aggregate(None, stats={"defense_skipped": f"{n} updates < theta={theta}"})
        vector, flipped = robust_lr_aggregate(flatten(updates.deltas), updates.weights, theta)
        return Aggregate(unflatten(vector, updates.deltas[0]),
                         stats={"robust_lr_fraction_flipped": flipped})
