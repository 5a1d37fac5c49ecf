"""Dataset generators and loading.

- `planted_flips`: Gaussian features labelled by a random teacher (linear, or a small random
  MLP), with a fraction of training labels flipped to another class. The flipped ids are
  the planted ground truth for detectors.
- `modular`: every pair (a, b) labelled (a op b) mod p, split at random into train and test:
  the algorithmic task of grokking (Power et al. 2022, arXiv 2201.02177).
- `opposing_features`: small synthetic images whose classes carry a weak class pattern and a
  strong "background" patch that co-occurs mostly, but not always, with one class, so two
  planted groups (the minority with the other class's background) exist by construction.
- `digits`: scikit-learn's bundled 8x8 handwritten digits (real data, no download), with
  optional planted label noise.
- `mnist1d`: the MNIST-1D benchmark (Greydanus 2020, arXiv 2011.14439; PyPI `mnist1d`),
  generated from the package's templates by its own code with a fixed seed: nothing is fetched.

Sources of the user's data (`SOURCES`):
- `torchvision`: a torchvision classification dataset by class name (CIFAR10, MNIST, SVHN, ...)
  from a root folder; images become float32 (C, H, W) in [0, 1].
- `files`: arrays from a `.npz` or Parquet file (one per split, or one with a split column).
- `python`: a "module:function" of the user's that returns the two splits.

These four share one finishing step (`labelled_dataset`): a seeded subsample of either split,
planted label noise on the training split (the flipped ids are the planted truth, as for
`digits`), and standardization fitted on the training split, per feature or per channel;
optionally a planted spurious feature (a patch, stripe or channel per class) that agrees with
the label on a set fraction of training examples, its groups (aligned, conflicting) the
planted truth. Their inputs keep their shape: `meta["input"]["shape"]` is the per-example
shape the model receives ([1, 40] for MNIST-1D, [C, H, W] for images); the Parquet `x`
column stays flat.

A dataset is two DataFrames (train, test) with `example_id`, the inputs, `label` and
`planted`, plus a `meta` dict (generator config, input description, planted ids).

Dense generators take `standardize`: each input feature is shifted and scaled by the mean and
(population) standard deviation of the *training* split, and the same map is applied to the
test split; a feature constant on the training split is only centred (its std is stored as 1).
The fitted `{"mean": [...], "std": [...]}` is kept in meta["standardize"] (None when off), so
`x_raw = x * std + mean` undoes it.
"""

from __future__ import annotations

import inspect
import logging
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gradscope import artifacts, config, factories, layout, tables

Dataset = tuple[pd.DataFrame, pd.DataFrame, dict]
log = logging.getLogger(__name__)


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


def _noisy_table(idx, x, labels, clean, flipped) -> pd.DataFrame:
    """The table of examples `idx` of a dense dataset with (possibly) flipped labels."""
    return pd.DataFrame({
        "example_id": np.arange(len(idx), dtype=np.int64),
        "x": list(x[idx]),
        "label": labels[idx].astype(np.int64),
        "clean_label": clean[idx].astype(np.int64),
        "planted": np.isin(idx, flipped),
    })


