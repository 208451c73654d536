"""The server's reply validation: every malformed kind is rejected with a reason, every honest
reply passes; property tests over arbitrary corruptions; a fuzz of hostile replies through
validation, the update statistics and every registered aggregation."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attacker.malformed import KINDS, kind_for_round, malform
from defenses.base import Updates, build_defense
from flbackdoor.config import ExperimentConfig, validate
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import difference, global_norm
from server.update_stats import update_statistics
from server.validation import check_reply, expected_from

GLOBAL = {"conv.weight": np.zeros((4, 1, 3, 3), np.float32), "fc.bias": np.zeros(10, np.float32)}
EXPECTED = expected_from(ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                         max_examples=10_000, max_update_bytes=1_000_000, max_update_norm=1e4)


def reply(arrays: dict, n=100, extra_records: dict | None = None, **metrics) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                       "metrics": MetricRecord({"num-examples": n, "train_loss": 0.1, **metrics}),
                       **(extra_records or {})})


def test_an_honest_update_passes():
    assert check_reply(reply({k: v + 0.5 for k, v in GLOBAL.items()}), EXPECTED) is None
    torch_update = ArrayRecord({k: torch.from_numpy(v) for k, v in GLOBAL.items()})
    ok = RecordDict({"arrays": torch_update,
                     "metrics": MetricRecord({"num-examples": 5, "train_loss": 2})})
    assert check_reply(ok, EXPECTED) is None
    abl = reply(GLOBAL, isolated_count=5, isolated_poisoned=3, poisoned_count=40)
    assert check_reply(abl, EXPECTED) is None


REASONS = {
    "nan": "non-finite", "inf": "non-finite", "wrong_shape": "shape (35,) != (4, 1, 3, 3)",
    "wrong_dtype": "dtype float64", "missing_array": "missing arrays: fc.bias",
    "absurd_examples": "num-examples=1000000000000000 outside", "oversized": "max_update_bytes",
    "extra_metric": "unexpected metrics: surprise", "missing_metric": "missing metrics: train_loss",
    "renamed_record": "are not exactly 'arrays' and 'metrics'",
    "shape_lie": "bytes decode to float32 (35,), declared float32 (4, 1, 3, 3)",
    "nan_metric": "metric isolated_count=nan is not finite",
    "huge_norm": "exceeds server.max_update_norm", "inflated_examples": "num-examples=1000000",
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_malformed_kind_is_rejected_with_its_reason(kind):
    content = malform(GLOBAL, 100, 0.3, kind, oversized_bytes=2_000_000)
    assert REASONS[kind] in check_reply(content, EXPECTED, max_examples=500)


def test_cycle_visits_every_kind():
    assert set(REASONS) == set(KINDS)
    assert [kind_for_round("cycle", r) for r in range(1, len(KINDS) + 1)] == list(KINDS)


@pytest.mark.parametrize("n", [0, -3, 10_001, 2.5, float("nan"), float("inf"), [1, 2]])
def test_bad_num_examples(n):
    assert "num-examples" in check_reply(reply(GLOBAL, n), EXPECTED)


def test_the_partition_bound_on_num_examples():
    """server.num_examples=known: a count above the partition's size is a lie."""
    assert check_reply(reply(GLOBAL, 600), EXPECTED, max_examples=600) is None
    assert "num-examples=601 outside 1..600" in check_reply(reply(GLOBAL, 601), EXPECTED, 600)


def test_record_structure():
    assert "are not exactly" in check_reply(
        RecordDict({"metrics": MetricRecord({"num-examples": 1})}), EXPECTED)
    two = reply(GLOBAL, 1, {"more": MetricRecord({"x": 1.0})})
    assert "are not exactly" in check_reply(two, EXPECTED)
    swapped = RecordDict({"arrays": ConfigRecord({"a": 1}),
                          "metrics": MetricRecord({"num-examples": 1, "train_loss": 0.0})})
    assert "are not ArrayRecord, MetricRecord" in check_reply(swapped, EXPECTED)
    extra = dict(GLOBAL, surprise=np.zeros(2, np.float32))
    assert "unexpected arrays: surprise" in check_reply(reply(extra), EXPECTED)


def test_metric_values_and_the_isolation_report():
    assert "train_loss=nan is not finite" in check_reply(
        reply(GLOBAL, train_loss=float("nan")), EXPECTED)
    assert "train_loss=[1.0, 2.0] is not a number" in check_reply(
        reply(GLOBAL, train_loss=[1.0, 2.0]), EXPECTED)
    assert "partial isolation report" in check_reply(reply(GLOBAL, isolated_count=3), EXPECTED)
    assert "is impossible" in check_reply(
        reply(GLOBAL, isolated_count=3, isolated_poisoned=4, poisoned_count=9), EXPECTED)
    assert "isolated_count=2.5 is not a whole number" in check_reply(
        reply(GLOBAL, isolated_count=2.5, isolated_poisoned=0, poisoned_count=0), EXPECTED)


def test_the_update_norm_bound_is_on_w_k_minus_w_t():
    base = {k: v + 1000.0 for k, v in GLOBAL.items()}  # a far global model
    expected = expected_from(ArrayRecord({k: Array(v) for k, v in base.items()}), 10_000,
                             1_000_000, max_update_norm=1.0)
    near = {k: v + 0.01 for k, v in base.items()}  # ||update|| = 0.01 * sqrt(46)
    assert check_reply(reply(near), expected) is None
    far = {k: v + 1.0 for k, v in base.items()}  # sqrt(46) > 1
    assert "update norm 6.78 exceeds server.max_update_norm=1" in check_reply(reply(far), expected)


values = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(values, min_size=10, max_size=10), n=st.integers(-5, 20_000))
def test_property_accepted_means_finite_and_bounded(data, n):
    arrays = dict(GLOBAL, **{"fc.bias": np.asarray(data, np.float32)})
    reason = check_reply(reply(arrays, n), EXPECTED)
    bias = arrays["fc.bias"].astype(np.float64)
    ok = (bool(np.isfinite(bias).all()) and 1 <= n <= 10_000
          and math.sqrt(float(np.sum(bias ** 2))) <= 1e4)
    assert (reason is None) == ok


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       dtype=st.sampled_from(["float32", "float64", "float16", "int64"]))
def test_property_any_other_shape_or_dtype_is_rejected(shape, dtype):
    arr = np.zeros(shape, dtype)
    reason = check_reply(reply(dict(GLOBAL, **{"fc.bias": arr})), EXPECTED)
    assert (reason is None) == (tuple(shape) == (10,) and dtype == "float32")


# -- the fuzz: hostile replies through everything that follows validation --------------------

names = st.sampled_from(["arrays", "metrics", "config", "arrays_v2", "", "x" * 300])
metric_keys = st.sampled_from(["num-examples", "train_loss", "isolated_count",
                               "isolated_poisoned", "poisoned_count", "surprise", ""])
metric_values = st.one_of(st.integers(-10**18, 10**18),
                          st.floats(allow_nan=True, allow_infinity=True),
                          st.lists(st.integers(-5, 5), max_size=3))
extreme = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([0.0, 1e-30, 1e4, -1e4, 3e38]))


@st.composite
def hostile_array(draw, name: str) -> Array:
    want = GLOBAL[name]
    real = draw(st.sampled_from([want.shape, (want.size,), (want.size - 1,), (1,), ()]))
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int32", "uint8"]))
    fill = draw(extreme)
    with np.errstate(all="ignore"):
        values = np.full(real, fill).astype(dtype)
    arr = Array(values)
    declared = draw(st.sampled_from([want.shape, tuple(real)]))
    dtype_said = draw(st.sampled_from([str(values.dtype), "float32"]))
    return Array(dtype=dtype_said, shape=tuple(declared), stype=arr.stype, data=arr.data)


@st.composite
def hostile_reply(draw) -> RecordDict:
    if draw(st.booleans()):  # the right arrays and keys, extreme values
        arrays = {k: Array(np.full(v.shape, draw(extreme), np.float32)
                           if draw(st.booleans()) else v + np.float32(draw(
                               st.floats(-1e3, 1e3, width=32)))) for k, v in GLOBAL.items()}
        metrics = {"num-examples": draw(st.integers(-2, 20_000)),
                   "train_loss": draw(st.floats(allow_nan=True, allow_infinity=True))}
    else:
        keys = draw(st.lists(st.sampled_from(sorted(GLOBAL)), max_size=3))
        arrays = {k: draw(hostile_array(k)) for k in keys}
        metrics = draw(st.dictionaries(metric_keys, metric_values, max_size=6))
    plausible = draw(st.booleans())  # the record names right, so the rest gets checked
    a_name, m_name = ("arrays", "metrics") if plausible else (draw(names), draw(names))
    records = {a_name: ArrayRecord(arrays)}
    records[m_name if m_name != a_name else m_name + "_"] = MetricRecord(metrics)
    return RecordDict(records)


# Defenses that need a partition cache (FLTrust's root set): their own tests cover them.
FUZZ_DEFENSES = [n for n in DEFENSES.names() if n != "fltrust"]
FUZZ_OPTIONS = {"foolsgold": {"output_layer_only": False},
                "fldetector": {"window_size": 1}}
FUZZ_CONFIGS = {name: validate(ExperimentConfig(
    num_clients=7, clients_per_round=7, defense={"name": name, **FUZZ_OPTIONS.get(name, {})}))
    for name in FUZZ_DEFENSES}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=hostile_reply())
def test_fuzz_validation_never_raises_and_every_rejection_has_a_reason(content):
    reason = check_reply(content, EXPECTED, max_examples=5_000)
    assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)
    assert reason is None or not reason.startswith("unreadable reply"), reason  # foreseen


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(round_replies=st.lists(hostile_reply(), min_size=1, max_size=6))
def test_fuzz_accepted_replies_keep_statistics_and_every_aggregate_finite(round_replies):
    """What validation lets through never breaks the update statistics or any registered
    aggregation: no exception, the global model's step stays finite."""
    accepted = [c for c in round_replies if check_reply(c, EXPECTED, max_examples=5_000) is None]
    if not accepted:
        return
    base = {k: torch.from_numpy(v) for k, v in GLOBAL.items()}
    deltas = [difference(next(iter(c.array_records.values())).to_torch_state_dict(), base)
              for c in accepted]
    stats = update_statistics([global_norm(d) for d in deltas], [False] * len(deltas))
    assert all(v is None or math.isfinite(v) for v in stats.values())
    weights = [float(next(iter(c.metric_records.values()))["num-examples"]) for c in accepted]
    for name, cfg in FUZZ_CONFIGS.items():
        updates = Updates(deltas, weights, list(range(len(deltas))), 1, 7, base)
        out = build_defense(cfg).aggregate(updates)
        if out.delta is not None:
            assert all(torch.isfinite(v).all() for v in out.delta.values()), name
