"""Markdown reports: one per run, one per sweep, built from a run's artifacts.

`headline` condenses a run into the figures a researcher compares across a sweep: final
accuracies, when train and test accuracy crossed their thresholds (the grokking delay),
sharpness against 2/lr, and detection quality where the data plants ground truth.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

TRAIN_FIT = 0.99  # train accuracy taken as "memorized"
TEST_FIT = 0.95  # test accuracy taken as "generalized"


def first_step(metrics: pd.DataFrame, column: str, threshold: float) -> float:
    """First logged step at which `column` reaches `threshold`; NaN if never."""
    hit = metrics.loc[metrics[column] >= threshold, "step"]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def headline(metrics: pd.DataFrame, summary: dict, curvature: pd.DataFrame) -> dict:
    last = metrics.iloc[-1]
    fit, gen = first_step(metrics, "train_acc", TRAIN_FIT), first_step(metrics, "test_acc", TEST_FIT)
    cos_rule = [r for r in summary["per_step"] if r["detector"] == "cos_rule"]
    out = {
        "final_train_acc": float(last["train_acc"]),
        "final_test_acc": float(last["test_acc"]),
        "final_train_loss": float(last["train_loss"]),
        "final_test_loss": float(last["test_loss"]),
        f"step_train_acc_{int(TRAIN_FIT * 100)}": fit,
        f"step_test_acc_{int(TEST_FIT * 100)}": gen,
        "generalization_delay_steps": gen - fit,
        "max_sharpness": float(curvature["sharpness"].max()),
        "final_sharpness": float(curvature.sort_values("step")["sharpness"].iloc[-1]),
        "sharpness_threshold": float(curvature["sharpness_threshold"].iloc[0]),
        "final_flagged_cos_rule": int(cos_rule[-1]["n_flagged"]) if cos_rule else 0,
        "train_wall_s": float(last["wall_s"]),
    }
    for key, value in (summary.get("headline") or {}).items():
        out[key] = value
    return out


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        return f"{v:.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.4g}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def render_run_report(run_id: str, *, config_yaml: str, head: dict, summary: dict, curvature: pd.DataFrame,
                      figures: dict[str, str]) -> str:
    """The run's report.md; `figures` maps names (training, flagged, curvature, gif) to paths relative to it."""
    per_step = pd.DataFrame(summary["per_step"])
    quality_cols = [c for c in ("detector", "step", "n_flagged", "auroc", "precision", "recall") if c in per_step]
    columns = ["step", "sharpness", "sharpness_threshold", "update_sharpness", "hessian_trace", "hessian_trace_stderr",
               "fisher_trace", "gauss_newton_trace", "input_jacobian_norm", "input_hessian_trace", "hvp_count"]
    curv = curvature.sort_values("step")[[c for c in columns if c in curvature
                                          and not (curvature[c].dtype.kind == "f" and curvature[c].isna().all())]]
    planted = summary.get("planted_count")
    truth = (f"The data plants {planted} examples (ground truth); AUROC scores each detector's continuous score "
             "against them, precision and recall its flags." if planted else
             "This dataset plants no ground truth, so only flag counts are shown.")
    parts = [
        f"# Run `{run_id}`",
        "## Headline figures",
        markdown_table(pd.DataFrame({"figure": list(head), "value": list(head.values())})),
        f"Memorized = first logged step with train accuracy ≥ {TRAIN_FIT}; generalized = test accuracy ≥ {TEST_FIT}.",
        "## Training",
        f"![Loss and accuracy]({figures['training']})",
        "## Opposing signals and detection quality",
        f"Detectors: `cos_rule` flags an example whose gradient has cosine below "
        f"{summary['settings']['cos_threshold']} with the mean training gradient (score: −cosine); `delta_loss` flags "
        f"the {summary['settings']['top_k']} examples with the largest |loss change| since the previous checkpoint "
        f"(score: |Δloss|); `high_loss` flags misclassified examples (score: loss). {truth}",
        f"![Flagged examples]({figures['flagged']})",
        markdown_table(per_step[quality_cols]),
        "## Curvature",
        "On the fixed curvature subset: sharpness (top Hessian eigenvalue, Lanczos) against the stability "
        "threshold 2/lr (2(1+β)/lr with momentum); update sharpness u'Hu/|u|² along the optimizer's next update; "
        "traces of the Hessian (Hutchinson, ± standard error), the empirical Fisher and the Gauss-Newton matrix "
        "(Monte Carlo); the input-Jacobian norm and input-Hessian trace (dense inputs).",
        f"![Curvature]({figures['curvature']})",
        markdown_table(curv),
        *([f"![Spectral density]({figures['density']})"] if figures.get("density") else []),
        "## Gradient projections",
        "Each example's gradient, randomly projected (fixed seed), in a PCA plane fitted once over all checkpoints; "
        f"frames are in `figures/pca_frames/`.\n\n![Gradient projections]({figures['gif']})",
        "## Resolved config",
        f"```yaml\n{config_yaml.rstrip()}\n```",
    ]
    return "\n\n".join(parts) + "\n"


def render_sweep_report(experiment: str, runs: pd.DataFrame, comparison: str) -> str:
    """The sweep's report.md: one table row per run (varying parameters, then headline figures)."""
    shown = [c for c in runs.columns if c not in ("run_id",)]
    parts = [
        f"# Sweep `{experiment}`",
        f"{len(runs)} runs. Full table: `runs.parquet` (one row per run). Each run's own report: `results/runs/{experiment}/<run>/report.md`.",
        markdown_table(runs[shown]),
        f"![Accuracy of every run]({comparison})",
    ]
    return "\n\n".join(parts) + "\n"
