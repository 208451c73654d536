"""The server-defense interface: one round's updates in; the aggregate update, whom the
defense flagged and what it wants logged out.

A defense is one module in ``defenses/`` that registers a subclass of :class:`Defense` under
its Hydra option name, and one YAML in ``conf/defense/`` (docs/EXTENDING.md). The round loop
computes the updates once (Delta_k = w_k - w_t, in partition order), calls :meth:`aggregate`,
steps w_{t+1} = w_t + eta * aggregate, and scores ``flagged`` against the round's malicious
partitions (``defenses/detection.py``). State a defense keeps across rounds (per-client
history, an RNG) lives in the instance and goes into checkpoints through
:meth:`state_dict` / :meth:`load_state_dict`, so ``resume=`` continues it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from flbackdoor.config import ExperimentConfig
from flbackdoor.updates import StateDict


@dataclass
class DefenseConfig:
    name: str = "none"

    def check(self, cfg: ExperimentConfig) -> None:
        """Raise ConfigError on a value this defense cannot run with."""


@dataclass
class Updates:
    """One round's valid updates, in partition order."""

    deltas: list[StateDict]  # Delta_k = w_k - w_t
    weights: list[float]  # n_k, the reported example counts
    partitions: list[int]  # who sent each
    server_round: int
    num_sampled: int  # nodes sampled this round (m), replies or not
    # w_t, the model the clients started from, for defenses that evaluate or train models
    # (FLTrust's server update, DeepSight's DDifs, FLDetector's history).
    global_state: StateDict = field(default_factory=dict)


@dataclass
class Aggregate:
    delta: StateDict | None  # the update the server steps by; None keeps the model
    flagged: frozenset[int] = frozenset()  # partitions excluded or given zero weight
    stats: dict[str, Any] = field(default_factory=dict)  # extra columns of the metrics row


class Defense:
    """Aggregation of one round's updates. ``detects``: whether the defense decides whom to
    exclude (its ``flagged`` set is a verdict to score); defenses that flag nobody by design
    (median, clipping, DP) leave it False and their rows say so."""

    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    detects: ClassVar[bool] = False

    def __init__(self, config: DefenseConfig, cfg: ExperimentConfig) -> None:
        self.config = config
        self.cfg = cfg

    def aggregate(self, updates: Updates) -> Aggregate:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class NoisyDefense(Defense):
    """A defense that draws noise: its generator is seeded by the experiment and its state is
    the defense's state, so a resumed run draws the noise the uninterrupted one would."""

    def __init__(self, config: DefenseConfig, cfg: ExperimentConfig) -> None:
        super().__init__(config, cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"noise_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "noise_rng" in state:
            self.generator.set_state(state["noise_rng"])


def build_defense(cfg: ExperimentConfig, defended: bool = True) -> Defense:
    """The run's defense (``cfg.defense``), or plain FedAvg when ``defended`` is false."""
    from flbackdoor.registries import DEFENSES

    config = cfg.defense if defended else DEFENSES["none"].Config()
    return DEFENSES[config.name](config, cfg)


def excluded(updates: Updates, kept: list[int]) -> frozenset[int]:
    """The partitions of the updates whose indices are not in ``kept``."""
    keep = set(kept)
    return frozenset(p for i, p in enumerate(updates.partitions) if i not in keep)
