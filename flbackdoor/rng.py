"""Named random streams: every seeded draw of the experiment, in one table.

A stream is ``numpy.random.default_rng([seed, salt, *keys])``; the salts are the values the
first version used inline, kept so that the same seed gives the same experiment.
"""

from __future__ import annotations

import numpy as np

SALTS = {
    "roles": 7919,  # who attacks, and the semantic task's target writers
    "aux_train": 104729,  # the attacker's true-distribution images (D_trn)
    "poisoning": 5381,  # which honest partitions an outsider poisons, and which examples
    "blend_pattern": 7411,  # the blend trigger's random image
    "pruning_validation": 31337,  # the server's pruning validation slice
}


# Streams seeded by the experiment's seed alone (as the first version drew them).
UNSALTED = (
    "eval_subset",  # the server's evaluation subset (server.eval_max_samples)
    "train_subset",  # dataset.max_train_samples
    "femnist_writers",  # which writers a federation smaller than FEMNIST gets
    "writer_split",  # FEMNIST's per-writer train/test split
    "aux_victims",  # victim-label images for an attacker that holds none
    "sampling",  # the round's clients, keyed by the round
)


def stream(name: str, seed: int, *keys: int) -> np.random.Generator:
    """The generator of stream ``name`` for ``seed`` (and sub-keys, e.g. a partition id)."""
    if name in UNSALTED:
        return np.random.default_rng([seed, *keys] if keys else seed)
    return np.random.default_rng([seed, SALTS[name], *keys])


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A client's torch seed for one round (batch order, dropout): fixed per (seed, round,
    partition). Python's tuple hash of ints is not salted, so it is the same in every process."""
    return hash((seed, server_round, partition_id)) % (2**31)
