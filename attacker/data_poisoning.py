"""The baseline of Sun et al.'s Figure 1: train on D_trn + D_mal and send the update as it is
(no boosting, no projection)."""

from __future__ import annotations

from dataclasses import dataclass

from attacker.base import AttackConfig
from attacker.crafting import BackdoorAttack
from flbackdoor.registries import ATTACKS


@dataclass
class DataPoisoningConfig(AttackConfig):
    name: str = "data_poisoning"
    num_malicious: int = 1
    schedule: str = "fixed_frequency"


@ATTACKS.register("data_poisoning")
class DataPoisoning(BackdoorAttack):
    Config = DataPoisoningConfig
