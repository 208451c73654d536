"""Sun et al. section 3 (eq. 1): unconstrained boosted model replacement. Train w* on
D_trn + D_mal from w_t and send w_t + b (w* - w_t), with b = beta / m, beta = sum_{k in S_t} n_k /
(eta n_attacker) over the round's sampled nodes and m attackers in the round, or a fixed
amplification ``boost_factor`` (Wu et al.'s alpha)."""

from __future__ import annotations

from dataclasses import dataclass

from attacker.base import AttackConfig, TrainJob
from attacker.crafting import BackdoorAttack
from attacker.replacement import boost_factor
from flbackdoor import protocol
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import ATTACKS


@dataclass
class BoostedConfig(AttackConfig):
    name: str = "boosted"
    num_malicious: int = 1
    schedule: str = "fixed_frequency"
    # 0: beta = sum_{k in S_t} n_k / (eta * n_attacker), split among the round's attackers;
    # > 0: a fixed amplification alpha per attacker (Wu et al.).
    boost_factor: float = 0.0

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.boost_factor >= 0, f"attack.boost_factor={self.boost_factor} must be >= 0")


@ATTACKS.register("boosted")
class Boosted(BackdoorAttack):
    Config = BoostedConfig

    def boost(self, job: TrainJob, attacker_examples: int) -> float:
        if self.config.boost_factor > 0:
            return self.config.boost_factor
        hints = job.hints
        return boost_factor(float(hints[protocol.ATTACK_ROUND_EXAMPLES]), self.cfg.server.lr,
                            float(attacker_examples),
                            int(hints.get(protocol.ATTACK_NUM_ATTACKERS, 1)))
