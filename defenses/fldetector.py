"""FLDetector (Zhang, Cao, Jia, Gong, "FLDetector: Defending Federated Learning Against Model
Poisoning Attacks via Detecting Malicious Clients", KDD 2022), Algorithms 1-3.

A client's update should be consistent with its own past: by the Cauchy mean value theorem
(the paper's prediction step) g_i(w_t) ~ g_i(w_{t-1}) + H_t (w_t - w_{t-1}), with H_t the (integrated) Hessian.
The server approximates the Hessian-vector product from the global history and scores every
client by how far its update is from that prediction:

1. History (Algorithm 1): the global model differences Delta w_s = w_s - w_{s-1} and global
   update differences Delta g_s = g^s - g^{s-1} of the last N rounds (w_s from
   ``updates.global_state``; g^s is the update this defense returned in round s).
2. Hessian-vector product (Algorithm 2, the compact L-BFGS formula of Byrd, Nocedal and
   Schnabel): with S = [Delta w], Y = [Delta g] (d x N), A = S^T Y, D = diag(A), L the strictly
   lower triangle of A, sigma = Delta g_last^T Delta w_last / Delta w_last^T Delta w_last,
   p = [[-D, L^T], [L, sigma S^T S]]^{-1} [Y^T v; sigma S^T v] and H v = sigma v - [Y, sigma S] p.
3. Prediction and suspicious score (Algorithm 1): g^_i = g_i^{t-1} + H (w_t - w_{t-1}),
   d_i = ||g^_i - g_i^t||_2, normalized d^t = d^t / ||d^t||_1 over the round's scored clients,
   and s_i^t = the mean of client i's normalized distances over the last N scored rounds.
4. Gap statistic (Algorithm 3; Tibshirani, Walther, Hastie 2001): k-means (scikit-learn) on the
   min-max-normalized scores for k = 1..K and on B reference sets drawn uniformly on [0, 1];
   Gap(k) = mean_b log W*_kb - log W_k, s_k = sd_b(log W*_kb) sqrt(1 + 1/B); the number of
   clusters is the smallest k with Gap(k) >= Gap(k+1) - s_{k+1} (K when none is).
5. If it is more than one: k-means with 2 clusters on the scores; the cluster with the larger
   mean score is malicious.

Sign convention: the testbed's updates are Delta_k = w_k - w_t (about -lr x gradient), not the
paper's gradients. The compact formula is odd in Y (Y -> -Y flips sigma and the middle matrix and
gives -H v), so the prediction in update units is the paper's prediction, negated and scaled.

Deviations, each because the paper's setting differs from this server's:

- Removal and restart. The paper removes the detected clients from the system and restarts
  training with the rest (Algorithm 1 returns the detected clients and stops). This server keeps its model, so a detected client is
  removed for good: excluded (flagged) in every later round it replies to, and never scored
  again. The detector itself restarts: its suspicious-score window is cleared, so the next
  verdict on the remaining clients needs N fresh rounds of scores (the model history and the
  clients' previous updates stay valid: the model did not restart).
- Aggregation of the remaining updates: the paper hands them to a Byzantine-robust rule; here
  they get the n_k-weighted mean (FedAvg), so FLDetector's own effect is measured.
- Partial participation: the paper has every client in every round. Here a client's previous
  update may be from round t' < t - 1; the prediction is then g_i^{t'} + H (w_t - w_{t'}) (the
  same mean value theorem step), used only when t - t' <= N (older updates are dropped). The
  scores are normalized over, and clustered among, the round's scored clients.
- Warm-up (the paper starts detecting once the window is full): no client is flagged while the
  L-BFGS history holds fewer than N pairs, while fewer than N rounds have been scored (since
  the start or the last detection), or in a round with fewer than 3 scored clients; a client
  without a usable previous update is not scored and not flagged. ``fldetector_warmup`` says 1.
- K, the largest number of clusters the gap statistic tries, is not given in the paper; 7 is
  the authors' released code (ks = 1..7), capped at the number of scored clients minus one.
  The reference sets and k-means are seeded by the experiment seed and round, so a resumed run
  draws the same sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from defenses.base import Aggregate, Defense, DefenseConfig, Updates
from flbackdoor.config import ExperimentConfig, check
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten, weighted_mean

MIN_SCORED = 3  # the gap statistic needs k = 1, 2 and a third point to tell them apart
KMEANS_INIT = 10  # k-means restarts (scikit-learn's n_init)
_FLOOR = 1e-12  # a dispersion of 0 (as many distinct scores as clusters) read as tiny


def lbfgs_hvp(delta_w: torch.Tensor, delta_g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Algorithm 2: the L-BFGS approximation of H v from the rows of ``delta_w`` and ``delta_g``
    (N x d, oldest first), by the compact formula; float64 inside, float32 out."""
    s, y, v64 = delta_w.double().T, delta_g.double().T, v.double()
    n = s.shape[1]
    a = s.T @ y
    d = torch.diag(torch.diagonal(a))
    low = torch.tril(a, diagonal=-1)
    sigma = (y[:, -1] @ s[:, -1]) / (s[:, -1] @ s[:, -1])
    middle = torch.cat([torch.cat([-d, low.T], dim=1),
                        torch.cat([low, sigma * (s.T @ s)], dim=1)], dim=0)
    rhs = torch.cat([y.T @ v64, sigma * (s.T @ v64)])
    try:
        p = torch.linalg.solve(middle, rhs)
    except RuntimeError:  # singular (e.g. collinear pairs): the least-norm solution
        p = torch.linalg.pinv(middle) @ rhs
    return (sigma * v64 - y @ p[:n] - sigma * (s @ p[n:])).float()


