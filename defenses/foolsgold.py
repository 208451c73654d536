"""FoolsGold (Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
Settings", RAID 2020, section 5, Algorithm 1): sybils that push the same poisoning objective
send updates that stay alike round after round, so each client's learning rate is cut by how
similar its *history* is to another client's.

Per round, for the clients that replied (Algorithm 1, line by line):

1. H_i += Delta_i: the sum of partition i's updates over every round it took part in
   (line 2), kept by partition id, in :meth:`FoolsGold.state_dict` (a resumed run continues it).
2. cs_ij = cos(H_i, H_j) for i != j (line 5); v_i = max_j cs_ij (line 7).
3. Pardoning (lines 9-13): cs_ij *= v_i / v_j where v_j > v_i, so an honest client that merely
   resembles one sybil is not punished as much as the sybils, who resemble each other most.
4. alpha_i = 1 - max_j cs_ij (line 14), clipped to [0, 1].
5. alpha /= max_i alpha (line 15), so the most distinct client gets 1.
6. alpha_i = kappa * (ln(alpha_i / (1 - alpha_i)) + 0.5) (line 16), clipped to [0, 1]:
   alpha = 1 gives +inf -> 1, alpha = 0 gives -inf -> 0 (the authors' code moves 1 to 0.99
   first: ln 99 + 0.5 > 1 clips to 1 as well for any kappa >= 0.2).
7. The round's update is the alpha-weighted average sum_i alpha_i Delta_i / sum_i alpha_i: the
   paper uses alpha_i as client i's learning rate (section 5, "adapts the learning rate"), and
   we normalise by sum alpha so that a round of distinct honest clients (every alpha 1) steps
   exactly as FedAvg's mean does; the server's eta still scales the step. Clients with
   alpha_i = 0 are ``flagged``.

Choices where the paper leaves room, and deviations:

- Self-similarity: as the authors' code (``cs - eye``), the diagonal counts as 0, so
  v_i = max(0, max_{j != i} cs_ij) and the pardoning ratio v_i / v_j lies in [0, 1).
- Only the clients of this round are compared (the paper's clients all take part in every
  iteration); each one's history still holds all its earlier rounds. A partition seen for the
  first time starts its history with this round's update.
- Feature-importance weighting (section 5, "importance of features") is off: the paper defines
  it on the output layer of a softmax model (weights of indicative features), which has no
  counterpart for every coordinate of a CNN's update, and the authors' deep-learning code
  (``deep-fg``) runs without it. ``output_layer_only: true`` restricts the similarity to the
  last dense layer's weights, as that code does, and is the default: on whole updates of the
  matrix's real round every alpha stayed 1 (FedAvg exactly), on the output layer the lowest
  was 0.76 (tests/test_defenses_act.py).
- Weighting: alpha alone, as the paper; ``weight_by_examples: true`` multiplies alpha_i by the
  reported n_k (then every-alpha-1 rounds equal FedAvg's n_k-weighted mean).
- alpha_i < 1e-6 counts as 0 (``TWIN_TOLERANCE``): float rounding of identical updates.
- Every alpha 0 (each client has an exact twin, e.g. identical updates): there is nothing to
  average, the model is kept (delta None, ``foolsgold_all_zero`` = 1) and everyone is flagged.

Memory: one float32 vector per partition ever seen (the model's size each); FoolsGold on
thousands of FEMNIST writers needs that many model copies in the server's RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from defenses.similarity import cosine_similarities
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import StateDict, flatten, unflatten


# alpha below this is 0: the cosine of two equal float32 updates misses 1 by rounding, and
# line 15's rescaling would blow that rounding up to a full weight when all clients are twins.
TWIN_TOLERANCE = 1e-6


def pardon(cs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 lines 5-13: the diagonal set to 0, v_i = max_j cs_ij, then
    cs_ij *= v_i / v_j wherever v_j > v_i. Returns (pardoned cs, v)."""
    cs = cs.clone().fill_diagonal_(0.0)
    v = cs.max(dim=1).values
    larger = v.unsqueeze(0) > v.unsqueeze(1)  # [i, j]: v_j > v_i
    ratio = v.unsqueeze(1) / torch.where(larger, v.unsqueeze(0), torch.ones_like(cs))
    return torch.where(larger, cs * ratio, cs), v


