"""Dataset generators and loading.

- `planted_flips`: Gaussian features labelled by a random teacher (linear, or a small random
  MLP), with a fraction of training labels flipped to another class. The flipped ids are
  the planted ground truth for detectors.
- `modular`: every pair (a, b) labelled (a op b) mod p, split at random into train and test:
  the algorithmic task of grokking (Power et al. 2022, arXiv 2201.02177).

A dataset is two DataFrames (train, test) with `example_id`, the inputs, `label` and
`planted`, plus a `meta` dict (generator config, input description, planted ids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from gradscope import artifacts

Dataset = tuple[pd.DataFrame, pd.DataFrame, dict]


def generate_planted_flips(n_train, n_test, n_features, n_classes, teacher, teacher_width, flip_fraction, seed) -> Dataset:
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x = rng.standard_normal((n, n_features)).astype(np.float32)  # (n, d)
    if teacher == "linear":
        scores = x @ rng.standard_normal((n_features, n_classes))
    else:  # a small random tanh MLP: labels that need a nonlinear boundary
        w1 = rng.standard_normal((n_features, teacher_width)) / np.sqrt(n_features)
        w2 = rng.standard_normal((teacher_width, n_classes)) / np.sqrt(teacher_width)
        scores = np.tanh(x @ w1) @ w2
    clean = scores.argmax(axis=1)  # (n,)
    labels = clean.copy()
    n_flip = int(round(flip_fraction * n_train))
    flipped = np.sort(rng.choice(n_train, size=n_flip, replace=False))
    # A flip moves the label to a uniformly chosen *different* class.
    labels[flipped] = (clean[flipped] + rng.integers(1, n_classes, size=n_flip)) % n_classes

    def table(idx):
        return pd.DataFrame({
            "example_id": np.arange(len(idx), dtype=np.int64),
            "x": list(x[idx]),
            "label": labels[idx].astype(np.int64),
            "clean_label": clean[idx].astype(np.int64),
            "planted": np.isin(idx, flipped),
        })

    meta = {
        "input": {"kind": "dense", "dim": n_features, "vocab": 0, "n_classes": n_classes},
        "planted": {"description": "training examples whose label was flipped", "train_ids": flipped.tolist()},
    }
    return table(np.arange(n_train)), table(np.arange(n_train, n)), meta


OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow_mod_inverse(b, p)) % p,
}


def pow_mod_inverse(b: np.ndarray, p: int) -> np.ndarray:
    """b^-1 mod p for prime p, by Fermat: b^(p-2)."""
    return np.array([pow(int(v), p - 2, p) for v in np.ravel(b)], dtype=np.int64).reshape(np.shape(b))


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def generate_modular(p, op, train_fraction, seed) -> Dataset:
    if op == "div" and not _is_prime(p):
        raise ValueError(f"modular division needs a prime p; got p={p}")
    a, b = np.meshgrid(np.arange(p), np.arange(1 if op == "div" else 0, p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    labels = OPS[op](a, b, p)
    order = np.random.default_rng(seed).permutation(len(a))
    n_train = int(round(train_fraction * len(a)))
    if not 0 < n_train < len(a):
        raise ValueError(f"train_fraction={train_fraction} leaves an empty split of {len(a)} pairs")

    def table(idx):
        return pd.DataFrame({
            "example_id": np.arange(len(idx), dtype=np.int64),
            "a": a[idx].astype(np.int64),
            "b": b[idx].astype(np.int64),
            "label": labels[idx].astype(np.int64),
            "planted": np.zeros(len(idx), dtype=bool),
        })

    meta = {"input": {"kind": "tokens", "dim": 2, "vocab": p, "n_classes": p}, "planted": None}
    return table(order[:n_train]), table(order[n_train:]), meta


GENERATORS = {"planted_flips": generate_planted_flips, "modular": generate_modular}


def generate(data_config: dict) -> Dataset:
    """Generate the dataset a data slice ({generator, <generator>: {...}}) describes."""
    name = data_config["generator"]
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(sorted(GENERATORS))}")
    train, test, meta = GENERATORS[name](**data_config[name])
    meta = {"generator": data_config, "n_train": len(train), "n_test": len(test), **meta}
    return train, test, meta


def _columns(df: pd.DataFrame, meta: dict) -> dict:
    types = {"example_id": pa.int64(), "label": pa.int64(), "planted": pa.bool_()}
    if meta["input"]["kind"] == "dense":
        types |= {"x": pa.list_(pa.float32(), meta["input"]["dim"]), "clean_label": pa.int64()}
    else:
        types |= {"a": pa.int64(), "b": pa.int64()}
    return types


def write_dataset(train: pd.DataFrame, test: pd.DataFrame, meta: dict, out_train, out_test, out_meta) -> None:
    for df, path in ((train, out_train), (test, out_test)):
        artifacts.write_parquet(df, path, _columns(df, meta), config=meta["generator"])
    artifacts.write_json(meta, out_meta)


def load_split(folder, split: str) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """Inputs and targets of one split as tensors, plus its table; inputs as the model takes them."""
    df = artifacts.read_parquet(Path(folder) / f"{split}.parquet")
    if "x" in df.columns:
        inputs = torch.from_numpy(np.stack(df["x"].to_numpy()).astype(np.float32))
    else:
        inputs = torch.tensor(df[["a", "b"]].to_numpy(dtype=np.int64))
    return inputs, torch.tensor(df["label"].to_numpy(dtype=np.int64)), df


def load_meta(folder) -> dict:
    return artifacts.read_json(Path(folder) / "meta.json")
