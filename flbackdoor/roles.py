"""Who attacks and whose data is targeted: a pure, seeded function of the experiment and the
partitions' label counts, so the launcher (node configs), the ClientApps (roles in simulation)
and the ServerApp (backdoor test set) all derive the same answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flbackdoor.config import ExperimentConfig
from flbackdoor.registries import TASKS
from flbackdoor.rng import stream


@dataclass(frozen=True)
class Roles:
    malicious: tuple[int, ...] = ()  # partition ids of malicious nodes, in attacker-index order
    targets: tuple[int, ...] = ()  # semantic task: the target writers' partitions (benign)

    def role(self, partition_id: int) -> str:
        return "malicious" if partition_id in self.malicious else "benign"

    def attacker_index(self, partition_id: int) -> int:
        return self.malicious.index(partition_id)


def roles_for(cfg: ExperimentConfig, cache: Path) -> Roles:
    """The roles of ``cfg``'s federation, from its partition cache's label counts."""
    from flbackdoor.data.cache import load_meta

    return assign_roles(cfg, load_meta(cache)["label_counts"])


def assign_roles(cfg: ExperimentConfig, label_counts: list[list[int]]) -> Roles:
    a = cfg.attack
    if a.num_malicious == 0:
        return Roles()
    rng = stream("roles", cfg.seed)
    counts = np.asarray(label_counts)
    has_source = np.flatnonzero(counts[:, a.source_label] > 0)
    targets: np.ndarray = np.array([], dtype=int)
    if a.backdoor and TASKS[a.task].uses_target_writers:
        if len(has_source) < a.num_backdoor_tasks + a.num_malicious:
            raise ValueError(
                f"attack.num_backdoor_tasks={a.num_backdoor_tasks} target writers plus "
                f"{a.num_malicious} attackers need that many partitions holding label "
                f"{a.source_label}; only {len(has_source)} do")
        targets = np.sort(rng.choice(has_source, a.num_backdoor_tasks, replace=False))
        pool = np.setdiff1d(np.arange(len(counts)), targets)
    else:
        # Pixel triggers poison the attacker's own images of the victim label: prefer holders.
        pool = has_source if len(has_source) >= a.num_malicious else np.arange(len(counts))
    if len(pool) < a.num_malicious:
        raise ValueError(f"attack.num_malicious={a.num_malicious} exceeds the {len(pool)} "
                         f"partitions that can be attackers")
    malicious = rng.choice(pool, a.num_malicious, replace=False)
    return Roles(tuple(int(p) for p in malicious), tuple(int(t) for t in targets))
