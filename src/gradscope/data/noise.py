"""Label noise you know of, and label noise planted on top, for the labelled sources (MNIST-1D,
torchvision, files, python): what lets a researcher score the detectors on their own data.

- Declared noisy labels: `planted_ids`, a file of source ids (the ids the source gives its examples:
  row indices, or a `files` source's `id_key` values) of training examples whose labels you know
  to be wrong; or, for a `files` source, `planted_key`, a boolean array or column of the training
  file marking them. They become planted truth as they are (their given label stays; the clean one
  is unknown, so `clean_label` repeats it).
- Planted class-conditional noise: `noise: {pairs: [{from: a, to: b, fraction: p}, ...]}` moves
  exactly round(p * n_a) training examples of class a (after subsampling; none already declared
  wrong) to class b, or
  `noise: {matrix: T}` (K x K, rows summing to 1) moves `round(T[a][b] * n_a)` of class a to each
  b != a. Draws are seeded and disjoint within a class; the moved examples are planted truth.
  (The uniform `label_noise` fraction stays as it was; the two are not combined.)

meta.json records both: `meta["planted"]["declared_ids"]` and `meta["noise"]` (the settings and the
count moved per pair), beside the union in `meta["planted"]["train_ids"]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ID_SUFFIXES = (".npy", ".txt", ".csv", ".json")


def check_noise(noise: dict, n_classes: int, key: str) -> list[tuple[int, int, float]]:
    """The (from, to, fraction) pairs of a `noise` block, checked against the classes; a ValueError
    names the key, the value and what is allowed."""
    if ("pairs" in noise) == ("matrix" in noise):
        raise ValueError(f"{key}.noise: give either pairs or matrix, not {'both' if 'pairs' in noise else 'neither'}")
    if "matrix" in noise:
        t = np.asarray(noise["matrix"], dtype=float)
        if t.shape != (n_classes, n_classes):
            raise ValueError(f"{key}.noise.matrix: shape {list(t.shape)}; allowed: {n_classes} x {n_classes} (the data's "
                             f"classes), row a giving the fraction of class a moved to each class")
        if (t < 0).any() or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError(f"{key}.noise.matrix: rows must be fractions (>= 0) summing to 1; row sums "
                             f"{np.round(t.sum(axis=1), 6).tolist()}")
        pairs = [(a, b, float(t[a, b])) for a in range(n_classes) for b in range(n_classes) if a != b and t[a, b] > 0]
    else:
        pairs = [(int(p["from"]), int(p["to"]), float(p["fraction"])) for p in noise["pairs"]]
    for i, (a, b, _) in enumerate(pairs):
        for name, c in (("from", a), ("to", b)):
            if not 0 <= c < n_classes:
                raise ValueError(f"{key}.noise.pairs[{i}].{name}: {c}; allowed: 0..{n_classes - 1} (the data's classes)")
        if a == b:
            raise ValueError(f"{key}.noise.pairs[{i}]: from and to are both {a}; allowed: two different classes")
    totals: dict[int, float] = {}
    for a, _, p in pairs:
        totals[a] = totals.get(a, 0.0) + p
    over = {a: s for a, s in totals.items() if s > 1 + 1e-9}
    if over:
        a, s = next(iter(over.items()))
        raise ValueError(f"{key}.noise: the fractions moved out of class {a} sum to {s:g}; allowed: at most 1")
    return pairs


def plant_noise(labels: np.ndarray, pairs: list[tuple[int, int, float]], rng,
                exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """(noisy labels, sorted ids moved, [{from, to, fraction, moved}]): for each pair, exactly
    round(fraction * n_from) examples of class `from` (counted before any move) relabelled `to`,
    drawn without replacement from those of the class not yet moved and not in `exclude` (labels
    already declared wrong); fewer where too few are left."""
    noisy = labels.copy()
    keep = np.ones(len(labels), bool) if exclude is None else ~exclude
    free = {int(c): list(rng.permutation(np.flatnonzero((labels == c) & keep))) for c in np.unique(labels)}
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    moved, record = [], []
    for a, b, p in pairs:
        pool = free.get(a, [])
        n = min(int(round(p * counts.get(a, 0))), len(pool))
        take, free[a] = pool[:n], pool[n:]
        noisy[take] = b
        moved += take
        record.append({"from": a, "to": b, "fraction": p, "moved": n})
    return noisy, np.sort(np.asarray(moved, dtype=np.int64)), record


def read_ids(path, key: str) -> np.ndarray:
    """The ids in a file: .npy (an array), .txt or .csv (one per line; a header line that is not an id is
    skipped), .json (a list)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{key}: no such file: {p.absolute()} (a relative path starts at the working directory)")
    suffix = p.suffix.lower()
    if suffix not in ID_SUFFIXES:
        raise ValueError(f"{key}: {p} is not a file of ids; allowed: {', '.join(ID_SUFFIXES)}")
    try:
        if suffix == ".npy":
            ids = np.load(p, allow_pickle=False).reshape(-1)
        elif suffix == ".json":
            ids = np.asarray(json.loads(p.read_text()))
        else:
            lines = [line.split(",")[0].strip() for line in p.read_text().splitlines() if line.strip()]
            if lines and not lines[0].lstrip("-").isdigit() and any(v.lstrip("-").isdigit() for v in lines[1:]):
                lines = lines[1:]  # a header
            ids = np.asarray([int(v) if v.lstrip("-").isdigit() else v for v in lines])
    except Exception as e:
        raise ValueError(f"{key}: cannot read ids from {p}: {type(e).__name__}: {e}") from e
    return ids


def declared_mask(source_id: np.ndarray, ids: np.ndarray, key: str, where: str) -> np.ndarray:
    """A boolean per training example (before subsampling): is its source id among `ids`. An id that
    is no training example's is an error naming the first such id."""
    as_text = source_id.dtype.kind in "US" or ids.dtype.kind in "US"
    have = source_id.astype(str) if as_text else source_id
    want = ids.astype(str) if as_text else ids.astype(np.int64)
    missing = np.setdiff1d(want, have)
    if len(missing):
        raise ValueError(f"{key}: {len(missing)} of its {len(want)} ids are no example of {where} (e.g. "
                         f"{missing[0].item()!r}); allowed: the source ids of training examples (row indices, or id_key's "
                         f"values)")
    return np.isin(have, want)
