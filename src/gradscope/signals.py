"""Detectors of examples that pull against training, and their scores against planted truth.

Three detectors to start, all on the training split of the per-example table:
- `cos_rule`: an example whose gradient points against the mean training gradient,
  cos(g_i, mean g) < threshold (default -0.1, the seed notebook's rule); score = -cos.
- `delta_loss`: at each pair of consecutive checkpoints, the top-k examples by
  |loss_i(t) - loss_i(t_prev)| (Rosenfeld & Risteski 2023, arXiv 2311.04163, select the largest
  per-step loss changes; they publish no threshold, so k is ours and configurable).
  Score = |delta loss|, recorded at the later checkpoint. The flagged examples whose loss
  rose and fell form two groups, written to groups.parquet.
- `high_loss`: the classic small-loss criterion for noisy labels, as a reference: score = the
  example's loss, flagged when the network misclassifies it.

Measured on the default `opposing` run: the cosine rule finds flipped labels early in
training (AUROC about 0.98 while the network learns the clean rule) and fades once the clean
examples are fit, because the flipped examples then dominate the mean gradient itself;
the loss keeps separating them (AUROC about 0.97 at the end).

Where the data plants ground truth, every detector's continuous score is judged per
checkpoint by AUROC, and its flags by precision and recall; `opposition` (the mean of -cos
over checkpoints after initialization) is the run-level score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall(flagged, labels) -> tuple[float, float]:
    flagged, labels = np.asarray(flagged, dtype=bool), np.asarray(labels, dtype=bool)
    hits = (flagged & labels).sum()
    precision = hits / flagged.sum() if flagged.any() else float("nan")
    recall = hits / labels.sum() if labels.any() else float("nan")
    return float(precision), float(recall)


def detect_cos_rule(examples: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per (step, example): score = -cos(g_i, mean g); flagged when cos < threshold."""
    return pd.DataFrame({
        "step": examples["step"].to_numpy(),
        "example_id": examples["example_id"].to_numpy(),
        "detector": "cos_rule",
        "score": -examples["grad_cos_mean"].to_numpy(),
        "flagged": examples["grad_cos_mean"].to_numpy() < threshold,
    })


def detect_high_loss(examples: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, example): score = loss; flagged when misclassified."""
    return pd.DataFrame({
        "step": examples["step"].to_numpy(),
        "example_id": examples["example_id"].to_numpy(),
        "detector": "high_loss",
        "score": examples["loss"].to_numpy(),
        "flagged": ~examples["correct"].to_numpy(dtype=bool),
    })


def loss_changes(examples: pd.DataFrame) -> pd.DataFrame:
    """Per-example loss change between consecutive checkpoints: columns step_from, step_to, example_id, delta_loss."""
    wide = examples.pivot(index="example_id", columns="step", values="loss").sort_index(axis=1)  # (examples, steps)
    steps = list(wide.columns)
    parts = [pd.DataFrame({"step_from": a, "step_to": b, "example_id": wide.index.to_numpy(),
                           "delta_loss": (wide[b] - wide[a]).to_numpy()}) for a, b in zip(steps, steps[1:])]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step_from", "step_to", "example_id", "delta_loss"])


def detect_delta_loss(changes: pd.DataFrame, top_k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-k |delta loss| per checkpoint transition: (detections, groups of rising and falling loss)."""
    changes = changes.assign(score=changes["delta_loss"].abs())
    rank = changes.groupby("step_to")["score"].rank(method="first", ascending=False)
    changes["flagged"] = rank <= top_k
    detections = pd.DataFrame({"step": changes["step_to"], "example_id": changes["example_id"],
                               "detector": "delta_loss", "score": changes["score"], "flagged": changes["flagged"]})
    top = changes[changes["flagged"]]
    groups = top.assign(group=np.where(top["delta_loss"] > 0, "loss_up", "loss_down"))
    return detections, groups[["step_from", "step_to", "group", "example_id", "delta_loss"]].reset_index(drop=True)


def evaluate(detections: pd.DataFrame, planted_ids) -> pd.DataFrame:
    """Per detector and step: flagged count, and (with planted truth) AUROC, precision, recall."""
    planted = set(int(i) for i in planted_ids) if planted_ids is not None else None
    rows = []
    for (detector, step), d in detections.groupby(["detector", "step"], sort=True):
        row = {"detector": detector, "step": int(step), "n_flagged": int(d["flagged"].sum())}
        if planted is not None:
            truth = d["example_id"].isin(planted).to_numpy()
            row["auroc"] = auroc(d["score"], truth)
            row["precision"], row["recall"] = precision_recall(d["flagged"], truth)
        rows.append(row)
    return pd.DataFrame(rows)


def opposition_score(examples: pd.DataFrame) -> pd.Series:
    """Run-level score per example: mean of -cos(g_i, mean g) over checkpoints after step 0."""
    later = examples[examples["step"] > 0] if (examples["step"] > 0).any() else examples
    return (-later["grad_cos_mean"]).groupby(later["example_id"]).mean()


def detect_signals(examples: pd.DataFrame, *, cos_threshold: float, top_k: int, planted_ids=None):
    """Run every detector on the training split's per-example table.

    Returns (detections, groups, summary): detections has one row per (step, example, detector)
    with its score and flag; summary holds per-step quality and the run-level headline.
    """
    train = examples[examples["split"] == "train"]
    cos = detect_cos_rule(train, cos_threshold)
    delta, groups = detect_delta_loss(loss_changes(train), top_k)
    detections = pd.concat([cos, delta, detect_high_loss(train)], ignore_index=True)
    per_step = evaluate(detections, planted_ids)
    opposition = opposition_score(train)
    summary = {
        "settings": {"cos_threshold": cos_threshold, "top_k": top_k},
        "n_train": int(train["example_id"].nunique()),
        "steps": sorted(int(s) for s in train["step"].unique()),
        "planted_count": None if planted_ids is None else len(planted_ids),
        "per_step": per_step.to_dict(orient="records"),
    }
    if planted_ids is not None:
        truth = opposition.index.isin(list(planted_ids))
        last = per_step.sort_values("step").groupby("detector").last()
        cos_rows = per_step[per_step["detector"] == "cos_rule"]
        summary["headline"] = {
            **{f"final_auroc_{d}": float(last.loc[d, "auroc"]) for d in last.index},
            "best_auroc_cos_rule": float(cos_rows["auroc"].max()),
            "best_step_cos_rule": int(cos_rows.loc[cos_rows["auroc"].idxmax(), "step"]),
            "opposition_auroc": auroc(opposition.to_numpy(), truth),
        }
    return detections, groups, summary