def generate_planted_flips(n_train, n_test, n_features, n_classes, teacher, teacher_width, flip_fraction, seed,
                           standardize) -> Dataset:
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
    labels, flipped = flip_labels(clean, n_train, flip_fraction, n_classes, rng)
    stats = None
    if standardize:  # after labelling: the teacher sees raw features, so labels do not depend on it
        x, stats = standardize_inputs(x, n_train)

    def table(idx):
        return _noisy_table(idx, x, labels, clean, flipped)

    meta = {
        "input": {"kind": "dense", "dim": n_features, "vocab": 0, "n_classes": n_classes},
        "planted": {"description": "training examples whose label was flipped", "train_ids": flipped.tolist()},
        "standardize": stats,
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


OPPOSING_GROUPS = ("group_a_background_in_b", "group_b_background_in_a")


def generate_opposing_features(n_train, n_test, side, n_classes, patch, signal, background, minority_fraction, noise,
                               seed, standardize) -> Dataset:
    """Images (side x side, flattened row-major) = weak class template + strong background patch + noise.

    - Class template: for each class a fixed random +-`signal` sign pattern on every pixel
      outside the two background patches (so template and background are orthogonal);
      its norm is signal * sqrt(side^2 - 2 patch^2).
    - Backgrounds: background "a" is a patch x patch block of value `background` in the top-left
      corner, background "b" the same block in the bottom-right corner; each has norm
      background * patch. Class A (label 0) carries background a and class B (label 1)
      background b, except the planted minorities: exactly int(round(minority_fraction * n_B))
      class-B examples of a split carry background a instead (group "group_a_background_in_b"),
      and int(round(minority_fraction * n_A)) class-A examples carry background b
      ("group_b_background_in_a"), n_A / n_B being the class sizes in that split. Classes 2..
      carry no background. The two groups pull the background features against the majority.
    - Noise: i.i.d. N(0, noise^2) on every pixel.
    Labels are balanced within each split (sizes differ by at most one), in random order.
    Train and test are drawn the same way (test after train from one seeded stream, so the
    training split does not depend on n_test). `meta["planted"]["train_ids"]` is the union of
    the two training groups, `meta["planted"]["groups"]` each group's training ids and
    `meta["planted"]["test_groups"]` the same for the test split; the tables' `planted` and
    `group` ("" for none) columns mark the members of each split.
    """
    if 2 * patch > side:
        raise ValueError(f"two background patches of size {patch} do not fit side by side in a {side}x{side} image")
    if min(n_train, n_test) < n_classes:
        raise ValueError(f"each split needs at least n_classes={n_classes} examples; got n_train={n_train}, n_test={n_test}")
    rng = np.random.default_rng(seed)
    d = side * side
    bg_a, bg_b = np.zeros((side, side)), np.zeros((side, side))
    bg_a[:patch, :patch] = background
    bg_b[side - patch:, side - patch:] = background
    object_mask = (bg_a == 0) & (bg_b == 0)
    templates = signal * rng.choice([-1.0, 1.0], size=(n_classes, side, side)) * object_mask  # (k, side, side)
    templates, bg_a, bg_b = templates.reshape(n_classes, d), bg_a.ravel(), bg_b.ravel()

    def split(n):
        labels = rng.permutation(np.arange(n) % n_classes)
        background_of = np.full(n, -1)  # 0: background a, 1: background b, -1: none
        background_of[labels == 0], background_of[labels == 1] = 0, 1
        group = np.full(n, "", dtype=object)
        for cls, other, name in ((1, 0, OPPOSING_GROUPS[0]), (0, 1, OPPOSING_GROUPS[1])):
            members = np.flatnonzero(labels == cls)
            chosen = np.sort(rng.choice(members, size=int(round(minority_fraction * len(members))), replace=False))
            background_of[chosen], group[chosen] = other, name
        x = templates[labels] + np.outer(background_of == 0, bg_a) + np.outer(background_of == 1, bg_b)
        x = x + noise * rng.standard_normal((n, d))
        return x.astype(np.float32), labels, group

    x_train, y_train, g_train = split(n_train)
    x_test, y_test, g_test = split(n_test)
    x, stats = np.concatenate([x_train, x_test]), None
    if standardize:
        x, stats = standardize_inputs(x, n_train)

    def table(xs, ys, gs):
        return pd.DataFrame({
            "example_id": np.arange(len(ys), dtype=np.int64),
            "x": list(xs),
            "label": ys.astype(np.int64),
            "clean_label": ys.astype(np.int64),  # no label noise here: the planted signal is in the inputs
            "planted": gs != "",
            "group": gs.astype(str),
        })

    def ids(gs):
        return {name: np.flatnonzero(gs == name).tolist() for name in OPPOSING_GROUPS}

    meta = {
        "input": {"kind": "dense", "dim": d, "vocab": 0, "n_classes": n_classes},
        "planted": {
            "description": "training examples carrying the other class's background patch: class-B examples with "
                           "class A's background (group_a_background_in_b) and class-A examples with class B's "
                           "(group_b_background_in_a)",
            "train_ids": np.flatnonzero(g_train != "").tolist(),
            "groups": ids(g_train),
            "test_groups": ids(g_test),
        },
        "image": {"side": side, "patch": patch, "background_a": [0, 0], "background_b": [side - patch, side - patch],
                  "class_a": 0, "class_b": 1},
        "standardize": stats,
    }
    return table(x[:n_train], y_train, g_train), table(x[n_train:], y_test, g_test), meta


def generate_digits(train_fraction, label_noise, seed, standardize) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 64 features in 0..16, 10 classes), split at random.

    The split is the first int(round(train_fraction * 1797)) examples of a permutation drawn
    from `numpy.random.default_rng(seed)`; then exactly int(round(label_noise * n_train))
    training labels are moved to a uniformly chosen *different* class, drawn from the same
    stream (so the split does not depend on label_noise). Those ids are the planted truth;
    with label_noise 0 there is none (meta["planted"] is None). The test split is never noisy.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x_all, y_all = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    n, n_classes = len(y_all), 10
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_train = int(round(train_fraction * n))
    if not 0 < n_train < n:
        raise ValueError(f"train_fraction={train_fraction} leaves an empty split of {n} digits")
    x, clean = x_all[order], y_all[order]
    labels, flipped = flip_labels(clean, n_train, label_noise, n_classes, rng)
    stats = None
    if standardize:
        x, stats = standardize_inputs(x, n_train)

    def table(idx):
        return _noisy_table(idx, x, labels, clean, flipped)

    planted = ({"description": "training digits whose label was changed to another class", "train_ids": flipped.tolist()}
               if len(flipped) else None)
    meta = {"input": {"kind": "dense", "dim": x.shape[1], "vocab": 0, "n_classes": n_classes}, "planted": planted,
            "standardize": stats}
    return table(np.arange(n_train)), table(np.arange(n_train, n)), meta


# ---- labelled sources: the finishing step they share ----------------------------------------
@dataclass
class Split:
    """One split as a source yields it, before subsampling."""

    x: np.ndarray  # (n, *shape) float32 inputs
    y: np.ndarray  # (n,) int64 class labels
    source_id: np.ndarray  # (n,) each example's id in the source: its row index unless the source names ids
    where: str = ""  # what messages call it: "data.files.train: /abs/train.npz", "data.python.factory: 'm:f', its train split"
    rows: np.ndarray | None = None  # each example's row in its file, where that is not its index (one file, both splits)


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def as_split(x, y, ids=None, *, what: str) -> Split:
    """One split from arrays, tensors or nested lists; a ValueError names `what` ("the train split") and the problem.

    Inputs of one number per example become shape [1]; labels of shape (n, 1) become (n,);
    labels must be whole numbers >= 0 (floats such as 1.0 are accepted)."""
    x, y = _to_numpy(x), _to_numpy(y)
    if x.ndim == 0 or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"the inputs of {what} are not a numeric array (dtype {x.dtype}, shape {x.shape})")
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (len(x),):
        raise ValueError(f"the labels of {what} have shape {y.shape}; expected ({len(x)},): one class per input")
    if len(y) == 0:
        raise ValueError(f"{what} has no examples")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.isfinite(y).all() and (y == np.round(y)).all()):
            raise ValueError(f"the labels of {what} are not whole numbers (dtype {y.dtype}); expected class indices 0..K-1")
    if y.min() < 0:
        raise ValueError(f"the labels of {what} include {y.min()}; expected class indices 0..K-1")
    if ids is None:
        ids = np.arange(len(y), dtype=np.int64)
    else:
        ids = _to_numpy(ids)
        if ids.shape != (len(y),) or len(np.unique(ids)) != len(ids):
            raise ValueError(f"the ids of {what} must be {len(y)} distinct values, one per example; got shape {ids.shape} "
                             f"with {len(np.unique(ids))} distinct")
        ids = ids.astype(np.int64) if np.issubdtype(ids.dtype, np.integer) else ids.astype(str)
    return Split(x.astype(np.float32, copy=False), y.astype(np.int64), ids)


def _subsample(split: Split, count: int | None, rng, key: str) -> Split:
    """`count` examples drawn without replacement, kept in source order; all of them for None."""
    if count is None:
        return split
    if count > len(split.y):
        raise ValueError(f"{key}={count} is more than the {len(split.y)} examples of that split")
    idx = np.sort(rng.choice(len(split.y), size=count, replace=False))
    return Split(split.x[idx], split.y[idx], split.source_id[idx], split.where)


