"""Opposing signals after Rosenfeld & Risteski (2023, arXiv 2311.04163): groups and their losses.

At each pair of consecutive checkpoints (t_prev, t):
1. the `top_k` training examples with the largest |loss(t) - loss(t_prev)| are selected;
2. they are split into `n_groups` groups by the direction of their gradients: spherical
   k-means (k-means++ start, `n_init` restarts, seeded) on their unit-normalized gradient
   projections at t_prev, the gradients that drove the change over the interval;
3. each pair of groups gets the cosine between the groups' mean projected gradients (random
   projections keep cosines within the Johnson-Lindenstrauss error); a pair with a negative
   cosine is an opposing pair;
4. each group's mean loss is followed across all checkpoints, so the alternating rise and
   fall of the two groups of an opposing pair can be seen.
The per-example loss changes of every interval are kept too (the Δloss distribution).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from .signals import Trajectories


def kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 4, max_iter: int = 100) -> np.ndarray:
    """Labels (n,) of Lloyd's k-means on the rows of x, best of n_init k-means++ starts by
    within-cluster sum of squares; groups renumbered by size, largest first."""
    n = len(x)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    best_labels, best_inertia = np.zeros(n, dtype=np.int64), np.inf
    for _ in range(n_init):
        centers = x[[rng.integers(n)]]
        for _ in range(1, k):
            d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1).min(1)
            pick = rng.choice(n, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(n)
            centers = np.vstack([centers, x[pick]])
        for _ in range(max_iter):
            labels = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
            new = np.array([x[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
            if np.array_equal(new, centers):
                break
            centers = new
        labels = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        inertia = float(((x - centers[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    sizes = np.bincount(best_labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")  # old label of the new group 0, 1, ...
    return np.argsort(order)[best_labels]


def loss_changes(tr: Trajectories) -> pd.DataFrame:
    """Per-example loss change over each checkpoint interval: step_from, step_to, example_id, delta_loss."""
    delta = np.diff(tr.values["loss"], axis=0)  # (T - 1, n)
    n = len(tr.example_ids)
    return pd.DataFrame({
        "step_from": np.repeat(tr.steps[:-1], n),
        "step_to": np.repeat(tr.steps[1:], n),
        "example_id": np.tile(tr.example_ids, len(delta)),
        "delta_loss": delta.ravel(),
    })


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def find_groups(tr: Trajectories, *, top_k: int, n_groups: int, seed: int, n_init: int = 4):
    """(groups, pairs, group_losses) over every checkpoint interval.

    groups: step_from, step_to, group, example_id, delta_loss (the selected examples);
    pairs: step_from, step_to, group_a, group_b, size_a, size_b, mean_delta_a, mean_delta_b,
    cosine, opposing; group_losses: step_from, step_to, group, step, mean_loss (every checkpoint).
    """
    if tr.proj is None:
        raise ValueError("grouping by gradient direction needs the gradient projections (grad_proj) of the per-example table")
    loss = tr.values["loss"]
    group_rows, pair_rows, loss_rows = [], [], []
    for t in range(1, len(tr.steps)):
        step_from, step_to = int(tr.steps[t - 1]), int(tr.steps[t])
        delta = loss[t] - loss[t - 1]
        top = np.argsort(-np.abs(delta), kind="stable")[: min(top_k, len(delta))]
        g = tr.proj[t - 1, top]  # (top_k, proj_dim)
        unit = g / np.clip(np.linalg.norm(g, axis=1, keepdims=True), 1e-30, None)
        labels = kmeans(unit, n_groups, seed=seed + t, n_init=n_init)
        means = {j: g[labels == j].mean(0) for j in np.unique(labels)}
        group_rows.append(pd.DataFrame({"step_from": step_from, "step_to": step_to, "group": labels,
                                        "example_id": tr.example_ids[top], "delta_loss": delta[top]}))
        for a, b in itertools.combinations(sorted(means), 2):
            cos = _cos(means[a], means[b])
            pair_rows.append({"step_from": step_from, "step_to": step_to, "group_a": a, "group_b": b,
                              "size_a": int((labels == a).sum()), "size_b": int((labels == b).sum()),
                              "mean_delta_a": float(delta[top][labels == a].mean()),
                              "mean_delta_b": float(delta[top][labels == b].mean()),
                              "cosine": cos, "opposing": cos < 0})
        for j in sorted(means):
            loss_rows.append(pd.DataFrame({"step_from": step_from, "step_to": step_to, "group": j, "step": tr.steps,
                                           "mean_loss": loss[:, top[labels == j]].mean(1)}))
    empty = {"groups": ["step_from", "step_to", "group", "example_id", "delta_loss"],
             "pairs": ["step_from", "step_to", "group_a", "group_b", "size_a", "size_b", "mean_delta_a", "mean_delta_b",
                       "cosine", "opposing"],
             "losses": ["step_from", "step_to", "group", "step", "mean_loss"]}
    groups = pd.concat(group_rows, ignore_index=True) if group_rows else pd.DataFrame(columns=empty["groups"])
    pairs = pd.DataFrame(pair_rows, columns=empty["pairs"])
    losses = pd.concat(loss_rows, ignore_index=True) if loss_rows else pd.DataFrame(columns=empty["losses"])
    return groups, pairs, losses
