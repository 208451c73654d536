"""Every reply is checked against the whole train-reply contract before anything else touches it.

A valid reply holds exactly two records: ``arrays`` (an ArrayRecord) and ``metrics`` (a
MetricRecord), nothing else. The arrays have the global model's names; each one's declared and
decoded shape and dtype are the global array's (the bytes, not only the header, are read: bytes
of another shape would crash or broadcast later); every value is finite; together they are at
most ``max_update_bytes``; the update ``w_k - w_t`` has an L2 norm of at most
``max_update_norm`` (computed in float64, so the statistics after it cannot overflow). The
metrics carry exactly the train-reply keys (``num-examples``, ``train_loss``, and optionally the
whole client-side isolation report), each a finite number of its type: ``num-examples`` an
integer in [1, max_examples], the isolation counts integers >= 0 with the isolated poisoned
ones among the isolated. The first failed check is the rejection reason (one line, logged and in
``metrics.jsonl``); nothing of a rejected reply reaches aggregation, statistics or any defense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from flbackdoor import protocol as P

REQUIRED_METRICS = frozenset({P.NUM_EXAMPLES, P.TRAIN_LOSS})
# Client-side ABL's report: all three keys or none.
ISOLATION_METRICS = frozenset({P.ISOLATED_COUNT, P.ISOLATED_POISONED, P.POISONED_COUNT})
COUNT_METRICS = frozenset({P.NUM_EXAMPLES}) | ISOLATION_METRICS


@dataclass(frozen=True)
class Expected:
    """What a valid update looks like: the global model's arrays, and the bounds."""

    arrays: dict[str, np.ndarray]  # w_t
    max_examples: int
    max_update_bytes: int
    max_update_norm: float


def expected_from(global_arrays: ArrayRecord, max_examples: int, max_update_bytes: int,
                  max_update_norm: float = math.inf) -> Expected:
    return Expected({k: v.numpy() for k, v in global_arrays.items()}, max_examples,
                    max_update_bytes, max_update_norm)


def check_reply(content: RecordDict, expected: Expected,
                max_examples: int | None = None) -> str | None:
    """None when the reply may be aggregated, else why not (one line). ``max_examples``: this
    partition's bound on ``num-examples`` where the server knows it (``server.num_examples``)."""
    try:
        return _check(content, expected, max_examples or expected.max_examples)
    except Exception as err:  # a reply no check foresaw must still be a rejection, not a crash
        return f"unreadable reply ({type(err).__name__}: {str(err)[:120]})"


def _check(content: RecordDict, expected: Expected, max_examples: int) -> str | None:
    names = sorted(content.keys())
    if names != sorted((P.ARRAYS, P.METRICS)):
        return f"records {names} are not exactly {P.ARRAYS!r} and {P.METRICS!r}"
    record, metrics = content[P.ARRAYS], content[P.METRICS]
    if not isinstance(record, ArrayRecord) or not isinstance(metrics, MetricRecord):
        return (f"record types {type(record).__name__}, {type(metrics).__name__} are not "
                "ArrayRecord, MetricRecord")
    return _check_arrays(record, expected) or _check_metrics(metrics, max_examples)


def _check_arrays(record: ArrayRecord, expected: Expected) -> str | None:
    size = sum(len(a.data) for a in record.values())
    if size > expected.max_update_bytes:
        return f"update of {size} bytes exceeds server.max_update_bytes={expected.max_update_bytes}"
    missing = sorted(set(expected.arrays) - set(record.keys()))
    if missing:
        return f"missing arrays: {', '.join(missing)}"
    extra = sorted(set(record.keys()) - set(expected.arrays))
    if extra:
        return f"unexpected arrays: {', '.join(extra)}"
    squared = 0.0
    for name, array in record.items():
        want = expected.arrays[name]
        if tuple(array.shape) != want.shape:
            return f"{name}: shape {tuple(array.shape)} != {want.shape}"
        if array.dtype != str(want.dtype):
            return f"{name}: dtype {array.dtype} != {want.dtype}"
        try:
            values = array.numpy()
        except Exception as err:  # bytes that do not decode as an array
            return f"{name}: undecodable array ({type(err).__name__})"
        if values.shape != want.shape or values.dtype != want.dtype:
            return (f"{name}: bytes decode to {values.dtype} {values.shape}, declared "
                    f"{array.dtype} {tuple(array.shape)}")
        if not np.isfinite(values).all():
            return f"{name}: non-finite values"
        squared += float(np.sum(np.square(values.astype(np.float64) - want)))
    norm = math.sqrt(squared)
    if not norm <= expected.max_update_norm:
        return f"update norm {norm:.3g} exceeds server.max_update_norm={expected.max_update_norm:g}"
    return None


def _check_metrics(metrics: MetricRecord, max_examples: int) -> str | None:
    keys = set(metrics.keys())
    missing = sorted(REQUIRED_METRICS - keys)
    if missing:
        return f"missing metrics: {', '.join(missing)}"
    extra = keys - REQUIRED_METRICS
    if extra and extra != ISOLATION_METRICS:
        unknown = sorted(extra - ISOLATION_METRICS)
        return (f"unexpected metrics: {', '.join(unknown)}" if unknown else
                f"partial isolation report: {', '.join(sorted(extra))} (all of "
                f"{', '.join(sorted(ISOLATION_METRICS))} or none)")
    for key in sorted(keys):
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"metric {key}={value!r} is not a number"
        if not math.isfinite(value):
            return f"metric {key}={value} is not finite"
        if key in COUNT_METRICS and value != int(value):
            return f"metric {key}={value} is not a whole number"
    n = metrics[P.NUM_EXAMPLES]
    if not 1 <= n <= max_examples:
        return f"{P.NUM_EXAMPLES}={n} outside 1..{max_examples}"
    if extra:
        isolated, hits = metrics[P.ISOLATED_COUNT], metrics[P.ISOLATED_POISONED]
        if min(isolated, hits, metrics[P.POISONED_COUNT]) < 0 or hits > isolated:
            return (f"isolation report {P.ISOLATED_COUNT}={isolated}, {P.ISOLATED_POISONED}="
                    f"{hits}, {P.POISONED_COUNT}={metrics[P.POISONED_COUNT]} is impossible")
    return None
