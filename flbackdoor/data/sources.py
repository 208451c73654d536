"""Whole datasets as uint8 arrays, from their real loaders.

MNIST, Fashion-MNIST and CIFAR-10 come through torchvision (downloaded when missing and
``data.download`` is on); FEMNIST through Hugging Face ``datasets``, from the hub id
``flwrlabs/femnist`` or a local folder of parquet shards with the same schema. A dataset that is
neither on disk nor downloadable raises :class:`DataNotFoundError` naming the files expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flbackdoor.config import DataConfig, DatasetConfig
from flbackdoor.registries import DATASETS

FEMNIST_HUB_ID = "flwrlabs/femnist"

_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw",
                      ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
}


class DataNotFoundError(FileNotFoundError):
    """A dataset that is not on disk and could not be downloaded."""


@dataclass
class Split:
    x: np.ndarray  # (N, C, H, W) uint8
    y: np.ndarray  # (N,) int64
    groups: np.ndarray | None = None  # (N,) natural ids, e.g. FEMNIST writer ids


def _missing(folder: Path, names: list[str]) -> list[str]:
    # torchvision accepts MNIST's idx files uncompressed or gzipped.
    return [n for n in names if not (folder / n).exists() and not (folder / f"{n}.gz").exists()]


def load_torchvision(name: str, data: DataConfig) -> tuple[Split, Split]:
    """Train and test splits of a torchvision dataset under ``data.root``."""
    cls_name, sub, files = _TORCHVISION[name]
    root = Path(data.root)
    missing = _missing(root / sub, files)
    if missing and not data.download:
        raise DataNotFoundError(
            f"{name} not found: expected {', '.join(missing)} in {root / sub} "
            f"(set data.root to the folder holding {sub.split('/')[0]}/, or data.download=true)"
        )
    import torchvision.datasets as tvd  # heavy: only when (re)building a cache

    cls = getattr(tvd, cls_name)
    try:
        train, test = (cls(str(root), train=t, download=bool(missing)) for t in (True, False))
    except Exception as err:  # torchvision raises RuntimeError/URLError when offline
        why = (f"expected {', '.join(missing)} and the download failed" if missing
               else "the files are there but could not be read")
        raise DataNotFoundError(
            f"{name} not found in {root / sub}: {why}: {err}".replace("\n", " ")) from err
    return _from_torchvision(train), _from_torchvision(test)


def _from_torchvision(ds) -> Split:
    x = np.asarray(ds.data, dtype=np.uint8)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # NHWC -> NCHW for CIFAR
    return Split(np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64))


def femnist_source(dataset: DatasetConfig, data: DataConfig) -> str:
    """Where FEMNIST comes from: an explicit source, the copy under data.root, or the hub."""
    if dataset.source:
        path = Path(dataset.source)
        return str(path if path.is_absolute() or not (Path(data.root) / path).exists()
                   else Path(data.root) / path)
    local = Path(data.root) / "femnist"
    return str(local) if local.is_dir() else FEMNIST_HUB_ID


def load_femnist(dataset: DatasetConfig, data: DataConfig) -> Split:
    """All FEMNIST images with their writer ids (one split; per-writer test split is ours)."""
    import datasets  # heavy: only when (re)building a cache

    source = femnist_source(dataset, data)
    try:
        if Path(source).is_dir():
            shards = sorted(str(p) for p in Path(source).glob("*.parquet"))
            if not shards:
                raise DataNotFoundError(f"no *.parquet shards in {source}")
            ds = datasets.load_dataset("parquet", data_files=shards, split="train")
        elif not data.download:
            raise DataNotFoundError(f"{source} is not a folder and data.download=false")
        else:
            ds = datasets.load_dataset(source, split="train")
    except DataNotFoundError as err:
        raise DataNotFoundError(
            f"femnist not found: {err}; expected parquet shards in "
            f"{Path(data.root) / 'femnist'} or hub access to {FEMNIST_HUB_ID}"
        ) from err
    except Exception as err:
        raise DataNotFoundError(
            f"femnist not found: expected parquet shards in {Path(data.root) / 'femnist'} "
            f"or hub access to {FEMNIST_HUB_ID} ({type(err).__name__}: {err})".replace("\n", " ")
        ) from err
    labels = np.asarray(ds["character"], dtype=np.int64)
    keep = np.flatnonzero(labels < 10) if dataset.digits_only else np.arange(len(labels))
    ds = ds.select(keep) if len(keep) < len(labels) else ds
    images = np.stack([np.asarray(im.convert("L"), dtype=np.uint8) for im in ds["image"]])
    writers = np.asarray(ds["writer_id"])
    return Split(images[:, None], labels[keep], writers)


class TorchvisionSource:
    """A torchvision dataset with its own train and test splits."""

    has_writers = False  # no natural ids: every partitioner but ``natural``

    def __init__(self, name: str) -> None:
        self.name = name

    def fingerprint(self, dataset: DatasetConfig, data: DataConfig) -> str | None:
        return None

    def splits(self, dataset: DatasetConfig, data: DataConfig) -> tuple[Split, Split]:
        return load_torchvision(self.name, data)


class FemnistSource:
    """FEMNIST: one split with writer ids; the per-writer test split is made from it."""

    has_writers = True

    def fingerprint(self, dataset: DatasetConfig, data: DataConfig) -> str | None:
        return femnist_source(dataset, data)

    def load(self, dataset: DatasetConfig, data: DataConfig) -> Split:
        return load_femnist(dataset, data)


for _name in _TORCHVISION:
    DATASETS.register(_name)(TorchvisionSource(_name))
DATASETS.register("femnist")(FemnistSource())
