"""Malformed updates: what a hostile or broken node may send instead of a model update, so the
server's reply validation is exercised by a real malicious process (``attack=malformed``).

``kind=cycle`` sends a different kind every round, in the order of ``KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord

from attacker.base import Attack, AttackConfig, Reply, TrainJob
from flbackdoor.config import ExperimentConfig, one_of
from flbackdoor.registries import ATTACKS

KINDS = ("nan", "inf", "wrong_shape", "wrong_dtype", "missing_array", "absurd_examples",
         "oversized")


def kind_for_round(kind: str, server_round: int) -> str:
    return KINDS[(server_round - 1) % len(KINDS)] if kind == "cycle" else kind


def malform(arrays: dict[str, np.ndarray], num_examples: int, kind: str,
            oversized_bytes: int) -> tuple[dict[str, np.ndarray], float]:
    """A copy of an honest update (``arrays``, ``num_examples``) broken in one way."""
    out = {k: np.array(v) for k, v in arrays.items()}
    first = next(iter(out))
    if kind == "nan":
        out[first].flat[0] = np.nan
    elif kind == "inf":
        out[first].flat[-1] = np.inf
    elif kind == "wrong_shape":
        out[first] = out[first].reshape(-1)[:-1]
    elif kind == "wrong_dtype":
        out[first] = out[first].astype(np.float64)
    elif kind == "missing_array":
        out.pop(list(out)[-1])
    elif kind == "absurd_examples":
        num_examples = 10**15
    elif kind == "oversized":
        out["padding"] = np.zeros(oversized_bytes, np.uint8)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; one of {', '.join(KINDS)}, cycle")
    return out, num_examples


@dataclass
class MalformedConfig(AttackConfig):
    name: str = "malformed"
    num_malicious: int = 1
    schedule: str = "fixed_frequency"
    malformed_kind: str = "cycle"  # what to break (cycle: a different kind a round)
    oversized_bytes: int = 250_000_000  # "oversized": padding added to the update
    backdoor: ClassVar[bool] = False

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        one_of("attack.malformed_kind", self.malformed_kind, (*KINDS, "cycle"))


@ATTACKS.register("malformed")
class Malformed(Attack):
    """Train honestly, then break the reply in one of ``KINDS``."""

    Config = MalformedConfig

    def reply(self, job: TrainJob) -> Reply:
        state, result = job.honest()
        kind = kind_for_round(self.config.malformed_kind, job.server_round)
        bad, n = malform({k: v.detach().cpu().numpy() for k, v in state.items()},
                         result.num_examples, kind, self.config.oversized_bytes)
        return Reply(ArrayRecord({k: Array(v) for k, v in bad.items()}), n, result.loss)
