"""FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", NDSS 2021, section IV, Algorithms 1 and 2): the server holds a small clean root
dataset, trains its own update g_0 from w_t on it every round, and trusts each client update by
its direction relative to g_0.

Per round (Algorithm 1, steps II and III; eqs. (2)-(5)):

1. g_0 = ModelUpdate(w_t, D_0, b, beta, R_l) (Algorithm 2): local SGD on the root set from the
   round's global model, g_0 = w - w_t (the paper's w_0 - w with the sign the round loop uses).
   The model is built as ``server/app.py: setup`` builds it (``flbackdoor.models.build_model``)
   and loaded with ``updates.global_state``; the SGD is ``flbackdoor.training.train``.
2. TS_i = ReLU(cos(g_i, g_0)) (eq. 2).
3. g_i_bar = g_i * ||g_0|| / ||g_i|| (eq. 3): every update on g_0's sphere.
4. g = sum_i TS_i g_i_bar / sum_j TS_j (eq. 4); the server steps w_t + eta * g (eq. 5, eta is
   ``server.lr``). Partitions with TS_i = 0 are ``flagged``. If every TS is 0 there is no
   trusted direction: the model is kept (delta None) and ``fltrust_all_zero`` = 1 says so.

The root dataset D_0 (config ``root_samples``, the paper's |D_0| = 100 by default) is drawn once,
uniformly without replacement, from the union of the training partitions in the partition
cache (``flbackdoor.data.cache.prepare(cfg)`` then ``load_train``: every partition back to back,
as the cache holds them, i.e. before any attacker or outsider poisons a node's copy), with
``numpy.random.default_rng([seed, ROOT_SALT])``. Never the test set. The paper samples the root
set from the clients' overall training distribution, which is what this draw is; its images
also lie in some client's partition (the paper's own setting allows it).

Training settings of ModelUpdate: Algorithm 1 hands the server the clients' batch size b,
learning rate beta and local iterations R_l, so the server uses ``cfg.client`` (batch_size,
lr, momentum, weight_decay: the same optimizer as every honest client). Local iterations: a
client here trains ``client.epochs`` passes over its partition, i.e. client.epochs *
ceil(n_k / b) SGD steps; with ``local_iterations: 0`` the server takes as many steps, with n_k
the mean partition size of the cache's metadata (not the reported n_k, which a client could
inflate), rounded up to whole passes over the root set. A positive ``local_iterations`` sets
R_l directly (also rounded up to whole passes). Matching R_l keeps ||g_0|| on the scale of the
clients' updates; a single pass over 100 images would shrink every normalised update, and so
the global step, to a few SGD steps' length.

Randomness: the server's batch order (and any dropout) is seeded by (seed, round), so a resumed
run repeats it; there is no state to checkpoint. ``check``: root_samples >= 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.data.cache import load_meta, load_train, prepare
from flbackdoor.models import build_model
from flbackdoor.registries import DEFENSES
from flbackdoor.training import Normalizer, as_tensors, pick_device, train
from flbackdoor.updates import StateDict, difference, flatten, unflatten

# The root set's random stream: numpy.random.default_rng([seed, ROOT_SALT]). (A salt of this
# defense's own, beside flbackdoor.rng.SALTS, which it could join.)
ROOT_SALT = 60013


def draw_root(folder: Path, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """|D_0| = ``size`` training examples (all of them if fewer), uniformly without replacement
    from the union of the partitions in the cache ``folder``."""
    x, y = load_train(folder)
    rng = np.random.default_rng([seed, ROOT_SALT])
    idx = np.sort(rng.choice(len(y), size=min(size, len(y)), replace=False))
    return np.asarray(x[idx]), np.asarray(y[idx])


def trust_scores(flat: torch.Tensor, server: torch.Tensor) -> torch.Tensor:
    """TS_i = ReLU(cos(g_i, g_0)) (eq. 2), float64; a zero update has TS 0."""
    rows = torch.nn.functional.normalize(flat.double(), dim=1, eps=1e-12)
    ref = torch.nn.functional.normalize(server.double(), dim=0, eps=1e-12)
    return torch.relu(rows @ ref)


def fltrust_aggregate(flat: torch.Tensor,
                      server: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Eqs. (2)-(4): (sum_i TS_i g_i ||g_0|| / ||g_i|| / sum_j TS_j, TS); None when all TS
    are 0."""
    ts = trust_scores(flat, server)
    total = ts.sum()
    if total <= 0:
        return None, ts
    norms = flat.double().norm(dim=1)
    scale = torch.where(norms > 0, server.double().norm() / norms.clamp_min(1e-30),
                        torch.zeros_like(norms))
    return (ts * scale).unsqueeze(1).mul(flat.double()).sum(dim=0) / total, ts


