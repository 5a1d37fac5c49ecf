"""The sweep report (report.md of an experiment): its runs, their edge of stability and timelines, the detectors
compared, and an intervention experiment's effects."""

from __future__ import annotations

import pandas as pd

from gradscope import layout
from gradscope.report._headline import EDGE_TAIL, EDGE_TOLERANCE, fmt, markdown_table
from gradscope.signals import edge_assessed
from gradscope.report._timeline import TIMELINE_SWEEP, sweep_timeline_lines

def render_sweep_report(experiment: str, runs: pd.DataFrame, detectors: pd.DataFrame, comparison: str,
                        sharpness: str) -> str:
    """The sweep's report.md: one table row per run (varying parameters, then headline figures),
    the runs' timelines (TIMELINE_SWEEP columns, where runs.parquet has them) and the detectors
    compared (their figures averaged over the runs)."""
    shown = [c for c in runs.columns if c not in ("run_id", *TIMELINE_SWEEP)]
    numeric = [c for c in detectors.columns if c not in ("detector", "run_id", "run", "last_step")]
    # NaN (–) where some run's value is undefined: an average over the other runs would pass for all of them.
    compared = detectors.groupby("detector", sort=True)[numeric].agg(lambda v: v.mean(skipna=False)).reset_index()
    if "best_auroc" in compared:
        compared = compared.sort_values("auroc", ascending=False)
    parts = [
        f"# Sweep `{experiment}`",
        f"{len(runs)} runs. Full table: `{layout.IN_SWEEP['runs']}` (one row per run). Each run's own report: `{layout.run_file('report', f'{experiment}/<run>')}`.",
        markdown_table(runs[shown]),
        f"![Accuracy of every run]({comparison})",
        "## Sharpness",
        "Each run's sharpness (top Hessian eigenvalue on its curvature subset) with its own stability threshold 2/lr "
        "(dashed, same colour; drawn only for runs trained by gradient descent, where it applies), above its training "
        "loss on the same step axis.",
        f"![Sharpness of every run]({sharpness})",
        *edge_of_stability_lines(runs),
        *sweep_timeline_lines(runs),
        "## Detectors compared",
        "Each detector's figures at the last checkpoint (and its best AUROC over checkpoints), averaged over the "
        f"{len(runs)} runs; – where a run's value is undefined (the precision of a detector that flagged nothing); "
        f"per run in `{layout.IN_SWEEP['detectors']}`.",
        markdown_table(compared),
    ]
    return "\n\n".join(parts) + "\n"


def intervention_lines(effects: pd.DataFrame, figure: str) -> list[str]:
    """The intervention section of a sweep report (gradscope.interventions): per detector, k and action, each
    figure's means per arm and the effect (flagged minus control) with its interval over seeds, and whether it
    exceeds the seed-to-seed spread; a sentence per final-test-accuracy effect."""
    from gradscope.interventions import CONFIDENCE, FIGURES

    shown = effects[effects["n_seeds"] > 0]
    lines = ["## Interventions",
             "Each run of this experiment retrains its parent run (same seed and settings) on a training set with k "
             "examples intervened on: the **flagged** arm the detector's top k, the **control** arm k random "
             "examples with as many per label. An effect is flagged minus control, paired by seed; "
             f"the interval is a {CONFIDENCE:.0%} t interval over seeds (– with one seed). Tables: "
             f"`{layout.IN_SWEEP['interventions']}` (per run, parent included) and `{layout.IN_SWEEP['effects']}`."]
    if shown.empty:
        return lines + ["No figure was measured in both arms of any seed."]
    for row in shown[shown["figure"] == "final_test_acc"].itertuples(index=False):
        verdict = ("beyond the seed-to-seed spread" if row.beyond_spread else
                   "within the seed-to-seed spread" if row.n_seeds > 1 else "one seed: no spread to compare with")
        lines.append(f"- {row.action} {row.k} by `{row.detector}`: final test accuracy {fmt(row.flagged_mean)} against "
                     f"{fmt(row.control_mean)} for the control (parent {fmt(row.parent_mean)}), effect "
                     f"{fmt(row.effect)} [{fmt(row.ci_low)}, {fmt(row.ci_high)}] over {row.n_seeds} seed(s): {verdict}.")
    table = shown.assign(figure=shown["figure"].map(FIGURES))[
        ["detector", "k", "action", "figure", "n_seeds", "parent_mean", "flagged_mean", "control_mean", "effect",
         "ci_low", "ci_high", "control_sd", "beyond_spread"]]
    return lines + [markdown_table(table), f"![Effect of each intervention against k]({figure})"]


def edge_of_stability_lines(runs: pd.DataFrame) -> list[str]:
    """The sweep's edge-of-stability verdict from the runs' headline columns (edge_*), for its runs
    trained by gradient descent: 2/lr (2(1+beta)/lr with momentum) is the stability threshold of
    SGD, not of an adaptive optimizer (Adam's edge is in its preconditioned sharpness)."""
    adaptive = ~runs["optimizer"].map(edge_assessed) if "optimizer" in runs else pd.Series(False, index=runs.index)
    if "sharpness_threshold" in runs:  # null where 2/lr does not apply (the curvature stage records it so)
        adaptive |= runs["sharpness_threshold"].isna()
    names = sorted(set(runs.loc[adaptive, "optimizer"])) if "optimizer" in runs else []
    note = ([f"{int(adaptive.sum())} run(s) trained by an adaptive optimizer"
             + (f" ({', '.join(names)})" if names else "")
             + " are left out: 2/lr is the stability threshold of gradient descent."] if adaptive.any() else [])
    runs = runs[~adaptive]
    if runs.empty or "edge_at_edge" not in runs:
        return note
    at = runs["edge_at_edge"].astype(bool)
    table = runs[["run", "sharpness_threshold", "final_sharpness", "edge_step_reached", "edge_tail_max_rel_dev",
                  "edge_at_edge"]].rename(columns={
        "sharpness_threshold": "2/lr", "edge_step_reached": f"first step ≥ {1 - EDGE_TOLERANCE:g}·2/lr",
        "edge_tail_max_rel_dev": f"largest relative deviation from 2/lr, last {EDGE_TAIL:.0%}",
        "edge_at_edge": f"within {EDGE_TOLERANCE:.0%}"})
    return [f"{int(at.sum())} of {len(runs)} runs stay within {EDGE_TOLERANCE:.0%} of 2/lr over the last "
            f"{EDGE_TAIL:.0%} of training (every checkpoint from step {1 - EDGE_TAIL:g} × the last step on):",
            markdown_table(table), *note]
