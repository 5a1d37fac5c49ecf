"""Dispatch: a data block's generator or source by name (`GENERATORS`, `SOURCES`, `generate`) and
the last check of every dataset (`check_dataset`)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from gradscope import config
from gradscope.data.common import Dataset
from gradscope.data.generators import (generate_digits, generate_modular, generate_opposing_features,
                                       generate_planted_flips)
from gradscope.data.labelled import _nonfinite_rows, _spans
from gradscope.data.sources import generate_mnist1d, load_files, load_python, load_torchvision

log = logging.getLogger(__name__)


GENERATORS = {  # need nothing but their settings
    "planted_flips": generate_planted_flips,
    "modular": generate_modular,
    "opposing_features": generate_opposing_features,
    "digits": generate_digits,
    "mnist1d": generate_mnist1d,
}
SOURCES = {  # read the user's data: a folder, files, code
    "torchvision": load_torchvision,
    "files": load_files,
    "python": load_python,
}


def generate(data_config: dict) -> Dataset:
    """Generate (or load) the dataset a data slice ({generator, <generator>: {...}}) describes;
    what the generator's block leaves out takes the schema's default."""
    data_config = config.data_slice({"data": config.section("data", data_config)})
    name = data_config["generator"]
    builders = GENERATORS | SOURCES
    if name not in builders:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(sorted(builders))}")
    train, test, meta = builders[name](**data_config[name])
    meta = {"generator": data_config, "n_train": len(train), "n_test": len(test), **meta}
    meta["class_counts"] = check_dataset(train, test, meta["input"], f"data.{name}")
    return train, test, meta


def check_dataset(train: pd.DataFrame, test: pd.DataFrame, spec: dict, key: str) -> dict[str, list[int]]:
    """The last check of every dataset, generated or read, as its tables stand: labels in [0, n_classes), finite
    dense inputs, token ids below the vocabulary. Returns (and logs) the examples per class of each split,
    {"train": [...], "test": [...]} (the training labels after label noise); a class without a training
    example is logged as a warning. The sources' own data was checked, with rows named, before this
    (`labelled_dataset`): a failure here is a generator's bug."""
    n_classes, counts = int(spec["n_classes"]), {}
    for split, df in (("train", train), ("test", test)):
        for column in ("label", "clean_label"):
            if column not in df.columns:
                continue
            y = df[column].to_numpy()
            out = np.flatnonzero((y < 0) | (y >= n_classes))
            if len(out):
                raise ValueError(f"{key}: the {split} split as generated has {column} {y[out[0]]} at example "
                                 f"{out[0]}, outside 0..{n_classes - 1} ({len(out)} such); this is a bug in the "
                                 f"generator: please report it with the config")
        if "x" in df.columns:
            for start in range(0, len(df), 4096):
                bad = _nonfinite_rows(np.stack(df["x"].to_numpy()[start:start + 4096]))
                if len(bad):
                    raise ValueError(f"{key}: the {split} split as generated has non-finite inputs at example "
                                     f"{start + int(bad[0])}; this is a bug in the generator: please report it with "
                                     f"the config")
        else:
            tokens = df[["a", "b"]].to_numpy()
            if len(tokens) and (tokens.min() < 0 or tokens.max() >= int(spec["vocab"])):
                raise ValueError(f"{key}: the {split} split as generated has token ids outside 0..{spec['vocab'] - 1}; "
                                 f"this is a bug in the generator: please report it with the config")
        counts[split] = np.bincount(df["label"].to_numpy(dtype=np.int64), minlength=n_classes).tolist()
    log.info("%s: %d classes; examples per class, train: %s; test: %s", key, n_classes, counts["train"], counts["test"])
    empty = [c for c, n in enumerate(counts["train"]) if n == 0]
    if empty:
        log.warning("%s: class%s %s of %d ha%s no example in the training split as generated (after subsampling and "
                    "label noise)", key, "es" if len(empty) > 1 else "", _spans(empty), n_classes,
                    "ve" if len(empty) > 1 else "s")
    return counts

