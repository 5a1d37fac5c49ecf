"""What the synthetic generators and the labelled sources share: the `Dataset` type, standardization
fitted on the training split, and planted label flips.

A dataset is two DataFrames (train, test) with `example_id`, the inputs, `label` and
`planted`, plus a `meta` dict (generator config, input description, planted ids).

Dense generators take `standardize`: each input feature is shifted and scaled by the mean and
(population) standard deviation of the *training* split, and the same map is applied to the
test split; a feature constant on the training split is only centred (its std is stored as 1).
The fitted `{"mean": [...], "std": [...]}` is kept in meta["standardize"] (None when off), so
`x_raw = x * std + mean` undoes it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

Dataset = tuple[pd.DataFrame, pd.DataFrame, dict]


def standardize_inputs(x: np.ndarray, n_train: int) -> tuple[np.ndarray, dict]:
    """Standardize rows of `x` (train rows first) with statistics of the first `n_train` rows only."""
    train = x[:n_train].astype(np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant training feature is only centred
    out = ((x.astype(np.float64) - mean) / std).astype(np.float32)
    return out, {"mean": mean.tolist(), "std": std.tolist()}


def flip_labels(clean: np.ndarray, n_train: int, fraction: float, n_classes: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Flip round(fraction * n_train) training labels, each to a uniformly chosen *different* class.

    Returns the noisy labels and the sorted ids of the flipped examples (the planted truth)."""
    labels = clean.copy()
    n_flip = int(round(fraction * n_train))
    flipped = np.sort(rng.choice(n_train, size=n_flip, replace=False))
    labels[flipped] = (clean[flipped] + rng.integers(1, n_classes, size=n_flip)) % n_classes
    return labels, flipped

