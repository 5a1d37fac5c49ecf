"""Detectors measured against planted ground truth.

Per detector and checkpoint: AUROC and average precision of the continuous score, precision
and recall at k = the planted count (the k highest scores), and precision and recall of the
detector's own flags. For the opposing groups: how pure the recovered groups are, whether
the two planted groups come out as an opposing pair, and how purely each interval's top opposing
pair sets one planted group against another (`pair_purity`, `top_pair_summary`).
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


def top_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Each checkpoint interval's top opposing pair: of its opposing pairs (cosine < 0), the one whose
    groups' mean gradients are most opposed (most negative cosine; ties to the larger smaller group,
    then the lower group numbers), `timeline.top_pair`'s rule within each interval. The rows of
    `pairs`, one per interval that has an opposing pair, in step order."""
    p = pairs[pairs["opposing"].astype(bool)]
    if p.empty:
        return p.reset_index(drop=True)
    p = p.assign(_smaller=-np.minimum(p["size_a"].to_numpy(dtype=float), p["size_b"].to_numpy(dtype=float)))
    best = p.sort_values(["step_from", "step_to", "cosine", "_smaller", "group_a", "group_b"], kind="stable")
    return best.drop_duplicates(["step_from", "step_to"]).drop(columns="_smaller").reset_index(drop=True)


PURE = 0.9  # a top pair whose groups are both at least this pure, each in its own planted group, counts as pure
PAIR_PURITY_COLUMNS = ["step_from", "step_to", "group_a", "group_b", "size_a", "size_b", "cosine", "side_a", "side_b",
                       "in_side_a", "in_side_b", "purity_a", "purity_b", "side_purity", "purity", "mean_delta_a",
                       "mean_delta_b", "opposite_moves"]


def pair_purity(groups: pd.DataFrame, pairs: pd.DataFrame, planted_groups: dict | None) -> pd.DataFrame:
    """How well each interval's top opposing pair (`top_pairs`) sets one named planted group against
    another (e.g. a spurious feature's aligned against its conflicting examples).

    One row per interval with an opposing pair (PAIR_PURITY_COLUMNS): the pair (group_a, group_b,
    size_a, size_b, cosine); side_a and side_b, the two different planted groups the sides stand
    for, chosen to maximize the purity (ties: the side_purity); in_side_a (in_side_b), the members
    of group_a (group_b) in side_a (side_b); purity_a = in_side_a / size_a and purity_b, each
    group's share of its side; side_purity, the lower of the two (at least PURE: both groups 90%
    pure, each in a different planted group; 0 where both groups are of one planted group);
    purity = (in_side_a + in_side_b) / (size_a + size_b), the size-weighted share of the pair's
    examples on their side (1: one group all of one planted group, the other all of another; a
    large pure group beside a small impure one scores high here, but not in side_purity);
    mean_delta_a and mean_delta_b, each group's mean loss change over the interval, and
    opposite_moves: one rose while the other fell (the pair in antiphase over its interval).
    Empty without two named planted groups."""
    names = sorted(planted_groups or {})
    if len(names) < 2 or groups.empty or pairs.empty:
        return pd.DataFrame(columns=PAIR_PURITY_COLUMNS)
    truth = groups.assign(truth=truth_labels(groups["example_id"], None, planted_groups))
    counts = truth.groupby(["step_from", "step_to", "group", "truth"]).size()
    rows = []
    for p in top_pairs(pairs).itertuples(index=False):
        def n(group, name):
            return int(counts.get((p.step_from, p.step_to, group, name), 0))

        size_a, size_b = int(p.size_a), int(p.size_b)
        side_a, side_b = max(((a, b) for a in names for b in names if a != b),
                             key=lambda s: (n(p.group_a, s[0]) + n(p.group_b, s[1]),
                                            min(n(p.group_a, s[0]) / size_a, n(p.group_b, s[1]) / size_b)))
        in_a, in_b = n(p.group_a, side_a), n(p.group_b, side_b)
        rows.append({"step_from": int(p.step_from), "step_to": int(p.step_to), "group_a": int(p.group_a),
                     "group_b": int(p.group_b), "size_a": size_a, "size_b": size_b, "cosine": float(p.cosine),
                     "side_a": side_a, "side_b": side_b, "in_side_a": in_a, "in_side_b": in_b,
                     "purity_a": in_a / size_a, "purity_b": in_b / size_b,
                     "side_purity": min(in_a / size_a, in_b / size_b), "purity": (in_a + in_b) / (size_a + size_b),
                     "mean_delta_a": float(p.mean_delta_a), "mean_delta_b": float(p.mean_delta_b),
                     "opposite_moves": bool(p.mean_delta_a * p.mean_delta_b < 0)})
    return pd.DataFrame(rows, columns=PAIR_PURITY_COLUMNS)


def planted_group_changes(loss_changes: pd.DataFrame, planted_groups: dict | None) -> pd.DataFrame:
    """Each named planted group's mean loss change over each checkpoint interval (from the
    loss_changes table, `opposing.loss_changes`): step_from, step_to and a column per group, in
    step order; empty without named planted groups. Where a spurious feature is learned, its
    aligned group's loss falls while its conflicting group's rises."""
    names = sorted(planted_groups or {})
    if not names or loss_changes.empty:
        return pd.DataFrame(columns=["step_from", "step_to", *names])
    labelled = loss_changes.assign(truth=truth_labels(loss_changes["example_id"], None, planted_groups))
    labelled = labelled[labelled["truth"].isin(names)]
    table = labelled.groupby(["step_from", "step_to", "truth"])["delta_loss"].mean().unstack("truth")
    return table.reindex(columns=names).rename_axis(columns=None).reset_index()


def top_pair_summary(groups: pd.DataFrame, pairs: pd.DataFrame, loss_changes: pd.DataFrame,
                     planted_groups: dict | None) -> dict:
    """The signals summary's judgement of each interval's top opposing pair against the planted groups.

    intervals: one record per `pair_purity` row, with planted_delta (each named planted group's mean
    loss change over the interval, `planted_group_changes`) and planted_opposed (one of them rose
    while another fell: where a spurious feature is learned, its aligned group's loss falls as its
    conflicting group's rises). Over the planted_opposed intervals: n_opposed; the mean and lowest
    size-weighted purity (opposed_mean_purity, opposed_min_purity) and side_purity
    (opposed_mean_side_purity, opposed_min_side_purity), None where there are none; and
    n_opposed_pure, those whose top pair has both groups at least PURE pure (side_purity)."""
    table = pair_purity(groups, pairs, planted_groups)
    changes = planted_group_changes(loss_changes, planted_groups).set_index(["step_from", "step_to"])
    records = []
    for row in table.to_dict(orient="records"):
        delta = changes.loc[(row["step_from"], row["step_to"])] if (row["step_from"], row["step_to"]) in changes.index \
            else pd.Series(dtype=float)
        delta = {str(k): float(v) for k, v in delta.items() if pd.notna(v)}
        records.append({**row, "planted_delta": delta,
                        "planted_opposed": bool(delta) and max(delta.values()) > 0 > min(delta.values())})
    opposed = [r for r in records if r["planted_opposed"]]
    out = {"intervals": records, "n_opposed": len(opposed),
           "n_opposed_pure": sum(r["side_purity"] >= PURE for r in opposed)}
    for key, column in (("purity", "purity"), ("side_purity", "side_purity")):
        values = [r[column] for r in opposed]
        out[f"opposed_mean_{key}"] = float(np.mean(values)) if values else None
        out[f"opposed_min_{key}"] = float(np.min(values)) if values else None
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
