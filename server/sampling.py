"""Seeded choice of the C*K clients of a round, by partition id (node ids are random)."""

from __future__ import annotations

import numpy as np


def sample_partitions(available: list[int], k: int, seed: int, server_round: int) -> list[int]:
    """``k`` distinct partitions drawn uniformly, reproducible from (seed, round)."""
    pool = np.asarray(sorted(available))
    k = min(k, len(pool))
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(p) for p in rng.choice(pool, size=k, replace=False))
