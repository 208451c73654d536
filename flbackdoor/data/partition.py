"""Client partitions through flwr-datasets' partitioners.

The partitioners work on a Hugging Face ``Dataset``; we hand them one holding only the labels,
the natural ids and each row's original index, so the result is a list of index arrays into the
full training set, whatever the partitioner.
"""

from __future__ import annotations

import numpy as np

from flbackdoor.config import PartitionConfig
from flbackdoor.registries import PARTITIONERS
from flbackdoor.rng import stream


class Partitioner:
    """Builds a flwr-datasets partitioner over a table of ``label``, ``idx`` (and, for
    ``natural``, the natural-id column)."""

    natural = False  # partitions by natural ids (FEMNIST writers): needs them in the data

    def build(self, cfg: PartitionConfig, num_partitions: int, seed: int):
        raise NotImplementedError

    def prepare(self, table, seed: int):
        return table


class Iid(Partitioner):
    def prepare(self, table, seed: int):
        # IidPartitioner shards in row order: shuffle first so shards are random draws.
        return table.shuffle(seed=seed).flatten_indices()

    def build(self, cfg: PartitionConfig, num_partitions: int, seed: int):
        from flwr_datasets import partitioner as fp

        return fp.IidPartitioner(num_partitions=num_partitions)


class KLabel(Partitioner):
    def build(self, cfg: PartitionConfig, num_partitions: int, seed: int):
        from flwr_datasets import partitioner as fp

        return fp.PathologicalPartitioner(
            num_partitions=num_partitions, partition_by="label",
            num_classes_per_partition=cfg.labels_per_client,
            class_assignment_mode="first-deterministic", seed=seed)


class Dirichlet(Partitioner):
    def build(self, cfg: PartitionConfig, num_partitions: int, seed: int):
        from flwr_datasets import partitioner as fp

        return fp.DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=cfg.alpha,
            min_partition_size=cfg.min_partition_size, seed=seed)


class Natural(Partitioner):
    natural = True

    def build(self, cfg: PartitionConfig, num_partitions: int, seed: int):
        from flwr_datasets import partitioner as fp

        return fp.NaturalIdPartitioner(partition_by=cfg.natural_key)


for _name, _kind in {"iid": Iid, "k_label": KLabel, "dirichlet": Dirichlet,
                     "natural": Natural}.items():
    PARTITIONERS.register(_name)(_kind())


def partition_indices(
    labels: np.ndarray,
    cfg: PartitionConfig,
    num_partitions: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Indices of each of ``num_partitions`` partitions of a dataset with ``labels``."""
    import datasets

    kind = PARTITIONERS[cfg.name]
    columns = {"label": labels.astype(np.int64), "idx": np.arange(len(labels))}
    if kind.natural:
        if groups is None:
            raise ValueError(f"partition={cfg.name} needs natural ids (e.g. FEMNIST writers)")
        columns[cfg.natural_key] = groups
    part = kind.build(cfg, num_partitions, seed)
    part.dataset = kind.prepare(datasets.Dataset.from_dict(columns), seed)
    if kind.natural and part.num_partitions < num_partitions:
        raise ValueError(
            f"num_clients={num_partitions} but the data has only {part.num_partitions} "
            f"distinct {cfg.natural_key} values"
        )
    return [np.asarray(part.load_partition(i)["idx"], dtype=np.int64) for i in range(num_partitions)]


def split_by_group(groups: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group (per-writer) train/test split: each group keeps ``test_fraction`` for test."""
    rng = stream("writer_split", seed)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1], True])
    train, test = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        members = rng.permutation(order[lo:hi])
        n_test = int(round(test_fraction * len(members)))
        n_test = min(max(n_test, 1), len(members) - 1) if len(members) > 1 else 0
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