# ---- checks of a source's splits, before anything is drawn from them ----------------------------
def _spans(values) -> str:
    """Sorted whole numbers as text, runs shortened: [0, 1, 2, 5, 7, 8, 9] -> '0..2, 5, 7..9'."""
    values, out, i = sorted(int(v) for v in values), [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if j == i else f"{values[i]}, {values[j]}" if j == i + 1 else f"{values[i]}..{values[j]}")
        i = j + 1
    return ", ".join(out)


def _rows(split: Split, idx: np.ndarray, limit: int = 5) -> str:
    """'row 3' or 'rows 3, 7, 9 and 12 more': the examples `idx` of a split, as rows of its file (from 0)."""
    rows = (split.rows[idx] if split.rows is not None else idx)[:limit]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"row{'s' if len(idx) > 1 else ''} {', '.join(str(int(r)) for r in rows)}{more}"


def _nonfinite_rows(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Indices of the examples of `x` (n, ...) with a NaN or inf anywhere (a chunk at a time: little memory)."""
    if not np.issubdtype(x.dtype, np.floating):
        return np.zeros(0, dtype=np.int64)
    flat, bad = x.reshape(len(x), -1), []
    for start in range(0, len(flat), chunk):
        ok = np.isfinite(flat[start:start + chunk]).all(axis=1)
        if not ok.all():
            bad.append(start + np.flatnonzero(~ok))
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def check_finite(split: Split, inputs: str = "inputs") -> None:
    """Refuse NaN and inf inputs, naming the split (`split.where`), the first rows and in each its first bad feature.

    inputs: what the message calls them ("inputs (array 'x')")."""
    bad = _nonfinite_rows(split.x)
    if not len(bad):
        return
    shape = split.x.shape[1:]
    shown = []
    for i in bad[:3]:
        flat = split.x[i].reshape(-1)
        j = int(np.flatnonzero(~np.isfinite(flat))[0])
        where = np.unravel_index(j, shape)
        feature = str(int(where[0])) if len(shape) == 1 else f"[{', '.join(str(int(k)) for k in where)}]"
        others = int((~np.isfinite(flat)).sum()) - 1
        shown.append(f"{_rows(split, np.array([i]))}: feature {feature} is {flat[j]}"
                     + (f", and {others} more feature{'s' if others > 1 else ''}" if others else ""))
    more = f"; and {len(bad) - 3} more rows" if len(bad) > 3 else ""
    raise ValueError(f"{split.where}: {inputs} are not finite (NaN or inf) in {len(bad)} of {len(split.y)} rows: "
                     f"{'; '.join(shown)}{more} (rows and features count from 0, features index the per-example "
                     f"shape {list(shape)}); allowed: finite numbers: drop or fix those rows")


def check_labels(train: Split, test: Split, n_classes: int | None, key: str, strict: bool) -> int:
    """The number of classes, after refusing labels that do not fit it; messages name the split and the rows.

    n_classes given (the source declares its classes): every label must be below it; a class without
    a training example is logged as a warning. n_classes None: it is inferred as 1 + the largest
    label, and with `strict` (a source whose labels are the user's own: files, python) the labels
    must use every class 0..K-1 in the training split, and the test split may hold only classes the
    training split has (without `strict` those are warnings). Labels are whole numbers >= 0 here
    (`as_split`)."""
    if n_classes is not None:
        n_classes = int(n_classes)
        for split in (train, test):
            out = np.flatnonzero(split.y >= n_classes)
            if len(out):
                values = np.unique(split.y[out])
                raise ValueError(f"{split.where}: label{'s' if len(values) > 1 else ''} {_spans(values)} "
                                 f"({_rows(split, out)}, counting from 0) out of range for the {n_classes} classes of the "
                                 f"source; allowed: 0..{n_classes - 1}")
    train_classes = np.unique(train.y)
    unseen = np.setdiff1d(np.unique(test.y), train_classes)
    if len(unseen):
        rows = np.flatnonzero(np.isin(test.y, unseen))
        text = (f"{test.where}: class{'es' if len(unseen) > 1 else ''} {_spans(unseen)} ({_rows(test, rows)}, counting from 0) "
                f"{'have' if len(unseen) > 1 else 'has'} no example in the training split ({train.where}), whose "
                f"classes are {_spans(train_classes)}")
        if strict and n_classes is None:
            raise ValueError(f"{text}; a model cannot learn a class it never trains on; allowed: test labels among the "
                             f"training classes: relabel or drop those test rows, or add training examples of "
                             f"{'them' if len(unseen) > 1 else 'it'}")
        log.warning("%s", text)
    largest = int(max(train.y.max(), test.y.max()))
    inferred = n_classes is None
    n_classes = largest + 1 if inferred else n_classes
    empty = np.setdiff1d(np.arange(n_classes), train_classes)
    if len(empty) and not (len(unseen) and not strict):  # (unseen ones were just reported)
        gap = int(empty[0])
        beyond = train_classes[train_classes > gap]
        if strict and inferred and len(beyond):
            rows = np.flatnonzero(np.isin(train.y, beyond))
            used = len(train_classes)
            raise ValueError(
                f"{train.where}: label{'s' if len(beyond) > 1 else ''} {_spans(beyond)} ({_rows(train, rows)}, counting from 0) "
                f"leave{'' if len(beyond) > 1 else 's'} class{'es' if len(empty) > 1 else ''} {_spans(empty)} without "
                f"a training example: the labels used are {_spans(train_classes)}, so n_classes would be {n_classes} "
                f"with {len(empty)} empty; allowed: class indices 0..K-1 with every class used: relabel the {used} "
                f"classes to 0..{used - 1} (e.g. numpy.unique(y, return_inverse=True)[1])")
        log.warning("%s: class%s %s of %d ha%s no training example", key, "es" if len(empty) > 1 else "",
                    _spans(empty), n_classes, "ve" if len(empty) > 1 else "s")
    if n_classes < 2:
        raise ValueError(f"{key}: the labels name a single class; classification needs at least 2")
    return n_classes


def standardize_shaped(x: np.ndarray, n_train: int, over: str | None, key: str) -> tuple[np.ndarray, dict | None]:
    """Standardize inputs (n, *shape), train rows first, with statistics of the first `n_train` rows.

    over: None (unchanged), "feature" (each coordinate: `standardize_inputs`) or "channel" (one
    mean and std per index of the first per-example axis, pooled over the other axes and the
    training examples: what torchvision's Normalize does with training statistics; a channel
    constant on the training split is only centred). meta["standardize"] gets {"over", "mean",
    "std"}; x_raw = x * std + mean, with the channel statistics broadcast over (C, 1, ...)."""
    if over is None:
        return x, None
    if over == "feature":
        flat, stats = standardize_inputs(x.reshape(len(x), -1), n_train)
        return flat.reshape(x.shape), {"over": "feature", **stats}
    if over != "channel":
        raise ValueError(f"{key}: unknown value {over!r}; allowed: null, 'feature', 'channel'")
    if x.ndim < 3:
        raise ValueError(f"{key}: 'channel' needs inputs with a channel axis, shape [C, ...]; these have shape "
                         f"{list(x.shape[1:])}: use 'feature'")
    out, means, stds = np.empty(x.shape, dtype=np.float32), [], []
    for c in range(x.shape[1]):  # one channel at a time: float64 statistics without a float64 copy of the whole set
        channel = x[:, c].astype(np.float64)  # (n, ...)
        mean, std = channel[:n_train].mean(), channel[:n_train].std()
        std = std if std > 0 else 1.0
        out[:, c] = (channel - mean) / std
        means.append(float(mean))
        stds.append(float(std))
    return out, {"over": "channel", "mean": means, "std": stds}


# ---- a planted spurious feature (Waterbirds / Colored-MNIST-like) --------------------------------
SPURIOUS_GROUPS = ("aligned", "conflicting")


def refuse_noise_with_spurious(label_noise: float, spurious: dict | None, key: str) -> None:
    """Label noise and a spurious feature both plant the ground truth (meta["planted"]): one at a time."""
    if spurious is not None and label_noise > 0:
        raise ValueError(f"{key}.label_noise: {label_noise} together with {key}.spurious: both would plant the "
                         f"ground truth (flipped labels, the conflicting group); allowed: label_noise 0 with a "
                         f"spurious feature, or spurious null")


def spurious_attributes(y_train: np.ndarray, y_test: np.ndarray, n_classes: int, aligned: float, test: str,
                        rng) -> tuple[np.ndarray, np.ndarray]:
    """Each example's spurious attribute, a class 0..K-1, for the training and the test split.

    Training: exactly round(aligned * n_train) examples, drawn without replacement, get their own
    label; the others a uniformly chosen *different* class. Test: `random` draws it uniformly over
    all K classes, independently of the label; `reversed` is (label + 1) mod K, never the label.
    The test draws come after the training ones, so the training split does not depend on `test`."""
    n_train = len(y_train)
    n_aligned = int(round(aligned * n_train))
    chosen = np.zeros(n_train, dtype=bool)
    chosen[rng.choice(n_train, size=n_aligned, replace=False)] = True
    s_train = (y_train + rng.integers(1, n_classes, size=n_train)) % n_classes
    s_train[chosen] = y_train[chosen]
    if test == "random":
        s_test = rng.integers(0, n_classes, size=len(y_test))
    elif test == "reversed":
        s_test = (y_test + 1) % n_classes
    else:
        raise ValueError(f"unknown spurious test {test!r}; allowed: 'random', 'reversed'")
    return s_train.astype(np.int64), s_test.astype(np.int64)


def spurious_kind(kind: str, shape: list[int]) -> str:
    """`auto`: a patch for images (per-example shape [C, H, W]), a stripe otherwise."""
    return ("patch" if len(shape) == 3 else "stripe") if kind == "auto" else kind


def spurious_masks(kind: str, shape: list[int], n_classes: int, size: int, key: str) -> np.ndarray:
    """Where each attribute value puts the feature: (K, *shape) float32 masks of 0 and 1.

    patch (images [C, H, W]): a size x size square on every channel; the K squares are laid out
    row by row from the top-left corner (attribute s: row s // (W // size), column s % (W // size)).
    stripe: `size` consecutive positions of the last axis starting at s * size, on every index of
    the other axes (the one channel of MNIST-1D's [1, 40]). channel (inputs [C, ...]): the whole
    of channel s. `key` ("data.files.spurious") names the setting in errors."""
    masks = np.zeros((n_classes, *shape), dtype=np.float32)
    if kind == "patch":
        if len(shape) != 3:
            raise ValueError(f"{key}.kind: 'patch' needs images, per-example shape [C, H, W]; these inputs have shape "
                             f"{shape}; allowed here: 'stripe' or 'auto' ('channel' needs a channel per class)")
        _, h, w = shape
        across, down = w // size, h // size
        if across * down < n_classes:
            fit = [s for s in range(1, min(h, w) + 1) if (w // s) * (h // s) >= n_classes]  # fewer fit as s grows
            allowed = f"size at most {fit[-1]}" if fit else "kind 'channel' or 'stripe'"
            raise ValueError(f"{key}.size: {size}: {n_classes} patches of {size}x{size} (one per class) do not fit in "
                             f"a {h}x{w} image ({across * down} fit); allowed: {allowed}")
        for s in range(n_classes):
            r, c = divmod(s, across)
            masks[s, :, r * size:(r + 1) * size, c * size:(c + 1) * size] = 1.0
    elif kind == "stripe":
        length = shape[-1]
        if n_classes * size > length:
            allowed = (f"size at most {length // n_classes}" if length >= n_classes else
                       "kind 'patch' or 'channel' (fewer positions than classes)")
            raise ValueError(f"{key}.size: {size}: {n_classes} stripes of {size} (one per class) need {n_classes * size} "
                             f"positions along the last axis, which has {length} (shape {shape}); allowed: {allowed}")
        for s in range(n_classes):
            masks[s, ..., s * size:(s + 1) * size] = 1.0
    elif kind == "channel":
        if len(shape) < 2 or shape[0] < n_classes:
            have = f"{shape[0]} channel{'s' if shape[0] != 1 else ''}" if len(shape) >= 2 else "no channel axis"
            raise ValueError(f"{key}.kind: 'channel' needs a channel per class, {n_classes} classes, but inputs of "
                             f"shape {shape} have {have}; allowed: 'channel' only with n_classes <= C of [C, ...]; "
                             f"'patch' or 'stripe' (or 'auto') otherwise")
        for s in range(n_classes):
            masks[s, s] = 1.0
    else:
        raise ValueError(f"{key}.kind: unknown value {kind!r}; allowed: 'auto', 'patch', 'stripe', 'channel'")
    return masks


def plant_spurious(x: np.ndarray, attribute: np.ndarray, masks: np.ndarray, strength: float) -> None:
    """Add `strength` where each example's attribute's mask is 1, in place (one class at a time: no (n, *shape) temporary)."""
    for s in range(len(masks)):
        rows = np.flatnonzero(attribute == s)
        if len(rows):
            x[rows] += np.float32(strength) * masks[s]


def labelled_dataset(train: Split, test: Split, *, n_classes: int | None, seed: int, label_noise: float,
                     subsample_train: int | None, subsample_test: int | None, standardize: str | None,
                     key: str, strict: bool = False, inputs: str = "inputs", spurious: dict | None = None) -> Dataset:
    """The dataset of a labelled source (MNIST-1D, torchvision, files, python): the step they share.

    - n_classes: the source's (a torchvision dataset's `classes`), else 1 + the largest label
      of either split, counted before subsampling.
    - Checks, on the whole splits before subsampling: finite inputs (`check_finite`) and labels
      that fit the classes (`check_labels`; `strict` for the sources whose labels are the
      user's own). Each split's `where` names it in the messages (default "<key>: the train
      split"), `inputs` names its inputs ("inputs (array 'x')").
    - Subsamples: `subsample_train` (`subsample_test`) examples of that split drawn without
      replacement and kept in source order; None keeps the split whole.
    - Label noise: exactly round(label_noise * n_train) training labels (after subsampling)
      moved to a uniformly chosen different class by `flip_labels`; their ids are
      `meta["planted"]["train_ids"]` (None when nothing is flipped). The test split is never noisy.
    - Each of the three draws has its own stream of `seed` (SeedSequence(seed).spawn(3)), so
      the training subsample depends on neither subsample_test nor label_noise.
    - standardize: `standardize_shaped`, fitted on the training split after subsampling.
    - spurious (None: nothing): {aligned, test, kind, size, strength}, a feature that agrees with
      the label on a set fraction of the training examples. Each example gets an attribute, a
      class (`spurious_attributes`, from a fourth stream of `seed`, spawn(4)[3]: the other draws
      do not move), encoded after standardization by adding `strength` to its class's patch,
      stripe or channel (`spurious_masks`). Both tables get a `group` column, "aligned" (attribute
      = label) or "conflicting"; `planted` marks the conflicting examples of each split, and
      meta["planted"] is {"description", "train_ids" (the conflicting training ids), "groups",
      "test_groups"} ({"aligned": ids, "conflicting": ids} of each split), as for
      opposing_features. meta["spurious"] holds the settings (`kind` resolved), each split's
      aligned fraction and attributes. Refused together with label_noise > 0.
    Tables: `source_id` is an example's id in the source (its row index there unless the
    source names ids); `example_id` its row in the table, which the planted ids refer to.
    `key` ("data.files") prefixes the other error messages.
    """
    shape = list(train.x.shape[1:])
    if list(test.x.shape[1:]) != shape:
        raise ValueError(f"{key}: train inputs have shape {shape} per example but test inputs {list(test.x.shape[1:])}")
    train = train if train.where else replace(train, where=f"{key}: the train split")
    test = test if test.where else replace(test, where=f"{key}: the test split")
    for split in (train, test):
        check_finite(split, inputs)
    n_classes = check_labels(train, test, n_classes, key, strict)
    masks = None
    if spurious is not None:
        refuse_noise_with_spurious(label_noise, spurious, key)
        masks = spurious_masks(spurious_kind(spurious["kind"], shape), shape, n_classes, spurious["size"],
                               f"{key}.spurious")
    # spawn(4)[:3] are spawn(3): the spurious stream moves none of the earlier draws
    train_stream, test_stream, noise_stream, spurious_stream = np.random.SeedSequence(seed).spawn(4)
    train = _subsample(train, subsample_train, np.random.default_rng(train_stream), f"{key}.subsample_train")
    test = _subsample(test, subsample_test, np.random.default_rng(test_stream), f"{key}.subsample_test")
    n_train = len(train.y)
    labels, flipped = flip_labels(train.y, n_train, label_noise, n_classes, np.random.default_rng(noise_stream))
    x, stats = standardize_shaped(np.concatenate([train.x, test.x]), n_train, standardize, f"{key}.standardize")
    dim = int(np.prod(shape))
    groups = None
    if spurious is not None:  # after standardization: strength is in units of the inputs as the model gets them
        attributes = spurious_attributes(train.y, test.y, n_classes, spurious["aligned"], spurious["test"],
                                         np.random.default_rng(spurious_stream))
        plant_spurious(x, np.concatenate(attributes), masks, spurious["strength"])
        groups = [np.where(s == split.y, *SPURIOUS_GROUPS) for s, split in zip(attributes, (train, test))]

    def table(xs, split, noisy, planted, group=None):
        columns = {
            "example_id": np.arange(len(split.y), dtype=np.int64),
            "x": list(xs.reshape(len(xs), dim)),  # flat in the Parquet file; load_split restores the shape
            "label": noisy,
            "clean_label": split.y,
            "planted": planted,
            "source_id": split.source_id,
        }
        return pd.DataFrame(columns if group is None else {**columns, "group": group.astype(str)})

    planted = ({"description": "training examples whose label was changed to another class", "train_ids": flipped.tolist()}
               if len(flipped) else None)
    meta = {"input": {"kind": "dense", "dim": dim, "vocab": 0, "n_classes": n_classes, "shape": shape},
            "planted": planted, "standardize": stats}
    if groups is not None:
        kind = spurious_kind(spurious["kind"], shape)

        def ids(gs):
            return {name: np.flatnonzero(gs == name).tolist() for name in SPURIOUS_GROUPS}

        meta["planted"] = {
            "description": f"training examples whose spurious feature (a {kind} of strength {spurious['strength']}) "
                           f"names another class than their label (group conflicting; the others: aligned)",
            "train_ids": np.flatnonzero(groups[0] == "conflicting").tolist(),
            "groups": ids(groups[0]),
            "test_groups": ids(groups[1]),
        }
        meta["spurious"] = {**spurious, "kind": kind,
                            "aligned_fraction": {s: float(np.mean(g == "aligned")) for s, g in zip(("train", "test"), groups)},
                            "attribute": {s: a.tolist() for s, a in zip(("train", "test"), attributes)}}
        return (table(x[:n_train], train, labels, groups[0] == "conflicting", groups[0]),
                table(x[n_train:], test, test.y, groups[1] == "conflicting", groups[1]), meta)
    return (table(x[:n_train], train, labels, np.isin(np.arange(n_train), flipped)),
            table(x[n_train:], test, test.y, np.zeros(len(test.y), dtype=bool)), meta)


# ---- MNIST-1D --------------------------------------------------------------------------------
def generate_mnist1d(num_samples, train_split, seed, label_noise, subsample_train, subsample_test,
                     standardize, spurious=None) -> Dataset:
    """MNIST-1D (Greydanus 2020, arXiv 2011.14439): `mnist1d.data.make_dataset` with the
    package's default arguments except `num_samples`, `train_split` and `seed`.

    Ten 1-D digit templates, defined in code (`mnist1d.data.get_templates`), are padded,
    scaled, translated, sheared and noised, then resampled to 40 points; make_dataset never
    fetches anything (the package's `get_dataset`, which may download a pickle, is not used).
    10 * (num_samples // 10) examples, balanced, shuffled; the first int(n * train_split) train.
    The package centres and scales the whole set (both splits) by one scalar mean and std, as
    published. make_dataset seeds numpy's and Python's global generators: their states are
    restored afterwards. Inputs (1, 40): one channel of length 40, for Conv1d or an MLP.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    n = len(d["y"]) + len(d["y_test"])
    if not 0 < len(d["y"]) < n:
        raise ValueError(f"data.mnist1d: train_split={train_split} leaves an empty split of {n} examples")
    train = as_split(d["x"][:, None, :], d["y"], what="the MNIST-1D training split")
    test = as_split(d["x_test"][:, None, :], d["y_test"], what="the MNIST-1D test split")
    return labelled_dataset(train, test, n_classes=10, seed=seed, label_noise=label_noise,
                            subsample_train=subsample_train, subsample_test=subsample_test, standardize=standardize,
                            key="data.mnist1d", spurious=spurious)


# ---- torchvision -----------------------------------------------------------------------------
def import_torchvision():
    """torchvision, imported so that its datasets work beside a CPU build of torch.

    PyPI's Linux wheels of torchvision are built against torch's CUDA build: beside the CPU
    build (torch==2.13.0+cpu here) their C++ ops (_C.so, which needs libtorch_cuda.so) cannot
    load. torchvision allows for that, except that 0.28 then registers fake kernels for two ops
    that were never defined, nms and qnms, and the import fails with "operator torchvision::nms
    does not exist". The datasets use none of those ops: define the two schemas and import
    again (calling torchvision.ops.nms then still fails with torchvision's own message).
    """
    try:
        import torchvision
    except ImportError as e:
        from gradscope.doctor import missing_message

        raise ImportError(missing_message("vision", "the torchvision data source (data.generator: torchvision)")) from e
    except RuntimeError as e:
        if "torchvision::" not in str(e) or "does not exist" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the failed, half-done import
        for op in ("nms", "qnms"):
            if not _op_defined(f"torchvision::{op}"):
                torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision


def _op_defined(qualname: str) -> bool:
    ns, name = qualname.split("::")
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _how_to_get(key: str, what: str) -> str:
    return (f"set {key}.download: true to fetch {what} there, or copy its files there in torchvision's layout "
            f"(e.g. ROOT/cifar-10-batches-py/, ROOT/MNIST/raw/)")


def _init_parameters(cls) -> set[str]:
    """The keyword arguments a class's constructor takes, following **kwargs to the base classes
    (EMNIST(root, split, **kwargs) passes train= on to MNIST)."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


def _vision_split(cls, root: Path, split: str, download: bool, kwargs: dict, key: str):
    """One split of a torchvision dataset as (images (n, C, H, W) float32 in [0, 1], labels, n_classes or None)."""
    from torchvision.transforms.functional import to_tensor  # uint8 pixels / 255, (C, H, W)

    params = _init_parameters(cls)
    if "train" in params:
        which = {"train": split == "train"}
    elif "split" in params and "split" not in kwargs:
        which = {"split": split}  # SVHN and others: split="train" / "test"
    else:
        raise ValueError(f"{key}.name: {cls.__name__} takes neither train= nor split=, so it has no train and test "
                         f"splits to load")
    how = _how_to_get(key, "it")
    try:
        ds = cls(root=str(root), download=download, transform=to_tensor, **which, **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise FileNotFoundError(f"{key}.root: no usable {cls.__name__} {split} split in {root} "
                                f"(torchvision says: {e}); {how}") from e
    except TypeError as e:
        raise ValueError(f"{key}.kwargs: {cls.__name__} does not take {kwargs}: {e}") from e
    images, labels = [], []
    for i in range(len(ds)):
        image, target = ds[i]
        images.append(image)
        labels.append(int(target))
    shapes = sorted({tuple(im.shape) for im in images})
    if len(shapes) > 1:
        raise ValueError(f"{key}.name: the {cls.__name__} {split} images differ in size ({shapes[:3]} ...); "
                         f"this source needs one size")
    n_classes = len(ds.classes) if getattr(ds, "classes", None) else None
    return torch.stack(images).numpy() if images else np.zeros((0,)), np.array(labels, dtype=np.int64), n_classes


def load_torchvision(name, root, download, kwargs, seed, label_noise, subsample_train, subsample_test,
                     standardize, spurious=None) -> Dataset:
    """A torchvision classification dataset by class name, its train and test splits from `root`.

    The split is the dataset's own argument: train=True/False, or split="train"/"test" for
    datasets without `train` (SVHN). `kwargs` go to the class as they are (EMNIST's split).
    Images become float32 (C, H, W) in [0, 1] (torchvision's to_tensor: uint8 / 255); every
    image of a dataset must have one size. n_classes is len(dataset.classes) where the
    dataset has them. Nothing is fetched unless `download` is true.
    """
    key = "data.torchvision"
    tv = import_torchvision()
    cls = getattr(tv.datasets, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.utils.data.Dataset)):
        known = sorted(n for n, c in vars(tv.datasets).items()
                       if inspect.isclass(c) and issubclass(c, torch.utils.data.Dataset) and not n.startswith("_"))
        raise ValueError(f"{key}.name: torchvision.datasets has no dataset {name!r}; it has: {', '.join(known)}")
    root = Path(root).absolute()
    if not download and not root.is_dir():
        raise FileNotFoundError(f"{key}.root: no folder {root} (a relative root starts at the working directory); "
                                f"{_how_to_get(key, name)}")
    (x_train, y_train, n_classes), (x_test, y_test, _) = (_vision_split(cls, root, s, download, kwargs, key)
                                                          for s in ("train", "test"))
    train = replace(as_split(x_train, y_train, what=f"the {name} training split"),
                    where=f"{key}: {name} in {root}, its train split")
    test = replace(as_split(x_test, y_test, what=f"the {name} test split"), where=f"{key}: {name} in {root}, its test split")
    return labelled_dataset(train, test, n_classes=n_classes, seed=seed, label_noise=label_noise,
                            subsample_train=subsample_train, subsample_test=subsample_test, standardize=standardize,
                            key=key, spurious=spurious)


# ---- array files -----------------------------------------------------------------------------
def _column_array(column: pa.ChunkedArray, what: str) -> np.ndarray:
    """A Parquet column as an array: scalars give (n,), (nested) lists of equal length give (n, d1, d2, ...)."""
    import pyarrow.compute as pc

    arr, dims = column.combine_chunks(), []
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            raise ValueError(f"{what} has null entries")
        lengths = np.unique(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise ValueError(f"{what} has lists of different lengths ({lengths[:5].tolist()} ...)")
        dims.append(int(lengths[0]) if len(lengths) else 0)
        arr = arr.flatten()
    if arr.null_count:
        raise ValueError(f"{what} has null entries")
    return arr.to_numpy(zero_copy_only=False).reshape(len(column), *dims)


PARQUET_SUFFIXES = (".parquet", ".pq")
_SAVE_HINT = "numpy.savez(path, x=inputs, y=labels)"


def file_kind(path) -> str:
    """What a file holds, from its first bytes: "a zip archive" (as a .npz is), "a Parquet file", "text, starting 'x,y'", ..."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(512)
    if not head:
        return "nothing (it is empty)"
    magic = [(b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "an empty zip archive"),
             (b"\x93NUMPY", "a single .npy array"), (b"PAR1", "a Parquet file"), (b"\x89HDF", "an HDF5 file"),
             (b"ARROW1", "an Arrow (Feather) file"), (b"\x1f\x8b", "gzip-compressed data"),
             (b"\x80", "a Python pickle"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image")]
    for start, kind in magic:
        if head.startswith(start):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at 512 bytes is still text
        text = head[:e.start].decode("utf-8") if e.start > len(head) - 4 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.splitlines()[0] if text.strip() else ""
        csv = " (CSV?)" if "," in first else ""
        return f"text{csv}, starting {first[:40]!r}"
    return f"binary data starting {head[:8].hex(' ')}"


def _check_file_type(p: Path, key: str) -> None:
    """Refuse a file whose contents are not what its suffix says (.npz, .parquet/.pq), or another suffix, naming what it holds."""
    suffix, kind, p = p.suffix.lower(), file_kind(p), p.absolute()
    if suffix == ".npz" and not kind.endswith("zip archive"):
        raise ValueError(f"{key}: {p} is not a .npz archive: it holds {kind}; allowed: a .npz archive of the inputs "
                         f"and labels, as {_SAVE_HINT} writes")
    if suffix in PARQUET_SUFFIXES:
        if kind != "a Parquet file":
            raise ValueError(f"{key}: {p} is not a Parquet file: it holds {kind}; allowed: a Parquet file, as "
                             f"pandas.DataFrame.to_parquet or pyarrow.parquet.write_table writes")
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - 4))
            if f.read(4) != b"PAR1":
                raise ValueError(f"{key}: {p} is a damaged Parquet file: it does not end in Parquet's footer (cut "
                                 f"short while it was written or copied?); write it again")
    if suffix not in (".npz", *PARQUET_SUFFIXES):
        what = ({"a zip archive": "; if numpy.savez wrote it, rename it .npz", "a Parquet file": "; rename it .parquet",
                 "a single .npy array": "; save the inputs and labels together in a .npz"}.get(kind)
                or ("; for a CSV: df = pandas.read_csv(path), then numpy.savez(path, x=df[features].to_numpy(), "
                    "y=df[label].to_numpy())" if kind.startswith("text") else ""))
        raise ValueError(f"{key}: {p} is neither a .npz nor a .parquet file: it holds {kind}; allowed: .npz "
                         f"({_SAVE_HINT}), .parquet or .pq{what}")


def _read_arrays(path, names: dict[str, str], key: str, path_key: str, hint: str = "") -> dict[str, np.ndarray]:
    """The arrays (.npz) or columns (Parquet) `names` ({setting: name}) of one file; errors name the setting and the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}.{path_key}: no such file: {p.absolute()} (a relative path starts at the "
                                f"working directory)")
    suffix = p.suffix.lower()
    _check_file_type(p, f"{key}.{path_key}")
    try:
        if suffix == ".npz":
            store = np.load(p, allow_pickle=False)
            have = list(store.files)
        else:
            store = pq.read_table(p)
            have = store.column_names
    except Exception as e:  # numpy and pyarrow raise several types for a foreign or truncated file
        damaged = "a damaged .npz archive (cut short while it was written or copied?)" if suffix == ".npz" else \
            "a damaged Parquet file"
        raise ValueError(f"{key}.{path_key}: cannot read {p.absolute()}, {damaged}: {type(e).__name__}: {e}") from e
    out = {}
    for setting, name in names.items():
        if name not in have:
            raise ValueError(f"{key}.{setting}: no {'array' if suffix == '.npz' else 'column'} {name!r} in {p} "
                           f"(it has: {', '.join(have)}){hint}")
        try:
            out[setting] = store[name] if suffix == ".npz" else _column_array(store.column(name), f"column {name!r} of {p}")
        except ValueError as e:  # e.g. an object array, which would need pickle
            why = (" (an array of Python objects, which only pickle can read; save it as a numeric or string array, "
                   "e.g. numpy.stack(rows))" if "allow_pickle" in str(e) else "")
            raise ValueError(f"{key}.{setting}: cannot read {name!r} from {p}: {e}{why}") from e
        except Exception as e:  # a damaged member of a zip archive
            raise ValueError(f"{key}.{setting}: cannot read {name!r} from {p}, a damaged file: {type(e).__name__}: "
                             f"{e}") from e
    return out


def load_files(train, test, x_key, y_key, id_key, split_key, shape, seed, label_noise, subsample_train,
               subsample_test, standardize, spurious=None) -> Dataset:
    """Inputs and labels from .npz or Parquet files: `train` and `test`, or one `train` file
    whose `split_key` array/column says "train" or "test" for each row.

    Inputs are the `x_key` array (n, ...) of a .npz, or the `x_key` column of a Parquet file
    (a number, or a list, possibly nested, of equal length per row); `shape` reshapes each
    example (e.g. [3, 32, 32] for flat images). Labels: the `y_key` array, class indices.
    `id_key`, if set, names each example's own id (integers or strings; kept as `source_id`).
    """
    key = "data.files"
    names = {"x_key": x_key, "y_key": y_key, **({"id_key": id_key} if id_key else {})}
    if test is None:
        arrays = _read_arrays(train, {**names, "split_key": split_key}, key, "train",
                              hint=f"; {key}.test is null, so this file must say each row's split")
        which = arrays.pop("split_key").astype(str)
        bad = sorted(str(v) for v in set(np.unique(which)) - {"train", "test"})
        if bad:
            raise ValueError(f"{key}.split_key: {split_key!r} in {Path(train)} has values {bad[:5]}; expected 'train' "
                             f"or 'test'")
        parts = {s: ({k: v[which == s] for k, v in arrays.items()}, train) for s in ("train", "test")}
        where = {s: (f"{key}.train: {Path(train).absolute()} (its rows with {split_key} {s!r})", np.flatnonzero(which == s))
                 for s in ("train", "test")}
    else:
        parts = {"train": (_read_arrays(train, names, key, "train"), train),
                 "test": (_read_arrays(test, names, key, "test"), test)}
        where = {s: (f"{key}.{s}: {Path(path).absolute()}", None) for s, path in (("train", train), ("test", test))}
    splits = []
    for split, (arrays, path) in parts.items():
        x = arrays["x_key"]
        if shape is not None:
            if np.prod(x.shape[1:], dtype=np.int64) != np.prod(shape, dtype=np.int64):
                raise ValueError(f"{key}.shape: {shape} does not fit the {split} inputs of {path}, shaped "
                                 f"{list(x.shape[1:])} per example")
            x = x.reshape(len(x), *shape)
        try:
            one = as_split(x, arrays["y_key"], arrays.get("id_key"), what=f"the {split} split")
        except ValueError as e:
            raise ValueError(f"{key}: {path}: {e}") from e
        splits.append(replace(one, where=where[split][0], rows=where[split][1]))
    kind = "column" if Path(train).suffix.lower() in PARQUET_SUFFIXES else "array"
    return labelled_dataset(*splits, n_classes=None, seed=seed, label_noise=label_noise, subsample_train=subsample_train,
                            subsample_test=subsample_test, standardize=standardize, key=key, strict=True,
                            inputs=f"inputs ({kind} {x_key!r})", spurious=spurious)


# ---- a python factory ------------------------------------------------------------------------
FACTORY_CONTRACT = ("expected ((x_train, y_train), (x_test, y_test)): numpy arrays or tensors, inputs shaped "
                    "(n, ...) and integer class labels (n,)")


def load_python(factory, kwargs, seed, label_noise, subsample_train, subsample_test, standardize,
                spurious=None) -> Dataset:
    """The splits a function of the user's returns: `factory(**kwargs)` ->
    ((x_train, y_train), (x_test, y_test)), numpy arrays or torch tensors (anything
    numpy.asarray takes), inputs (n, ...) in the shape the model should receive, labels
    class indices. "package.module:function" is imported with the working directory on
    sys.path (`factories.resolve`). Every failure is a FactoryError naming data.python.factory,
    the value and the reason.
    """
    key = "data.python.factory"
    make = factories.resolve(factory, key=key)
    try:
        result = make(**kwargs)
    except Exception as e:  # the user's code raised: say where, keep its traceback
        raise factories.FactoryError(key, factory, f"calling it with kwargs {kwargs} raised {type(e).__name__}: {e}") from e
    try:
        (x_train, y_train), (x_test, y_test) = result
    except (TypeError, ValueError):
        got = type(result).__name__ + (f" of length {len(result)}" if hasattr(result, "__len__") else "")
        raise factories.FactoryError(key, factory, f"it returned a {got}; {FACTORY_CONTRACT}") from None
    try:
        train = as_split(x_train, y_train, what="the train split")
        test = as_split(x_test, y_test, what="the test split")
    except ValueError as e:
        raise factories.FactoryError(key, factory, f"{e}; {FACTORY_CONTRACT}") from None
    train, test = (replace(s, where=f"{key}: {factory!r}, its {name} split") for s, name in ((train, "train"), (test, "test")))
    return labelled_dataset(train, test, n_classes=None, seed=seed, label_noise=label_noise,
                            subsample_train=subsample_train, subsample_test=subsample_test, standardize=standardize,
                            key="data.python", strict=True, spurious=spurious)


# ---- dispatch --------------------------------------------------------------------------------
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
