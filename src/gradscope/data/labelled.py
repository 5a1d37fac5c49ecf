"""The labelled sources' finishing step (`labelled_dataset`), which MNIST-1D, torchvision, files and
python share: a seeded subsample of either split, planted label noise on the training split (the
flipped ids are the planted truth, as for `digits`), and standardization fitted on the training
split, per feature or per channel; optionally a planted spurious feature (`gradscope.data.spurious`).
Their inputs keep their shape: `meta["input"]["shape"]` is the per-example shape the model
receives ([1, 40] for MNIST-1D, [C, H, W] for images); the Parquet `x` column stays flat.

Before anything is drawn, the splits are checked: finite inputs and labels that fit the classes,
messages naming the split and its rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from gradscope.data.common import Dataset, flip_labels, standardize_inputs
from gradscope.data.noise import check_noise, declared_mask, plant_noise, read_ids
from gradscope.data.spurious import (SPURIOUS_GROUPS, plant_spurious, refuse_noise_with_spurious, spurious_attributes,
                                     spurious_kind, spurious_masks)

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split as a source yields it, before subsampling."""

    x: np.ndarray  # (n, *shape) float32 inputs
    y: np.ndarray  # (n,) int64 class labels
    source_id: np.ndarray  # (n,) each example's id in the source: its row index unless the source names ids
    where: str = ""  # what messages call it: "data.files.train: /abs/train.npz", "data.python.factory: 'm:f', its train split"
    rows: np.ndarray | None = None  # each example's row in its file, where that is not its index (one file, both splits)
    declared: np.ndarray | None = None  # (n,) bool: labels the user declares wrong (gradscope.data.noise), or None


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
    return Split(split.x[idx], split.y[idx], split.source_id[idx], split.where,
                 declared=None if split.declared is None else split.declared[idx])


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



def labelled_dataset(train: Split, test: Split, *, n_classes: int | None, seed: int, label_noise: float,
                     subsample_train: int | None, subsample_test: int | None, standardize: str | None,
                     key: str, strict: bool = False, inputs: str = "inputs", spurious: dict | None = None,
                     noise: dict | None = None, planted_ids=None) -> Dataset:
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
    - noise, planted_ids (and a files source's planted_key, as `train.declared`): label noise you know
      of, and class-conditional noise planted on top (gradscope.data.noise, its own stream of seed,
      spawn(5)[4]); the union is the planted truth, `meta["planted"]["declared_ids"]` and `meta["noise"]`
      say which is which. noise is refused together with label_noise > 0 or spurious.
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
    pairs = None
    if noise is not None:
        if label_noise > 0 or spurious is not None:
            raise ValueError(f"{key}.noise together with {key}.{'label_noise' if label_noise > 0 else 'spurious'}: both "
                             f"would plant the ground truth; allowed: one of them")
        pairs = check_noise(noise, n_classes, key)
    if spurious is not None and (planted_ids is not None or train.declared is not None):
        raise ValueError(f"{key}.spurious together with declared noisy labels ({key}.planted_ids or planted_key): both "
                         f"would be the planted truth; allowed: one of them")
    if planted_ids is not None:
        declared = declared_mask(train.source_id, read_ids(planted_ids, f"{key}.planted_ids"), f"{key}.planted_ids",
                                 train.where)
        train = replace(train, declared=declared if train.declared is None else (train.declared | declared))
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
    moved = None
    if pairs is not None:
        labels, flipped, moved = plant_noise(train.y, pairs, np.random.default_rng(np.random.SeedSequence(seed).spawn(5)[4]),
                                             exclude=train.declared)
    declared_ids = np.flatnonzero(train.declared) if train.declared is not None else np.zeros(0, dtype=np.int64)
    truth = np.union1d(flipped, declared_ids).astype(np.int64)
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

    planted = None
    if len(truth):
        said = [what for what, ids in (("whose label was changed to another class", flipped),
                                       ("whose label the data's owner declares wrong", declared_ids)) if len(ids)]
        planted = {"description": "training examples " + " or ".join(said), "train_ids": truth.tolist()}
        if train.declared is not None:
            planted["declared_ids"] = declared_ids.tolist()
    meta = {"input": {"kind": "dense", "dim": dim, "vocab": 0, "n_classes": n_classes, "shape": shape},
            "planted": planted, "standardize": stats}
    if moved is not None:
        meta["noise"] = {**noise, "moved": moved}
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
    return (table(x[:n_train], train, labels, np.isin(np.arange(n_train), truth)),
            table(x[n_train:], test, test.y, np.zeros(len(test.y), dtype=bool)), meta)
