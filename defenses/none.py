"""No defense: FedAvg, w_{t+1} = w_t + eta * sum_k n_k Delta_k / sum_k n_k (Sun et al.)."""

from __future__ import annotations

from defenses.base import Aggregate, Defense, Updates
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import weighted_mean


@DEFENSES.register("none")
class FedAvg(Defense):
    def aggregate(self, updates: Updates) -> Aggregate:
        return Aggregate(weighted_mean(updates.deltas, updates.weights))
