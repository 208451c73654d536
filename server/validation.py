"""Every reply is checked before it can touch the global model.

A reply must hold exactly one ArrayRecord whose arrays have the global model's names, shapes
and dtypes, with finite values only, and one MetricRecord with an integer ``num-examples`` in
[1, max_examples]; its arrays may not exceed ``max_update_bytes``. The first failed check is
the rejection reason (logged and counted in ``metrics.jsonl``); nothing of a rejected reply
reaches aggregation, statistics or any wrapped strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, RecordDict

NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class Expected:
    """What a valid update looks like: the global model's arrays, and the bounds."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    max_examples: int
    max_update_bytes: int


def expected_from(global_arrays: ArrayRecord, max_examples: int,
                  max_update_bytes: int) -> Expected:
    return Expected({k: tuple(v.shape) for k, v in global_arrays.items()},
                    {k: str(v.dtype) for k, v in global_arrays.items()},
                    max_examples, max_update_bytes)


def check_reply(content: RecordDict, expected: Expected) -> str | None:
    """None when the reply may be aggregated, else why not (one line)."""
    arrays = list(content.array_records.values())
    metrics = list(content.metric_records.values())
    if len(arrays) != 1:
        return f"expected exactly one ArrayRecord, got {len(arrays)}"
    if len(metrics) != 1:
        return f"expected exactly one MetricRecord, got {len(metrics)}"
    record = arrays[0]
    size = sum(len(a.data) for a in record.values())
    if size > expected.max_update_bytes:
        return f"update of {size} bytes exceeds server.max_update_bytes={expected.max_update_bytes}"
    missing = sorted(set(expected.shapes) - set(record.keys()))
    if missing:
        return f"missing arrays: {', '.join(missing)}"
    extra = sorted(set(record.keys()) - set(expected.shapes))
    if extra:
        return f"unexpected arrays: {', '.join(extra)}"
    for name, array in record.items():
        if tuple(array.shape) != expected.shapes[name]:
            return f"{name}: shape {tuple(array.shape)} != {expected.shapes[name]}"
        if array.dtype != expected.dtypes[name]:
            return f"{name}: dtype {array.dtype} != {expected.dtypes[name]}"
        try:
            values = array.numpy()
        except Exception as err:  # bytes that do not decode as the declared array
            return f"{name}: undecodable array ({type(err).__name__})"
        if not np.isfinite(values).all():
            return f"{name}: non-finite values"
    n = metrics[0].get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, (int, float)) or isinstance(n, list):
        return f"{NUM_EXAMPLES} missing or not a number: {n!r}"
    if not math.isfinite(n) or n != int(n) or not 1 <= n <= expected.max_examples:
        return f"{NUM_EXAMPLES}={n} outside 1..{expected.max_examples}"
    return None
