"""The server's reply validation: every malformed kind is rejected with a reason, every honest
update passes; property tests over arbitrary corruptions."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from attacker.malformed import KINDS, kind_for_round, malform
from server.validation import check_reply, expected_from

GLOBAL = {"conv.weight": np.zeros((4, 1, 3, 3), np.float32), "fc.bias": np.zeros(10, np.float32)}
EXPECTED = expected_from(ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                         max_examples=10_000, max_update_bytes=1_000_000)


def reply(arrays: dict, n=100, extra_records: dict | None = None) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                       "metrics": MetricRecord({"num-examples": n, "train_loss": 0.1}),
                       **(extra_records or {})})


def test_an_honest_update_passes():
    assert check_reply(reply({k: v + 0.5 for k, v in GLOBAL.items()}), EXPECTED) is None
    torch_update = ArrayRecord({k: torch.from_numpy(v) for k, v in GLOBAL.items()})
    assert check_reply(RecordDict({"arrays": torch_update,
                                   "metrics": MetricRecord({"num-examples": 5})}), EXPECTED) is None


@pytest.mark.parametrize("kind, reason", [
    ("nan", "non-finite"), ("inf", "non-finite"), ("wrong_shape", "shape"),
    ("wrong_dtype", "dtype"), ("missing_array", "missing arrays"),
    ("absurd_examples", "num-examples"), ("oversized", "exceeds server.max_update_bytes"),
])
def test_every_malformed_kind_is_rejected(kind, reason):
    arrays, n = malform(GLOBAL, 100, kind, oversized_bytes=2_000_000)
    assert reason in check_reply(reply(arrays, n), EXPECTED)


def test_cycle_visits_every_kind():
    assert [kind_for_round("cycle", r) for r in range(1, 8)] == list(KINDS)


@pytest.mark.parametrize("n", [0, -3, 10_001, 2.5, float("nan"), float("inf"), [1, 2]])
def test_bad_num_examples(n):
    assert "num-examples" in check_reply(reply(GLOBAL, n), EXPECTED)


def test_record_structure():
    assert "exactly one ArrayRecord" in check_reply(
        RecordDict({"metrics": MetricRecord({"num-examples": 1})}), EXPECTED)
    two = reply(GLOBAL, 1, {"more": MetricRecord({"x": 1.0})})
    assert "exactly one MetricRecord" in check_reply(two, EXPECTED)
    extra = dict(GLOBAL, surprise=np.zeros(2, np.float32))
    assert "unexpected arrays: surprise" in check_reply(reply(extra), EXPECTED)


values = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(values, min_size=10, max_size=10), n=st.integers(-5, 20_000))
def test_property_accepted_means_finite_and_bounded(data, n):
    arrays = dict(GLOBAL, **{"fc.bias": np.asarray(data, np.float32)})
    reason = check_reply(reply(arrays, n), EXPECTED)
    ok = bool(np.isfinite(arrays["fc.bias"]).all()) and 1 <= n <= 10_000
    assert (reason is None) == ok


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       dtype=st.sampled_from(["float32", "float64", "float16", "int64"]))
def test_property_any_other_shape_or_dtype_is_rejected(shape, dtype):
    arr = np.zeros(shape, dtype)
    reason = check_reply(reply(dict(GLOBAL, **{"fc.bias": arr})), EXPECTED)
    assert (reason is None) == (tuple(shape) == (10,) and dtype == "float32")
