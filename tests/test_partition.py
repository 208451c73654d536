import numpy as np
import pytest

from flbackdoor.config import PartitionConfig
from flbackdoor.data.partition import partition_indices, split_by_group

rng = np.random.default_rng(0)
LABELS = rng.integers(0, 10, size=3000)


def _disjoint_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx), "partitions overlap"
    return len(allidx) == n


def test_iid_sizes_and_shuffled():
    parts = partition_indices(LABELS, PartitionConfig(name="iid"), 10, seed=1)
    assert [len(p) for p in parts] == [300] * 10
    assert _disjoint_cover(parts, len(LABELS))
    assert not np.array_equal(np.sort(parts[0]), np.arange(300)), "iid should not be a contiguous shard"
    again = partition_indices(LABELS, PartitionConfig(name="iid"), 10, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again)), "same seed, same partitions"


@pytest.mark.parametrize("k", [1, 3, 5])
def test_k_label_gives_each_client_exactly_k_labels(k):
    parts = partition_indices(LABELS, PartitionConfig(name="k_label", labels_per_client=k), 10, seed=0)
    assert [len(np.unique(LABELS[p])) for p in parts] == [k] * 10
    assert _disjoint_cover(parts, len(LABELS))  # every class used: k * K >= 10 here


def test_dirichlet_small_alpha_is_skewed():
    cfg = PartitionConfig(name="dirichlet", alpha=0.1, min_partition_size=5)
    parts = partition_indices(LABELS, cfg, 10, seed=0)
    assert _disjoint_cover(parts, len(LABELS))
    assert all(len(p) >= 5 for p in parts)
    top_share = np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])
    assert top_share > 0.4, f"alpha=0.1 should concentrate labels, top share {top_share:.2f}"


def test_natural_gives_one_writer_per_client():
    writers = np.repeat(np.array([f"w{i:02d}" for i in range(6)]), 50)
    labels = rng.integers(0, 10, size=len(writers))
    parts = partition_indices(labels, PartitionConfig(name="natural"), 6, seed=0, groups=writers)
    assert [len(set(writers[p])) for p in parts] == [1] * 6
    assert sorted(writers[p[0]] for p in parts) == [f"w{i:02d}" for i in range(6)]
    with pytest.raises(ValueError, match="distinct"):
        partition_indices(labels, PartitionConfig(name="natural"), 7, seed=0, groups=writers)


def test_split_by_group_holds_out_a_share_of_every_writer():
    groups = np.repeat(np.arange(20), 30)
    train, test = split_by_group(groups, 0.1, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(groups)
    assert np.all(np.bincount(groups[test], minlength=20) == 3)
