"""Dataset I/O: a dataset's files (`dataset_files`), written (`write_dataset`) and read back as the
model takes them (`load_split`, `split_tensors`, `load_meta`), and `load`, a data block as tensors for
your own loop."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gradscope import artifacts, layout, tables
from gradscope.data.dispatch import generate


def write_dataset(train: pd.DataFrame, test: pd.DataFrame, meta: dict, out_train, out_test, out_meta) -> None:
    for split, df, path in (("train", train, out_train), ("test", test, out_test)):
        artifacts.write_parquet(df, path, tables.dataset_columns(df, meta), table=f"dataset_{split}",
                                config=meta["generator"])
    artifacts.write_json(meta, out_meta)


def dataset_files(dataset) -> dict[str, Path]:
    """The train, test and meta files of one dataset. `dataset` is the mapping a rule declares
    ({"train": ..., "test": ..., "meta": ...}: the workflow's stages read exactly those files) or,
    for library callers, the dataset's folder, its files named as gradscope.layout names them."""
    if isinstance(dataset, Mapping):
        return {split: Path(dataset[split]) for split in layout.DATASET}
    return {split: Path(dataset) / Path(pattern).name for split, pattern in layout.DATASET.items()}


def load_split(dataset, split: str) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """Inputs and targets of one split ("train" or "test") as tensors, plus its table; inputs as the model takes them.

    dataset: the dataset's files or folder (`dataset_files`). Dense inputs are (n, *shape) where the
    meta file gives `meta["input"]["shape"]` (the labelled sources: [1, 40] for MNIST-1D, [C, H, W]
    for images), else (n, dim)."""
    files = dataset_files(dataset)
    df = artifacts.read_parquet(files[split])
    meta_path = files["meta"]
    shape = artifacts.read_json(meta_path)["input"].get("shape") if meta_path.exists() else None
    return (*split_tensors(df, shape), df)


def split_tensors(df: pd.DataFrame, shape=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one split's table as the model takes them: dense inputs reshaped to
    (n, *shape) where `shape` (the meta's input shape) is given, token pairs as (n, 2) ids."""
    if "x" in df.columns:
        inputs = torch.from_numpy(np.stack(df["x"].to_numpy()).astype(np.float32))
        if shape is not None:
            inputs = inputs.reshape(len(df), *shape)
    else:
        inputs = torch.tensor(df[["a", "b"]].to_numpy(dtype=np.int64))
    return inputs, torch.tensor(df["label"].to_numpy(dtype=np.int64))


def load(data_config: dict):
    """The dataset a data block describes, generated or read as the workflow does, as tensors for
    your own loop: ((x_train, y_train), (x_test, y_test), spec), spec the models.InputSpec."""
    from gradscope.models import InputSpec

    train, test, meta = generate(data_config)
    shape = meta["input"].get("shape")
    return split_tensors(train, shape), split_tensors(test, shape), InputSpec.from_dict(meta["input"])


def load_meta(dataset) -> dict:
    """The dataset's meta.json (`dataset`: its files or folder, as for `load_split`)."""
    return artifacts.read_json(dataset_files(dataset)["meta"])
