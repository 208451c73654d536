"""Multi-Krum (Blanchard et al., NeurIPS 2017, section 5): the m updates with the lowest Krum
scores, averaged (n_k-weighted, as Flower's MultiKrum); the others are flagged."""

from __future__ import annotations

from dataclasses import dataclass

from defenses.base import Updates
from defenses.krum import KrumConfig, Selection, multikrum_select
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten


@dataclass
class MultiKrumConfig(KrumConfig):
    name: str = "multikrum"
    num_nodes_to_select: int = 5  # m

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        check(1 <= self.num_nodes_to_select <= cfg.clients_per_round,
              f"defense.num_nodes_to_select={self.num_nodes_to_select} must be between 1 and "
              f"clients_per_round={cfg.clients_per_round}")


@DEFENSES.register("multikrum")
class MultiKrum(Selection):
    Config = MultiKrumConfig

    def select(self, updates: Updates) -> list[int]:
        c = self.config
        return multikrum_select(flatten(updates.deltas), c.num_malicious, c.num_nodes_to_select)
