"""Malformed replies: what a hostile or broken node may send instead of a model update, so every
check of the server's reply validation (``server/validation.py``) is exercised by a real
malicious process (``attack=malformed``).

``kind=cycle`` sends a different kind every round, in the order of ``KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from attacker.base import Attack, AttackConfig, Reply, TrainJob
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig, one_of
from flbackdoor.registries import ATTACKS

# Each kind breaks one clause of the train-reply contract.
KINDS = ("nan", "inf", "wrong_shape", "wrong_dtype", "missing_array", "absurd_examples",
         "oversized", "extra_metric", "missing_metric", "renamed_record", "shape_lie",
         "nan_metric", "huge_norm", "inflated_examples")


def kind_for_round(kind: str, server_round: int) -> str:
    return KINDS[(server_round - 1) % len(KINDS)] if kind == "cycle" else kind


def malform(arrays: dict[str, np.ndarray], num_examples: int, loss: float, kind: str,
            oversized_bytes: int) -> RecordDict:
    """The train reply an honest node would send (``arrays``, its model, ``num_examples``,
    ``loss``), broken in one way."""
    out = {k: np.array(v) for k, v in arrays.items()}
    metrics: dict = {P.NUM_EXAMPLES: num_examples, P.TRAIN_LOSS: loss}
    first = next(iter(out))
    record: dict[str, Array] | None = None  # set where the Arrays themselves lie
    names = (P.ARRAYS, P.METRICS)
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
        metrics[P.NUM_EXAMPLES] = 10**15
    elif kind == "oversized":
        out["padding"] = np.zeros(oversized_bytes, np.uint8)
    elif kind == "extra_metric":
        metrics["surprise"] = 1.0
    elif kind == "missing_metric":
        del metrics[P.TRAIN_LOSS]
    elif kind == "renamed_record":
        names = (P.ARRAYS + "_v2", P.METRICS)
    elif kind == "shape_lie":  # the header says the global shape; the bytes hold one value less
        record = {k: Array(v) for k, v in out.items()}
        short = Array(out[first].reshape(-1)[:-1])
        record[first] = Array(dtype=short.dtype, shape=tuple(out[first].shape),
                              stype=short.stype, data=short.data)
    elif kind == "nan_metric":  # the isolation report, which the server sums
        metrics.update({P.ISOLATED_COUNT: float("nan"), P.ISOLATED_POISONED: 0,
                        P.POISONED_COUNT: 0})
    elif kind == "huge_norm":  # finite, but ~1e30 a coordinate
        out = {k: np.full_like(v, 1e30) if v.dtype.kind == "f" else v for k, v in out.items()}
    elif kind == "inflated_examples":  # within server.max_examples, far beyond its partition
        metrics[P.NUM_EXAMPLES] = 1_000_000
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; one of {', '.join(KINDS)}, cycle")
    arrays_record = ArrayRecord(record if record is not None
                                else {k: Array(v) for k, v in out.items()})
    return RecordDict({names[0]: arrays_record, names[1]: MetricRecord(metrics)})


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
        content = malform({k: v.detach().cpu().numpy() for k, v in state.items()},
                          result.num_examples, result.loss, kind, self.config.oversized_bytes)
        return Reply(ArrayRecord(), result.num_examples, result.loss, content=content)
