"""FLDetector (Zhang et al., KDD 2022): the compact L-BFGS Hessian-vector product, the gap
statistic, and the detector on a simulated quadratic federation (benign clients take a gradient
step of their own quadratic loss, the attackers send a different random vector every round)."""

import io

import numpy as np
import pytest
import torch

from defenses.base import Updates, build_defense
from defenses.fldetector import gap_statistic, larger_cluster, lbfgs_hvp
from flbackdoor.config import ConfigError, ExperimentConfig, validate
from flbackdoor.updates import weighted_mean

D = 8


def _cfg(n=6, **defense):
    fields = {"name": "fldetector", "window_size": 2, "gap_references": 5, "max_clusters": 4}
    return validate(ExperimentConfig(num_clients=n, clients_per_round=n,
                                     defense={**fields, **defense}))


def _dense_bfgs(s_rows, y_rows, v):
    """B_0 = sigma I, then one BFGS update per pair, oldest first."""
    s_last, y_last = s_rows[-1], y_rows[-1]
    b = (y_last @ s_last) / (s_last @ s_last) * torch.eye(len(v), dtype=torch.float64)
    for s, y in zip(s_rows, y_rows):
        bs = b @ s
        b = b - torch.outer(bs, bs) / (s @ bs) + torch.outer(y, y) / (y @ s)
    return b @ v


