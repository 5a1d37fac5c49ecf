"""Tiny data sets in their real formats (torchvision's files, IDX, npz, parquet) and one-run data settings."""

import hashlib
import pickle

import numpy as np

from gradscope import data
from gradscope.config import data_slice, expand_runs, load_config


def settings(generator: str, block: dict) -> dict:
    """The data slice of a one-run config: validated, schema defaults filled in."""
    signals = {"detectors": ["high_loss"]}  # no opposing_groups, whose top_k may exceed a tiny subsample
    runs = expand_runs(load_config({"experiments": {"e": {"data": {"generator": generator, generator: block},
                                                          "signals": signals}}}))
    return data_slice(runs[0].settings)


def make(generator: str, **block):
    return data.generate(settings(generator, block))


def write_and_load(tmp_path, train, test, meta, split="train"):
    paths = [tmp_path / "train.parquet", tmp_path / "test.parquet", tmp_path / "meta.json"]
    data.write_dataset(train, test, meta, *paths)
    return data.load_split(tmp_path, split)


def rows(df) -> np.ndarray:
    return np.stack(df["x"]).astype(np.float64)


def arrays(n, seed, d=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 4, size=n)


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root, monkeypatch, tv, per_batch=2, n_test=3):
    """cifar-10-batches-py as the CIFAR-10 tarball unpacks: five pickled training batches, a test
    batch and batches.meta; the class's md5 list is pointed at these files (it checks them)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images, labels = {}, {}
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        images[name] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels[name] = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels[name], "data": images[name],
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                     "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    cls = tv.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[name, md5(folder / name)] for name in names[:5]])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "batches.meta")})
    train = (np.concatenate([images[n] for n in names[:5]]), sum((labels[n] for n in names[:5]), []))
    return train, (images["test_batch"], labels["test_batch"])


def write_idx(path, array: np.ndarray):
    """An idx file (LeCun's MNIST format): 0, 0, type 0x08 (ubyte), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, train, test):
    """ROOT/MNIST/raw/ as torchvision's MNIST reads it: the four idx files of images (n, H, W) and
    labels (n,), for train = (images, labels) and test likewise. torchvision checks no checksum of
    these files (only that they exist), so a Snakemake job reads them unpatched."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