def _dispersion(x: np.ndarray, k: int, seed: int) -> float:
    """W_k: k-means' within-cluster sum of squares of the 1-D points ``x``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters: W_k = 0
        model = KMeans(n_clusters=k, n_init=KMEANS_INIT, random_state=seed)
        return max(float(model.fit(x.reshape(-1, 1)).inertia_), _FLOOR)


def gap_statistic(scores: np.ndarray, max_clusters: int, references: int,
                  rng: np.random.Generator, seed: int = 0) -> tuple[int, list[float]]:
    """Algorithm 3: the number of clusters of ``scores`` the gap statistic picks, and Gap(k)
    for k = 1..K. Scores all equal are one cluster."""
    x = np.asarray(scores, dtype=np.float64)
    spread = x.max() - x.min() if len(x) else 0.0
    top = min(max_clusters, len(x) - 1)
    if top < 2 or spread <= 0:
        return 1, []
    x = (x - x.min()) / spread
    refs = [rng.uniform(0.0, 1.0, len(x)) for _ in range(references)]
    gaps, sks = [], []
    with threadpool_limits(limits=1):  # tiny 1-D fits: threads only contend
        for k in range(1, top + 1):
            log_ref = np.log([_dispersion(r, k, seed) for r in refs])
            gaps.append(float(log_ref.mean() - np.log(_dispersion(x, k, seed))))
            sks.append(float(log_ref.std() * np.sqrt(1.0 + 1.0 / references)))
    for k in range(1, top):
        if gaps[k - 1] >= gaps[k] - sks[k]:
            return k, gaps
    return top, gaps


def larger_cluster(scores: np.ndarray, seed: int = 0) -> list[int]:
    """k-means with 2 clusters on the scores: the indices of the cluster with the larger mean."""
    x = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    with threadpool_limits(limits=1):
        labels = KMeans(n_clusters=2, n_init=KMEANS_INIT, random_state=seed).fit(x).labels_
    means = [x[labels == c].mean() for c in (0, 1)]
    bad = int(np.argmax(means))
    return [i for i, label in enumerate(labels) if label == bad]


@dataclass
class FLDetectorConfig(DefenseConfig):
    name: str = "fldetector"
    window_size: int = 10  # N
    gap_references: int = 10  # B
    max_clusters: int = 7  # K

    def check(self, cfg: ExperimentConfig) -> None:
        check(self.window_size >= 1, f"defense.window_size={self.window_size} must be >= 1")
        check(self.gap_references >= 1,
              f"defense.gap_references={self.gap_references} must be >= 1")
        check(self.max_clusters >= 2, f"defense.max_clusters={self.max_clusters} must be >= 2")
        check(cfg.clients_per_round >= MIN_SCORED,
              f"defense=fldetector needs clients_per_round={cfg.clients_per_round} "
              f">= {MIN_SCORED}")


@DEFENSES.register("fldetector")
class FLDetector(Defense):
    Config = FLDetectorConfig
    detects = True

    def __init__(self, config: FLDetectorConfig, cfg: ExperimentConfig) -> None:
        super().__init__(config, cfg)
        self.removed: set[int] = set()
        self.delta_w: list[torch.Tensor] = []  # Delta w_s, oldest first, at most N
        self.delta_g: list[torch.Tensor] = []  # Delta g_s
        self.last: dict[str, Any] | None = None  # {"round", "w", "g"} of the latest step
        self.models: dict[int, torch.Tensor] = {}  # w_r of the rounds ``prev`` refers to
        self.prev: dict[int, dict[str, Any]] = {}  # partition -> {"round", "update"}
        self.scores: dict[int, list[tuple[int, float]]] = {}  # partition -> [(round, d)]
        self.scored_rounds: list[int] = []  # rounds scored since the start or last detection

    def aggregate(self, updates: Updates) -> Aggregate:
        c, t = self.config, updates.server_round
        keys = list(updates.deltas[0])
        have_w = all(k in updates.global_state for k in keys)
        w = flatten([{k: updates.global_state[k] for k in keys}])[0] if have_w else None
        flat = flatten(updates.deltas)
        present = [i for i, p in enumerate(updates.partitions) if p not in self.removed]
        stats: dict[str, Any] = {"fldetector_hessian_pairs": len(self.delta_w),
                                 "fldetector_gap_clusters": None, "fldetector_new": 0}

        scored = self._score(t, w, flat, updates.partitions, present) if w is not None else {}
        verdict = (bool(scored) and len(self.scored_rounds) >= c.window_size
                   and len(scored) >= MIN_SCORED)
        if verdict:
            window = set(self.scored_rounds[-c.window_size:])
            order = sorted(scored)
            averaged = np.array([np.mean([d for r, d in self.scores[i] if r in window])
                                 for i in order])
            rng = np.random.default_rng([self.cfg.seed, t])
            k, _ = gap_statistic(averaged, c.max_clusters, c.gap_references, rng, self.cfg.seed)
            stats["fldetector_gap_clusters"] = k
            stats["fldetector_score_max"] = float(averaged.max())
            stats["fldetector_score_median"] = float(np.median(averaged))
            if k > 1:
                caught = [order[j] for j in larger_cluster(averaged, self.cfg.seed)]
                self.removed.update(caught)
                stats["fldetector_new"] = len(caught)
                self.scores, self.scored_rounds = {}, []  # the paper's restart: fresh window
        stats["fldetector_warmup"] = int(not verdict)
        stats["fldetector_scored"] = len(scored)
        stats["fldetector_removed"] = len(self.removed)

        kept = [i for i, p in enumerate(updates.partitions) if p not in self.removed]
        flagged = frozenset(p for p in updates.partitions if p in self.removed)
        delta = (weighted_mean([updates.deltas[i] for i in kept],
                               [updates.weights[i] for i in kept]) if kept else None)
        if w is not None:
            self._remember(t, w, flat, updates.partitions, kept, delta)
        return Aggregate(delta, flagged=flagged, stats=stats)

    def _score(self, t: int, w: torch.Tensor, flat: torch.Tensor, partitions: list[int],
               present: list[int]) -> dict[int, float]:
        """Normalized distances d_i^t of the clients that have a usable previous update, keyed
        by partition, also appended to their score history. Empty before N pairs."""
        c = self.config
        if len(self.delta_w) < c.window_size:
            return {}
        dw, dg = torch.stack(self.delta_w), torch.stack(self.delta_g)
        hvp: dict[int, torch.Tensor] = {}
        raw: dict[int, float] = {}
        for i in present:
            p = partitions[i]
            prev = self.prev.get(p)
            if prev is None or prev["round"] < t - c.window_size or prev["round"] >= t \
                    or prev["round"] not in self.models:
                continue
            r = prev["round"]
            if r not in hvp:
                hvp[r] = lbfgs_hvp(dw, dg, w - self.models[r])
            raw[p] = float(torch.linalg.vector_norm(prev["update"] + hvp[r] - flat[i]))
        total = sum(raw.values())
        if not raw or not np.isfinite(total):
            return {}
        scored = {p: (d / total if total > 0 else 0.0) for p, d in raw.items()}
        for p, d in scored.items():
            self.scores.setdefault(p, []).append((t, d))
        self.scored_rounds.append(t)
        window = set(self.scored_rounds[-c.window_size:])
        self.scores = {p: [(r, d) for r, d in h if r in window] for p, h in self.scores.items()}
        self.scores = {p: h for p, h in self.scores.items() if h}
        return scored

    def _remember(self, t: int, w: torch.Tensor, flat: torch.Tensor, partitions: list[int],
                  kept: list[int], delta: dict | None) -> None:
        """The round's contribution to the history: the (Delta w, Delta g) pair, the model and
        every kept client's update (for its next prediction)."""
        n = self.config.window_size
        if delta is not None:
            g = flatten([delta])[0]
            if self.last is not None:
                s, y = w - self.last["w"], g - self.last["g"]
                if float(s @ s) > 0 and bool(torch.isfinite(s).all() & torch.isfinite(y).all()):
                    self.delta_w = (self.delta_w + [s])[-n:]
                    self.delta_g = (self.delta_g + [y])[-n:]
            self.last = {"round": t, "w": w, "g": g}
        for i in kept:
            self.prev[partitions[i]] = {"round": t, "update": flat[i].clone()}
        self.models[t] = w
        # Keep what a later round may use: updates of the last N rounds, of clients still in.
        self.prev = {p: h for p, h in self.prev.items()
                     if h["round"] > t - n and p not in self.removed}
        used = {h["round"] for h in self.prev.values()}
        self.models = {r: m for r, m in self.models.items() if r in used}

    def state_dict(self) -> dict[str, Any]:
        return {"removed": sorted(self.removed), "delta_w": list(self.delta_w),
                "delta_g": list(self.delta_g), "last": self.last, "models": dict(self.models),
                "prev": {p: dict(h) for p, h in self.prev.items()},
                "scores": {p: list(h) for p, h in self.scores.items()},
                "scored_rounds": list(self.scored_rounds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.removed = set(state["removed"])
        self.delta_w, self.delta_g = list(state["delta_w"]), list(state["delta_g"])
        self.last = state["last"]
        self.models = {int(r): m for r, m in state["models"].items()}
        self.prev = {int(p): dict(h) for p, h in state["prev"].items()}
        self.scores = {int(p): [(int(r), float(d)) for r, d in h]
                       for p, h in state["scores"].items()}
        self.scored_rounds = [int(r) for r in state["scored_rounds"]]