def test_lbfgs_compact_formula_is_the_bfgs_matrix_times_v():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = q @ q.T + torch.eye(6, dtype=torch.float64)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = s @ a.T
    v = torch.randn(6, generator=g, dtype=torch.float64)
    hv = lbfgs_hvp(s.float(), y.float(), v.float())
    assert torch.allclose(hv.double(), _dense_bfgs(s, y, v), rtol=1e-4, atol=1e-4)
    # Secant condition on the newest pair: H s_N = y_N.
    assert torch.allclose(lbfgs_hvp(s.float(), y.float(), s[-1].float()), y[-1].float(),
                          rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c", [2.5, -0.1])  # -0.1: the testbed's updates are -lr x gradient
def test_lbfgs_of_a_scaled_identity_is_exact(c):
    s = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    v = torch.randn(5, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(lbfgs_hvp(s, c * s, v), c * v, rtol=1e-5, atol=1e-6)


def test_gap_statistic_counts_clusters_and_kmeans_flags_the_high_one():
    two = np.array([0.10, 0.11, 0.09, 0.10, 0.12, 0.10, 0.095, 0.105, 0.50, 0.52])
    k, gaps = gap_statistic(two, 7, 10, np.random.default_rng(0))
    assert k >= 2 and len(gaps) == 7
    assert gap_statistic(two, 7, 10, np.random.default_rng(0))[1] == gaps  # seeded
    assert larger_cluster(two) == [8, 9]
    assert gap_statistic(np.full(10, 0.1), 7, 10, np.random.default_rng(0))[0] == 1  # no spread
    assert gap_statistic(np.linspace(0.0, 1.0, 10), 4, 10, np.random.default_rng(0))[0] == 1


class Federation:
    """Quadratic clients: benign i sends -eta (A w - b_i) (+ tiny noise); each attacker sends a
    fresh random vector. The server steps w += aggregate, like the round loop with lr 1."""

    def __init__(self, n=6, attackers=(5,), seed=0):
        self.g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(D, D, generator=self.g))[0]
        self.a = q @ torch.diag(torch.linspace(0.5, 1.5, D)) @ q.T
        self.b = [torch.randn(D, generator=self.g) + 0.05 * torch.randn(D, generator=self.g)
                  for _ in range(n)]
        self.w = torch.zeros(D)
        self.n, self.attackers = n, set(attackers)

    def deltas(self, present):
        out = []
        for i in present:
            if i in self.attackers:
                out.append(0.3 * torch.randn(D, generator=self.g))
            else:
                out.append(-0.1 * (self.a @ self.w - self.b[i])
                           + 1e-4 * torch.randn(D, generator=self.g))
        return out

    def updates(self, rnd, present=None):
        present = list(range(self.n)) if present is None else present
        deltas = [{"x": d} for d in self.deltas(present)]
        return Updates(deltas, [10.0 + i for i in present], present, rnd, self.n,
                       {"x": self.w.clone()})

    def step(self, out):
        if out.delta is not None:
            self.w = self.w + out.delta["x"]


def _run(defense, fed, rounds, start=1, missing=None):
    outs = []
    for rnd in range(start, start + rounds):
        present = [i for i in range(fed.n) if (missing or {}).get(rnd) != i]
        up = fed.updates(rnd, present)
        out = defense.aggregate(up)
        outs.append((up, out))
        fed.step(out)
    return outs


def test_warmup_then_the_inconsistent_client_is_flagged_and_stays_flagged():
    fed, d = Federation(), build_defense(_cfg())
    outs = _run(d, fed, 6)
    # N = 2: pairs from round 2 on, two pairs at round 4 (first scores), verdict at round 5.
    for up, out in outs[:4]:
        assert out.stats["fldetector_warmup"] == 1 and out.flagged == frozenset()
        assert out.stats["fldetector_gap_clusters"] is None
    assert outs[3][1].stats["fldetector_scored"] == 6
    up, out = outs[4]
    assert out.stats["fldetector_warmup"] == 0 and out.stats["fldetector_gap_clusters"] >= 2
    assert out.flagged == frozenset({5}) and out.stats["fldetector_new"] == 1
    kept = [i for i in range(6) if i != 5]
    assert torch.allclose(out.delta["x"], weighted_mean([up.deltas[i] for i in kept],
                                                        [up.weights[i] for i in kept])["x"])
    # Round 6: the detector restarted its score window (warm-up), yet 5 is still removed.
    up, out = outs[5]
    assert out.flagged == frozenset({5}) and out.stats["fldetector_warmup"] == 1
    assert out.stats["fldetector_removed"] == 1 and out.stats["fldetector_scored"] == 5


def test_identical_benign_updates_pass_through_as_fedavg():
    d = build_defense(_cfg())
    w = torch.zeros(D)
    for rnd in range(1, 7):
        step = -0.1 * (w - 1.0)
        up = Updates([{"x": step.clone()} for _ in range(6)], [float(i + 1) for i in range(6)],
                     list(range(6)), rnd, 6, {"x": w.clone()})
        out = d.aggregate(up)
        assert out.flagged == frozenset()
        assert torch.allclose(out.delta["x"], weighted_mean(up.deltas, up.weights)["x"])
        w = w + out.delta["x"]
    assert out.stats["fldetector_warmup"] == 0 and out.stats["fldetector_gap_clusters"] == 1


def test_history_survives_state_dict_into_a_fresh_instance():
    fed = Federation(seed=3)
    a = build_defense(_cfg())
    _run(a, fed, 4)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    b = build_defense(_cfg())
    b.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    up = fed.updates(5)
    out_a, out_b = a.aggregate(up), b.aggregate(up)
    assert out_b.flagged == out_a.flagged == frozenset({5})
    assert torch.equal(out_a.delta["x"], out_b.delta["x"])
    assert out_a.stats == out_b.stats
    assert build_defense(_cfg()).aggregate(up).flagged == frozenset()  # no history: warm-up


def test_a_round_with_a_missing_reply_still_aggregates_and_scores_the_rest():
    fed, d = Federation(seed=1), build_defense(_cfg())
    outs = _run(d, fed, 5, missing={4: 2})
    up, out = outs[3]  # round 4: partition 2 did not reply
    assert up.partitions == [0, 1, 3, 4, 5] and out.stats["fldetector_scored"] == 5
    assert torch.isfinite(out.delta["x"]).all()
    up, out = outs[4]  # round 5: 2 is back, predicted from its round-3 update (t - t' <= N)
    assert out.stats["fldetector_scored"] == 6 and 5 in out.flagged and 2 not in out.flagged


def test_without_the_global_model_it_only_aggregates():
    d = build_defense(_cfg())
    up = Updates([{"x": torch.ones(3)}, {"x": torch.zeros(3)}, {"x": torch.ones(3)}],
                 [1.0, 1.0, 2.0], [0, 1, 2], 1, 3)
    out = d.aggregate(up)
    assert out.flagged == frozenset() and out.stats["fldetector_warmup"] == 1
    assert torch.allclose(out.delta["x"], torch.full((3,), 0.75))


@pytest.mark.parametrize("field, value", [("window_size", 0), ("gap_references", 0),
                                          ("max_clusters", 1)])
def test_out_of_range_hyper_parameters_fail_validation(field, value):
    with pytest.raises(ConfigError, match=f"defense.{field}"):
        validate(ExperimentConfig(num_clients=10, clients_per_round=10,
                                  defense={"name": "fldetector", field: value}))
    with pytest.raises(ConfigError, match="clients_per_round"):
        validate(ExperimentConfig(num_clients=10, clients_per_round=2,
                                  defense={"name": "fldetector"}))
