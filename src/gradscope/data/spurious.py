"""A planted spurious feature (Waterbirds / Colored-MNIST-like) for the labelled sources: a patch,
stripe or channel per class that agrees with the label on a set fraction of training examples,
its groups (aligned, conflicting) the planted truth. `gradscope.data.labelled.labelled_dataset`
plants it."""

from __future__ import annotations

import numpy as np

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
