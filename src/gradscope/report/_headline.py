"""A run's headline figures and how every summary writes a figure (`fmt`, `markdown_table`).

`headline` condenses a run into the figures a researcher compares across a sweep: final
accuracies, when train and test accuracy crossed their thresholds (the grokking delay, from
the signals stage's generalization events), sharpness against 2/lr, and detection quality where the data plants
ground truth. `gradscope.signals.edge_assessed` decides where 2/lr applies.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradscope import signals

# The edge-of-stability criterion of the headline (edge_step_reached, edge_tail_max_rel_dev,
# edge_at_edge): sharpness within EDGE_TOLERANCE of 2/lr over the last EDGE_TAIL of training.
EDGE_TOLERANCE, EDGE_TAIL = 0.1, 0.4


# The headline: the figures every summary shows for a run, in this order and formatted by `fmt`
# (gradscope runs and show, open_results, the run and sweep reports, the index page). The best
# detector is the one of highest AUROC at the last checkpoint (signals_headline), named beside it.
HEADLINE = ["final_train_acc", "final_test_acc", "step_generalized", "generalization_delay_steps", "max_sharpness",
            "sharpness_threshold", "best_detector", "best_detector_final_auroc"]
MISSING = "–"  # the one mark of a figure that is undefined, not measured, or does not apply


def headline(metrics: pd.DataFrame | None, summary: dict | None = None, curvature: pd.DataFrame | None = None) -> dict:
    """A run's figures as far as it got: from its metrics, the signals summary and its curvature
    tables, each None where the run has not written it. sharpness_threshold is None (not a number)
    where 2/lr does not apply (an adaptive optimizer: see `edge_assessed`), and then the edge_*
    figures are left out altogether."""
    out = {}
    if metrics is not None and len(metrics):
        last = metrics.sort_values("step").iloc[-1]
        out.update({"final_train_acc": float(last["train_acc"]), "final_test_acc": float(last["test_acc"]),
                    "final_train_loss": float(last["train_loss"]), "final_test_loss": float(last["test_loss"])})
    if summary is not None:
        gen = summary["generalization"]  # thresholds from the signals config (signals.generalization)
        out.update({"step_memorized": gen["step_memorized"], "step_generalized": gen["step_generalized"],
                    "generalization_delay_steps": gen["delay_steps"]})
    if metrics is not None and len(metrics):
        out["best_test_acc"] = float(metrics["test_acc"].max())  # how close a run that never generalized came
    if curvature is not None and len(curvature):
        thresholds = curvature["sharpness_threshold"].to_numpy(dtype=float)
        applies = bool(np.isfinite(thresholds).any())
        out.update({"max_sharpness": float(curvature["sharpness"].max()),
                    "final_sharpness": float(curvature.sort_values("step")["sharpness"].iloc[-1]),
                    "sharpness_threshold": float(thresholds[0]) if applies else None})
        if applies:
            out.update({f"edge_{k}": v for k, v in signals.edge_of_stability(curvature, tolerance=EDGE_TOLERANCE,
                                                                             tail=EDGE_TAIL).items()})
    if summary is not None:
        cos_rule = [r for r in summary["per_step"] if r["detector"] == "cos_rule"]
        out["final_flagged_cos_rule"] = int(cos_rule[-1]["n_flagged"]) if cos_rule else 0
    if metrics is not None and len(metrics) and "wall_s" in metrics:
        out["train_wall_s"] = float(metrics.sort_values("step")["wall_s"].iloc[-1])
    for key, value in ((summary or {}).get("headline") or {}).items():
        out[key] = value
    return out


def headline_figures(head: dict) -> dict:
    """The headline (HEADLINE, in order) of a run's figures: None where a figure is missing,
    undefined (NaN) or does not apply."""
    return {k: None if is_missing(head.get(k)) else head.get(k) for k in HEADLINE}


def is_missing(v) -> bool:
    """Whether a figure is missing: None, pandas' NA or NaN."""
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def fmt(v) -> str:
    """A figure as every summary prints it: MISSING for None and NaN, integers without a decimal
    point, other numbers to 4 significant digits."""
    if is_missing(v):
        return MISSING
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.4g}"
    return str(v)

def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
