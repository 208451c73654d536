"""Partition caches: the federation's data written once as memory-mapped arrays.

``prepare`` (run by ``flbackdoor`` before any process starts, and by a client that finds no
cache, e.g. on another host) loads the dataset through its real loader, partitions it and writes
one folder keyed by everything that shapes the partitions:

    <data.cache_dir>/<dataset>-<key>/
        train_x.npy  train_y.npy   all partitions back to back, partition p at offsets[p:p+2]
        offsets.npy                (K + 1,)
        test_x.npy   test_y.npy    the held-out set the server evaluates on
        meta.json

A client then reads its partition in milliseconds with ``np.load(mmap_mode="r")`` instead of
importing torchvision or datasets on every message.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from flbackdoor.config import ExperimentConfig
from flbackdoor.data.sources import DataNotFoundError, Split, femnist_source, load_femnist
from flbackdoor.registries import DATASETS, PARTITIONERS
from flbackdoor.rng import stream

__all__ = ["DataNotFoundError", "cache_dir", "prepare", "load_partition", "load_train", "load_test",
           "load_meta"]


def cache_key(cfg: ExperimentConfig) -> str:
    shaping = {
        "dataset": asdict(cfg.dataset),
        "partition": asdict(cfg.partition),
        "num_clients": cfg.num_clients,
        "seed": cfg.seed,
        "format": 2,
    }
    source = DATASETS[cfg.dataset.name].fingerprint(cfg.dataset, cfg.data)
    if source is not None:
        shaping["source"] = source
    blob = json.dumps(shaping, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.data.cache_dir) / f"{cfg.dataset.name}-{cache_key(cfg)}"


def _atomic_save(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write into a temp folder, then rename: readers see a whole cache or none."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _femnist_source_split(cfg: ExperimentConfig) -> Split:
    """Decoded FEMNIST (about 30 s for 400k PNGs), itself cached once per source."""
    src = femnist_source(cfg.dataset, cfg.data)
    digest = hashlib.sha256(f"{src}|{cfg.dataset.digits_only}".encode()).hexdigest()[:16]
    folder = Path(cfg.data.cache_dir) / f"femnist-source-{digest}"
    if not (folder / "meta.json").exists():
        split = load_femnist(cfg.dataset, cfg.data)
        writers, codes = np.unique(split.groups, return_inverse=True)
        _atomic_save(folder, {"x": split.x, "y": split.y, "writer": codes.astype(np.int32)},
                     {"source": src, "writers": writers.tolist()})
    meta = json.loads((folder / "meta.json").read_text())
    writers = np.asarray(meta["writers"])
    codes = np.load(folder / "writer.npy", mmap_mode="r")
    return Split(np.load(folder / "x.npy", mmap_mode="r"), np.load(folder / "y.npy"), writers[codes])


def _train_test(cfg: ExperimentConfig) -> tuple[Split, Split]:
    from flbackdoor.data.partition import split_by_group

    source = DATASETS[cfg.dataset.name]
    if not source.has_writers:
        return source.splits(cfg.dataset, cfg.data)
    full = _femnist_source_split(cfg)
    groups = full.groups
    if PARTITIONERS[cfg.partition.name].natural:
        # A seeded subset of writers when the federation has fewer clients than writers.
        writers = np.unique(groups)
        if cfg.num_clients > len(writers):
            raise DataNotFoundError(
                f"num_clients={cfg.num_clients} but FEMNIST here has {len(writers)} writers"
            )
        chosen = stream("femnist_writers", cfg.seed).choice(writers, cfg.num_clients, replace=False)
        rows = np.flatnonzero(np.isin(groups, chosen))
    else:
        rows = np.arange(len(groups))
    train_rows, test_rows = split_by_group(groups[rows], cfg.dataset.test_fraction, cfg.seed)
    train_rows, test_rows = rows[train_rows], rows[test_rows]
    pick = lambda r: Split(np.asarray(full.x[r]), full.y[r], groups[r])  # noqa: E731
    return pick(train_rows), pick(test_rows)


def prepare(cfg: ExperimentConfig) -> Path:
    """Build the partition cache for ``cfg`` unless it exists; return its folder."""
    from flbackdoor.data.partition import partition_indices

    folder = cache_dir(cfg)
    if (folder / "meta.json").exists():
        return folder
    train, test = _train_test(cfg)
    limit = cfg.dataset.max_train_samples
    if 0 < limit < len(train.y):
        keep = np.sort(stream("train_subset", cfg.seed).choice(len(train.y), limit, replace=False))
        groups = train.groups[keep] if train.groups is not None else None
        train = Split(np.asarray(train.x[keep]), train.y[keep], groups)
    parts = partition_indices(train.y, cfg.partition, cfg.num_clients, cfg.seed, train.groups)
    order = np.concatenate(parts)
    offsets = np.cumsum([0] + [len(p) for p in parts])
    meta = {
        "dataset": cfg.dataset.name,
        "num_partitions": cfg.num_clients,
        "sizes": [len(p) for p in parts],
        "label_counts": [np.bincount(train.y[p], minlength=cfg.dataset.num_classes).tolist()
                         for p in parts],
        "test_size": len(test.y),
    }
    if train.groups is not None and PARTITIONERS[cfg.partition.name].natural:
        meta["natural_ids"] = [str(train.groups[p[0]]) if len(p) else "" for p in parts]
    _atomic_save(
        folder,
        {"train_x": train.x[order], "train_y": train.y[order], "offsets": offsets,
         "test_x": test.x, "test_y": test.y},
        meta,
    )
    return folder


@functools.lru_cache(maxsize=8)
def load_meta(folder: Path) -> dict:
    """The cache's metadata (read-only; kept per process, as simulation workers answer many
    nodes' messages)."""
    return json.loads((folder / "meta.json").read_text())


def load_partition(folder: Path, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.load(folder / "offsets.npy")
    if not 0 <= partition_id < len(offsets) - 1:
        raise ValueError(f"partition-id {partition_id} out of range 0..{len(offsets) - 2}")
    lo, hi = int(offsets[partition_id]), int(offsets[partition_id + 1])
    x = np.load(folder / "train_x.npy", mmap_mode="r")[lo:hi]
    y = np.load(folder / "train_y.npy", mmap_mode="r")[lo:hi]
    return x, y


def load_train(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole training set, every partition back to back."""
    return np.load(folder / "train_x.npy", mmap_mode="r"), np.load(folder / "train_y.npy", mmap_mode="r")


def load_test(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "test_x.npy", mmap_mode="r"), np.load(folder / "test_y.npy", mmap_mode="r")
