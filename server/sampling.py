"""Which partitions train in a round: seeded sampling that enforces the attacker schedule.

Sampling is by partition id (Flower's node ids are random), from a generator seeded by
(seed, round), so a run's client sequence is reproducible in every federation mode.

Schedules (Sun et al. section 2, readings in DESIGN.md):
- ``none``: only benign partitions are sampled.
- ``fixed_frequency`` f: one attacker in the rounds with (round - 1) % f == f // 2 (the
  reference's 0-based ``round % f == f // 2``), C*K - 1 benign partitions beside it; benign
  partitions only in the other rounds.
- ``random``: C*K partitions uniformly from all K, so the number of attackers in a round is
  hypergeometric.

``attack.stop_round`` n > 0 ends every schedule after the experiment's n-th round (counted from
``experiment_start``, the round pretraining or a loaded checkpoint ended with): the rounds
after it are benign only, so the backdoor's durability can be measured (Neurotoxin, Zhang et
al. 2022; Chameleon, Dai & Li 2023; ``flbackdoor.results.backdoor_lifespan``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flbackdoor.rng import stream


def _rng(seed: int, server_round: int) -> np.random.Generator:
    return stream("sampling", seed, server_round)


def sample_partitions(available: list[int], k: int, seed: int, server_round: int) -> list[int]:
    """``k`` distinct partitions drawn uniformly, reproducible from (seed, round)."""
    pool = np.asarray(sorted(available))
    k = min(k, len(pool))
    return sorted(int(p) for p in _rng(seed, server_round).choice(pool, size=k, replace=False))


def is_attack_round(server_round: int, frequency: int) -> bool:
    return (server_round - 1) % frequency == frequency // 2


def attack_stopped(server_round: int, stop_round: int, experiment_start: int = 0) -> bool:
    """Whether ``server_round`` comes after the experiment's ``stop_round``-th round."""
    return stop_round > 0 and server_round - experiment_start > stop_round


def plan_round(server_round: int, benign: list[int], malicious: list[int], k: int,
               attack: Any, seed: int, attacks_on: bool = True,
               experiment_start: int = 0) -> list[int]:
    """The partitions that train in ``server_round``."""
    if (not attacks_on or attack.schedule == "none" or not malicious
            or attack_stopped(server_round, attack.stop_round, experiment_start)):
        return sample_partitions(benign, k, seed, server_round)
    if attack.schedule == "random":
        return sample_partitions(benign + malicious, k, seed, server_round)
    if not is_attack_round(server_round, attack.frequency):
        return sample_partitions(benign, k, seed, server_round)
    rng = _rng(seed, server_round)
    attacker = int(rng.choice(sorted(malicious)))
    others = sample_partitions(benign, k - 1, seed, server_round)
    return sorted([attacker, *others])
