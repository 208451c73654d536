"""Central DP with fixed clipping, as Flower's ``DifferentialPrivacyServerSideFixedClipping``
around FedAvg (McMahan et al., ICLR 2018, Algorithm 1 with a fixed bound): clip each update to
C, take the n_k-weighted mean, add N(0, (z C / m)^2) per coordinate, m the clients sampled.
Unlike Flower's, the noise comes from a seeded generator saved in checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from defenses.base import Aggregate, NoisyDefense, Updates
from defenses.norm_clipping import ClippingConfig, clip_all
from defenses.weak_dp import gaussian_noise_like
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import weighted_mean


@dataclass
class FixedClippingDPConfig(ClippingConfig):
    name: str = "flower_dp_fixed"
    norm_bound: float = 3.0  # C
    noise_multiplier: float = 0.1  # z

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(self.noise_multiplier >= 0,
              f"defense.noise_multiplier={self.noise_multiplier} must be >= 0")


@DEFENSES.register("flower_dp_fixed")
class FixedClippingDP(NoisyDefense):
    Config = FixedClippingDPConfig

    def aggregate(self, updates: Updates) -> Aggregate:
        c = self.config
        clipped, count = clip_all(updates.deltas, c.norm_bound)
        mean = weighted_mean(clipped, updates.weights)
        std = c.noise_multiplier * c.norm_bound / self.cfg.clients_per_round
        noise = gaussian_noise_like(mean, std, self.generator)
        return Aggregate({k: v + noise[k] for k, v in mean.items()},
                         stats={"fraction_clipped": count / len(updates.deltas)})
