"""No attack: every node is benign."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacker.base import Attack, AttackConfig, Reply, TrainJob, state_reply
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import ATTACKS


@dataclass
class NoAttackConfig(AttackConfig):
    name: str = "none"
    backdoor: ClassVar[bool] = False

    def check(self, cfg: ExperimentConfig) -> None:
        check(self.num_malicious == 0, f"attack=none has no malicious nodes, but "
              f"attack.num_malicious={self.num_malicious}")


@ATTACKS.register("none")
class NoAttack(Attack):
    Config = NoAttackConfig

    def reply(self, job: TrainJob) -> Reply:
        return state_reply(*job.honest())
