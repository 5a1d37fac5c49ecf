"""Detectors measured against planted ground truth.

Per detector and checkpoint: AUROC and average precision of the continuous score, precision
and recall at k = the planted count (the k highest scores), and precision and recall of the
detector's own flags. For the opposing groups: how pure the recovered groups are and whether
the two planted groups come out as an opposing pair.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


QUALITY = ("auroc", "average_precision", "precision_at_k", "recall_at_k", "precision", "recall")


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores, labels) -> float:
    """Mean, over the positives, of the precision among the examples scoring at least as high
    (ties counted against the detector: a tied block is taken whole); NaN without positives."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, l = scores[order], labels[order]
    # the end of each tied block: precision is read at the block's last position
    block_end = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    ends = block_end[np.searchsorted(block_end, np.arange(len(s)))]
    hits = np.cumsum(l)
    precision_at = hits[ends] / (ends + 1)
    return float(precision_at[l].mean())


def precision_recall(flagged, labels) -> tuple[float, float]:
    flagged, labels = np.asarray(flagged, dtype=bool), np.asarray(labels, dtype=bool)
    hits = (flagged & labels).sum()
    precision = hits / flagged.sum() if flagged.any() else float("nan")
    recall = hits / labels.sum() if labels.any() else float("nan")
    return float(precision), float(recall)


def at_k(scores, labels, k: int) -> tuple[float, float]:
    """Precision and recall of the k highest scores (ties in input order)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    top = np.zeros(len(scores), dtype=bool)
    top[np.argsort(-scores, kind="stable")[:k]] = True
    return precision_recall(top, labels)


def evaluate(detections: pd.DataFrame, planted_ids) -> pd.DataFrame:
    """Per detector and step: n_flagged, and with planted truth auroc, average_precision,
    precision_at_k and recall_at_k (k = planted count), precision and recall of the flags
    (NaN without planted truth)."""
    planted = None if planted_ids is None else np.asarray(sorted(int(i) for i in planted_ids))
    rows = []
    for (detector, step), d in detections.groupby(["detector", "step"], sort=True):
        row = {"detector": detector, "step": int(step), "n_flagged": int(d["flagged"].sum()),
               **{k: float("nan") for k in QUALITY}}
        if planted is not None:
            truth = np.isin(d["example_id"].to_numpy(), planted)
            row["auroc"] = auroc(d["score"], truth)
            row["average_precision"] = average_precision(d["score"], truth)
            row["precision_at_k"], row["recall_at_k"] = at_k(d["score"], truth, len(planted))
            row["precision"], row["recall"] = precision_recall(d["flagged"], truth)
        rows.append(row)
    return pd.DataFrame(rows, columns=["detector", "step", "n_flagged", *QUALITY])


def truth_labels(example_ids, planted_ids, planted_groups: dict | None) -> np.ndarray:
    """Each example's planted class: its planted group's name, "planted" (planted, no named
    group), or "none"."""
    ids = np.asarray(example_ids)
    labels = np.full(len(ids), "none", dtype=object)
    if planted_ids is not None:
        labels[np.isin(ids, list(planted_ids))] = "planted"
    for name, members in (planted_groups or {}).items():
        labels[np.isin(ids, list(members))] = name
    return labels


def group_composition(groups: pd.DataFrame, planted_ids, planted_groups: dict | None) -> pd.DataFrame:
    """Per recovered group (step_from, step_to, group): size, majority planted class and purity
    (the majority's share of the group)."""
    labelled = groups.assign(truth=truth_labels(groups["example_id"], planted_ids, planted_groups))
    rows = []
    for (a, b, g), d in labelled.groupby(["step_from", "step_to", "group"], sort=True):
        counts = d["truth"].value_counts()
        rows.append({"step_from": int(a), "step_to": int(b), "group": int(g), "size": len(d),
                     "majority": str(counts.index[0]), "purity": float(counts.iloc[0] / len(d))})
    return pd.DataFrame(rows, columns=["step_from", "step_to", "group", "size", "majority", "purity"])


def evaluate_groups(groups: pd.DataFrame, pairs: pd.DataFrame, planted_ids, planted_groups: dict | None) -> dict:
    """How pure the recovered groups are, and whether the planted pair is found.

    mean_purity: size-weighted purity over every group of every interval; chance_purity: the
    same for groups drawn at random from each interval's selected examples (the majority
    class's share of them), the baseline mean_purity must beat; planted_group_purity: over the
    groups whose majority is planted. With two or more named planted groups,
    planted_pair_found says whether some opposing pair has a different planted group as the
    majority of each side (each purity > 0.5), and planted_pair_steps at which intervals' ends.
    Without planted truth every figure is NaN (None for the pair).
    """
    out = {"mean_purity": float("nan"), "chance_purity": float("nan"), "planted_group_purity": float("nan"),
           "planted_pair_found": None, "planted_pair_steps": []}
    if planted_ids is None or groups.empty:  # nothing to be pure about
        return out
    comp = group_composition(groups, planted_ids, planted_groups)
    labelled = groups.assign(truth=truth_labels(groups["example_id"], planted_ids, planted_groups))
    chance = labelled.groupby(["step_from", "step_to"])["truth"].agg(lambda t: t.value_counts().iloc[0] / len(t))
    sizes = labelled.groupby(["step_from", "step_to"]).size()
    planted_majority = comp[comp["majority"] != "none"]
    out.update({
        "mean_purity": float((comp["purity"] * comp["size"]).sum() / comp["size"].sum()),
        "chance_purity": float((chance * sizes).sum() / sizes.sum()),
        "planted_group_purity": (float((planted_majority["purity"] * planted_majority["size"]).sum()
                                       / planted_majority["size"].sum()) if len(planted_majority) else float("nan")),
    })
    if len(planted_groups or {}) >= 2:
        found = pairs.loc[planted_pairs(pairs, comp), "step_to"]
        out["planted_pair_found"] = bool(len(found))
        out["planted_pair_steps"] = sorted(set(int(s) for s in found))
    return out


def planted_pairs(pairs: pd.DataFrame, composition: pd.DataFrame) -> np.ndarray:
    """Per row of `pairs`: an opposing pair whose two groups have different named planted
    groups as their majorities, each with purity over one half (the planted pair recovered)."""
    if composition.empty or pairs.empty:
        return np.zeros(len(pairs), dtype=bool)
    key = composition.set_index(["step_from", "step_to", "group"])
    named = key[~key["majority"].isin(["none", "planted"]) & (key["purity"] > 0.5)]["majority"]
    a = pd.MultiIndex.from_arrays([pairs["step_from"], pairs["step_to"], pairs["group_a"]])
    b = pd.MultiIndex.from_arrays([pairs["step_from"], pairs["step_to"], pairs["group_b"]])
    major_a, major_b = named.reindex(a).to_numpy(), named.reindex(b).to_numpy()
    return (pairs["opposing"].to_numpy(dtype=bool) & pd.notna(major_a) & pd.notna(major_b)
            & (major_a != major_b))
