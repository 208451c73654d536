"""A node's identity and data, from its Context.

In deployment a SuperNode is started with ``--node-config 'partition-id=3 num-partitions=10
role="benign"'``; in simulation Flower sets ``partition-id`` and ``num-partitions`` itself and
the role follows from the experiment (``flbackdoor.roles``). A node on another host names its own
data folders with ``data-root="..."`` and ``cache-dir="..."`` in its node config (the
experiment's paths are the submitting machine's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from flwr.app import Context

from flbackdoor.config import ExperimentConfig
from flbackdoor.data.cache import load_partition, prepare

ROLES = ("benign", "malicious")


@dataclass(frozen=True)
class NodeIdentity:
    partition_id: int
    role: str


def local_paths(context: Context, cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with this host's data folders, where its node config names them."""
    nc = context.node_config
    data = dataclasses.replace(cfg.data, root=str(nc.get("data-root", cfg.data.root)),
                               cache_dir=str(nc.get("cache-dir", cfg.data.cache_dir)))
    return dataclasses.replace(cfg, data=data)


def identity(context: Context, cfg: ExperimentConfig) -> NodeIdentity:
    nc = context.node_config
    if "partition-id" not in nc:
        raise ValueError("node_config lacks partition-id (start the SuperNode with "
                         "--node-config 'partition-id=<i> num-partitions=<K>')")
    pid = int(nc["partition-id"])
    k = int(nc.get("num-partitions", cfg.num_clients))
    if k != cfg.num_clients:
        raise ValueError(f"node_config num-partitions={k} but the experiment has "
                         f"num_clients={cfg.num_clients}")
    if "role" in nc:
        role = str(nc["role"])
    else:  # simulation: the experiment decides, as the launcher does for real nodes
        from flbackdoor.roles import roles_for

        role = roles_for(cfg, prepare(cfg)).role(pid)
    if role not in ROLES:
        raise ValueError(f"node_config role={role!r} is not one of {', '.join(ROLES)}")
    return NodeIdentity(pid, role)


def partition_data(cfg: ExperimentConfig, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """This node's training data; ``prepare`` builds the cache first on a host that has none."""
    return load_partition(prepare(cfg), partition_id)


def training_data(cfg: ExperimentConfig, partition_id: int, x: np.ndarray, y: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An honest node's data as it holds it: its partition, poisoned when the outsider chose
    it (``poisoning``), and the poisoned indices (ground truth, only for scoring isolation)."""
    if not cfg.poisoning.enabled:
        return x, y, np.zeros(0, np.int64)
    from attacker.poisoning import poison_partition
    from flbackdoor.roles import roles_for

    return poison_partition(cfg, partition_id, x, y, roles_for(cfg, prepare(cfg)).malicious)
