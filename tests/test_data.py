"""The real loaders: torchvision (MNIST on the shared data, CIFAR-10 on generated files) and
Hugging Face datasets (FEMNIST parquet: generated shards, and one real shard when present)."""

import io
import pickle

import numpy as np
import pytest

from flbackdoor.config import DataConfig, DatasetConfig, ExperimentConfig, PartitionConfig
from flbackdoor.data.cache import load_meta, load_partition, load_test, prepare
from flbackdoor.data.sources import DataNotFoundError, load_femnist, load_torchvision

from conftest import SHARED_DATA, requires_shared_data


@requires_shared_data
def test_mnist_cache_from_shared_data(tmp_path):
    cfg = ExperimentConfig(num_clients=4, clients_per_round=4,
                           data=DataConfig(root=str(SHARED_DATA), cache_dir=str(tmp_path)),
                           partition=PartitionConfig(name="k_label", labels_per_client=2))
    folder = prepare(cfg)
    assert prepare(cfg) == folder, "a second prepare reuses the cache"
    meta = load_meta(folder)
    # First-deterministic K-label with 4 clients uses some classes only: the rest is unused.
    assert 0 < sum(meta["sizes"]) <= 60000 and meta["test_size"] == 10000
    x, y = load_partition(folder, 1)
    assert x.shape == (meta["sizes"][1], 1, 28, 28) and x.dtype == np.uint8
    assert len(np.unique(y)) == 2
    tx, ty = load_test(folder)
    assert tx.shape == (10000, 1, 28, 28) and set(np.unique(ty)) == set(range(10))
    with pytest.raises(ValueError, match="out of range"):
        load_partition(folder, 4)


def _write_cifar(root, n_per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n_per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))


def test_cifar10_through_torchvision_on_generated_files(tmp_path, monkeypatch):
    # Generated files cannot match torchvision's md5 sums: only that check is bypassed here.
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    _write_cifar(tmp_path)
    train, test = load_torchvision("cifar10", DataConfig(root=str(tmp_path), download=False))
    assert train.x.shape == (100, 3, 32, 32) and test.x.shape == (20, 3, 32, 32)
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64


def test_missing_torchvision_data_names_the_files(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"cifar10 not found: expected data_batch_1"):
        load_torchvision("cifar10", DataConfig(root=str(tmp_path), download=False))


def _write_femnist_parquet(folder, writers=4, per_writer=12):
    import datasets
    from PIL import Image

    names = [str(i) for i in range(10)] + [chr(c) for c in range(65, 91)] + [chr(c) for c in range(97, 123)]
    rows = {"image": [], "writer_id": [], "character": []}
    rng = np.random.default_rng(0)
    for w in range(writers):
        for i in range(per_writer):
            img = np.full((28, 28), 255, np.uint8)
            img[5:20, 10:14] = 0  # dark ink on white, as LEAF ships it
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            rows["image"].append({"bytes": buf.getvalue(), "path": None})
            rows["writer_id"].append(f"f{w:04d}_00")
            rows["character"].append(int(rng.integers(0, 10)) if i % 4 else 10 + w)  # some letters
    feats = datasets.Features({"image": datasets.Image(), "writer_id": datasets.Value("string"),
                               "character": datasets.ClassLabel(names=names)})
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(folder / "train-00000.parquet"))


def test_femnist_parquet_digits_only_and_per_writer_split(tmp_path):
    _write_femnist_parquet(tmp_path / "data" / "femnist")
    data = DataConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), download=False)
    full = load_femnist(DatasetConfig(name="femnist", invert=True), data)
    assert len(full.y) == 4 * 9 and full.y.max() < 10, "letters dropped with digits_only"
    assert full.x.shape[1:] == (1, 28, 28) and full.x[0, 0, 0, 0] == 255
    cfg = ExperimentConfig(num_clients=4, clients_per_round=2, data=data,
                           dataset=DatasetConfig(name="femnist", invert=True, test_fraction=0.25),
                           partition=PartitionConfig(name="natural"))
    folder = prepare(cfg)
    meta = load_meta(folder)
    assert sorted(meta["natural_ids"]) == [f"f{w:04d}_00" for w in range(4)]
    assert meta["sizes"] == [7] * 4 and meta["test_size"] == 8  # 9 digits each: 2 held out


def test_femnist_missing_offline_is_one_clear_error(tmp_path):
    data = DataConfig(root=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError, match="femnist not found"):
        load_femnist(DatasetConfig(name="femnist"), data)


@pytest.mark.skipif(not (SHARED_DATA / "femnist").is_dir(), reason="shared FEMNIST absent")
def test_real_femnist_shard(tmp_path):
    shard = sorted((SHARED_DATA / "femnist").glob("*.parquet"))[0]
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / shard.name).symlink_to(shard)
    split = load_femnist(DatasetConfig(name="femnist", source=str(tmp_path / "one")),
                         DataConfig(root=str(SHARED_DATA), download=False))
    assert len(split.y) > 10000 and set(np.unique(split.y)) == set(range(10))
    assert split.x.mean() > 200, "LEAF FEMNIST is white background (inverted by the normalizer)"
    assert len(np.unique(split.groups)) > 100
