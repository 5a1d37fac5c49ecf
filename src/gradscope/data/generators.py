"""The synthetic generators: datasets made from their settings alone.

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

(MNIST-1D, also generated from its settings, is a labelled source: `gradscope.data.sources`.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope.data.common import Dataset, flip_labels, standardize_inputs
from gradscope.dataset_facts import is_prime


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


def generate_modular(p, op, train_fraction, seed) -> Dataset:
    if op == "div" and not is_prime(p):
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