@dataclass
class FLTrustConfig(DefenseConfig):
    name: str = "fltrust"
    root_samples: int = 100  # |D_0|, the server's root dataset
    local_iterations: int = 0  # R_l; 0: as many SGD steps as a client's local training

    def check(self, cfg: ExperimentConfig) -> None:
        check(self.root_samples >= 1,
              f"defense.root_samples={self.root_samples} must be at least 1 (FLTrust's root "
              "dataset)")
        check(self.local_iterations >= 0,
              f"defense.local_iterations={self.local_iterations} must be >= 0 (0: a client's)")


@DEFENSES.register("fltrust")
class FLTrust(Defense):
    Config = FLTrustConfig
    detects = True  # TS_i = 0 gives update i no weight

    def __init__(self, config: FLTrustConfig, cfg: ExperimentConfig) -> None:
        super().__init__(config, cfg)
        self._root: tuple[np.ndarray, np.ndarray] | None = None
        self._passes: int | None = None

    def _load_root(self) -> tuple[np.ndarray, np.ndarray]:
        if self._root is None:
            folder = prepare(self.cfg)
            self._root = draw_root(folder, self.config.root_samples, self.cfg.seed)
            self._passes = self.passes(load_meta(folder)["sizes"], len(self._root[1]))
        return self._root

    def passes(self, sizes: list[int], root_size: int) -> int:
        """Epochs over the root set: R_l SGD steps rounded up to whole passes."""
        b = self.cfg.client.batch_size
        steps = self.config.local_iterations or (
            self.cfg.client.epochs * math.ceil(float(np.mean(sizes)) / b))
        return max(1, math.ceil(steps / math.ceil(root_size / b)))

    def server_update(self, global_state: StateDict, server_round: int) -> StateDict:
        """g_0 = ModelUpdate(w_t, D_0, b, beta, R_l) (Algorithm 2), as w - w_t."""
        if not global_state:
            raise ValueError("FLTrust needs updates.global_state (w_t) to train its update")
        x_np, y_np = self._load_root()
        cfg, d = self.cfg, self.cfg.dataset
        device = pick_device(cfg.device)
        model = build_model(cfg.model, d.channels, d.image_size, d.num_classes).to(device)
        model.load_state_dict(global_state)
        x, y = as_tensors(x_np, y_np, device)
        settings = dataclasses.replace(cfg.client, epochs=self._passes)
        seed = int(np.random.default_rng([cfg.seed, ROOT_SALT, server_round]).integers(2**31))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout, where the model has any
            train(model, x, y, settings, Normalizer(d, device), torch.Generator().manual_seed(seed))
        trained = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return difference(trained, global_state)

    def aggregate(self, updates: Updates) -> Aggregate:
        g0 = self.server_update(updates.global_state, updates.server_round)
        server = flatten([{k: g0[k] for k in updates.deltas[0]}])[0]
        vector, ts = fltrust_aggregate(flatten(updates.deltas), server)
        flagged = frozenset(p for p, t in zip(updates.partitions, ts.tolist()) if t <= 0)
        stats = {"fltrust_mean_trust": float(ts.mean()), "fltrust_num_zero": len(flagged),
                 "fltrust_server_norm": float(server.norm()),
                 "fltrust_all_zero": int(vector is None)}
        if vector is None:
            return Aggregate(None, flagged=flagged, stats=stats)
        return Aggregate(unflatten(vector, updates.deltas[0]), flagged=flagged, stats=stats)
