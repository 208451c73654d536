"""Malformed updates: what a hostile or broken node may send instead of a model update, so the
server's reply validation is exercised by a real malicious process (``attack=malformed``).

``kind=cycle`` sends a different kind every round, in the order of ``KINDS``.
"""

from __future__ import annotations

import numpy as np

KINDS = ("nan", "inf", "wrong_shape", "wrong_dtype", "missing_array", "absurd_examples",
         "oversized")


def kind_for_round(kind: str, server_round: int) -> str:
    return KINDS[(server_round - 1) % len(KINDS)] if kind == "cycle" else kind


def malform(arrays: dict[str, np.ndarray], num_examples: int, kind: str,
            oversized_bytes: int) -> tuple[dict[str, np.ndarray], float]:
    """A copy of an honest update (``arrays``, ``num_examples``) broken in one way."""
    out = {k: np.array(v) for k, v in arrays.items()}
    first = next(iter(out))
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
        num_examples = 10**15
    elif kind == "oversized":
        out["padding"] = np.zeros(oversized_bytes, np.uint8)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; one of {', '.join(KINDS)}, cycle")
    return out, num_examples