def foolsgold_weights(histories: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """Algorithm 1: the learning rates alpha (n,) in [0, 1] of the clients whose aggregate
    histories are the rows of ``histories``."""
    cs, _ = pardon(cosine_similarities(histories))
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)  # line 14
    alpha[alpha < TWIN_TOLERANCE] = 0.0  # float32 twins: cos 1 - 1e-8, not 1
    top = alpha.max()
    if top <= 0:  # every client has an exact twin: all look like sybils
        return torch.zeros_like(alpha)
    alpha = alpha / top  # line 15
    logit = kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)  # line 16; 1 -> +inf, 0 -> -inf
    return torch.nan_to_num(logit, nan=0.0).clamp(0.0, 1.0)


def alpha_weighted_mean(flat: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
    """sum_i w_i Delta_i / sum_i w_i, or None when every weight is 0."""
    total = weights.sum()
    if total <= 0:
        return None
    return (weights.double().unsqueeze(1) * flat.double()).sum(dim=0) / total.double()


def output_layer_key(update: StateDict) -> str:
    """The last 2-D weight of the state dict: the output layer of every model here."""
    dense = [k for k, v in update.items() if k.endswith("weight") and v.dim() == 2]
    if not dense:
        raise ValueError("output_layer_only needs a model with a dense output layer")
    return dense[-1]


@dataclass
class FoolsGoldConfig(DefenseConfig):
    name: str = "foolsgold"
    kappa: float = 1.0  # kappa, the logit's confidence parameter
    output_layer_only: bool = True  # similarity on the output layer's weights only
    weight_by_examples: bool = False  # alpha_i * n_k instead of alpha_i

    def check(self, cfg: ExperimentConfig) -> None:
        check(self.kappa > 0, f"defense.kappa={self.kappa} must be positive")
        if self.output_layer_only:  # every registered model ends in a dense layer; say if not
            from flbackdoor.models import build_model

            d = cfg.dataset
            state = build_model(cfg.model, d.channels, d.image_size, d.num_classes).state_dict()
            check(any(k.endswith("weight") and v.dim() == 2 for k, v in state.items()),
                  f"defense.output_layer_only=true needs a dense output layer; model="
                  f"{cfg.model.name} has none (set it false)")


@DEFENSES.register("foolsgold")
class FoolsGold(Defense):
    Config = FoolsGoldConfig
    detects = True  # alpha_i = 0 excludes client i from the round

    def __init__(self, config: FoolsGoldConfig, cfg: ExperimentConfig) -> None:
        super().__init__(config, cfg)
        self.histories: dict[int, torch.Tensor] = {}  # H_i by partition id

    def _features(self, updates: Updates) -> torch.Tensor:
        if self.config.output_layer_only:
            key = output_layer_key(updates.deltas[0])
            return flatten([{key: d[key]} for d in updates.deltas])
        return flatten(updates.deltas)

    def aggregate(self, updates: Updates) -> Aggregate:
        c = self.config
        features = self._features(updates)
        for p, row in zip(updates.partitions, features):
            old = self.histories.get(p)
            self.histories[p] = row.clone() if old is None or old.shape != row.shape else old + row
        alpha = foolsgold_weights(torch.stack([self.histories[p] for p in updates.partitions]),
                                  c.kappa)
        weights = alpha * torch.tensor(updates.weights, dtype=alpha.dtype) \
            if c.weight_by_examples else alpha
        flagged = frozenset(p for p, a in zip(updates.partitions, alpha.tolist()) if a <= 0)
        vector = alpha_weighted_mean(flatten(updates.deltas), weights)
        stats = {"foolsgold_min_alpha": float(alpha.min()),
                 "foolsgold_mean_alpha": float(alpha.mean()),
                 "foolsgold_all_zero": int(vector is None)}
        if vector is None:
            return Aggregate(None, flagged=flagged, stats=stats)
        return Aggregate(unflatten(vector, updates.deltas[0]), flagged=flagged, stats=stats)

    def state_dict(self) -> dict[str, Any]:
        return {"histories": {int(p): h.clone() for p, h in self.histories.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.histories = {int(p): h.clone() for p, h in state.get("histories", {}).items()}
