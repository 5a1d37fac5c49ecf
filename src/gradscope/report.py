"""Markdown reports: one per run, one per sweep, built from a run's artifacts.

`headline` condenses a run into the figures a researcher compares across a sweep: final
accuracies, when train and test accuracy crossed their thresholds (the grokking delay, from
the signals stage's generalization events), sharpness against 2/lr, and detection quality where the data plants ground truth.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import yaml

from gradscope import layout, scoring, signals

# The edge-of-stability criterion of the headline (edge_step_reached, edge_tail_max_rel_dev,
# edge_at_edge): sharpness within EDGE_TOLERANCE of 2/lr over the last EDGE_TAIL of training.
EDGE_TOLERANCE, EDGE_TAIL = 0.1, 0.4


def edge_assessed(optimizer: str) -> bool:
    """Whether a run's sharpness is judged against 2/lr: the stability threshold of gradient descent
    (with momentum 2(1+beta)/lr), not of an adaptive optimizer, whose edge is in its preconditioned sharpness.

    The one place that decides it: the curvature stage records sharpness_threshold as null where it
    does not apply (and `pipeline.read_curvature` masks a table written before it did), so the
    headline, the tables, the figures, the CLI and the dashboards leave 2/lr and the edge_* figures out."""
    return optimizer == "sgd"


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
    return {k: None if _missing(head.get(k)) else head.get(k) for k in HEADLINE}


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def fmt(v) -> str:
    """A figure as every summary prints it: MISSING for None and NaN, integers without a decimal
    point, other numbers to 4 significant digits."""
    if _missing(v):
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


def render_run_report(run_id: str, *, config_yaml: str, head: dict, summary: dict, curvature: pd.DataFrame,
                      figures: dict[str, str], influence: dict | None = None,
                      progress: pd.DataFrame | None = None, timeline: dict | None = None) -> str:
    """The run's report.md; `figures` maps names (training, flagged, curvature, gif, timeline) to paths relative
    to it; `timeline`: the timeline stage's summary (timeline/summary.json), where the run has one."""
    per_step = pd.DataFrame(summary["per_step"])
    columns = ["step", "sharpness", "sharpness_threshold", "update_sharpness", "hessian_trace", "hessian_trace_stderr",
               "fisher_trace", "gauss_newton_trace", "input_jacobian_norm", "input_hessian_trace", "hvp_count",
               "ggn_top_eigenvalue", "ggn_mvp_count"]
    ggn = "ggn_top_eigenvalue" in curvature and curvature["ggn_top_eigenvalue"].notna().any()
    optimizer = yaml.safe_load(config_yaml)["optim"]["name"]
    if edge_assessed(optimizer):
        edge = (f"Edge of stability: edge_step_reached = first checkpoint with sharpness ≥ {1 - EDGE_TOLERANCE:g} × 2/lr; "
                f"edge_tail_max_rel_dev = largest |sharpness/(2/lr) − 1| over the last {EDGE_TAIL:.0%} of training; "
                f"edge_at_edge = that is at most {EDGE_TOLERANCE:g}.")
    else:  # the headline leaves the edge_* figures out, sharpness_threshold is –
        head = {k: v for k, v in head.items() if not k.startswith("edge_")}
        edge = (f"Edge of stability: not assessed, as this run trains with {optimizer}: 2/lr is the stability "
                "threshold of gradient descent (an adaptive optimizer's edge is in its preconditioned sharpness), "
                "so sharpness_threshold is – and no 2/lr line is drawn.")
    # the headline figures first, as every summary shows them (HEADLINE), then the run's other figures
    head = {**headline_figures(head), **{k: v for k, v in head.items() if k not in HEADLINE}}
    curv = curvature.sort_values("step")[[c for c in columns if c in curvature
                                          and not (curvature[c].dtype.kind == "f" and curvature[c].isna().all())
                                          and (ggn or c != "ggn_mvp_count")]]
    parts = [
        f"# Run `{run_id}`",
        "## Headline figures",
        markdown_table(pd.DataFrame({"figure": list(head), "value": list(head.values())})),
        f"Memorized = first logged step with train accuracy ≥ {summary['generalization']['train_threshold']}; "
        f"generalized = first logged step from then on with test accuracy ≥ {summary['generalization']['test_threshold']}. "
        + edge,
        "## Training",
        f"![Loss and accuracy]({figures['training']})",
        *signals_section(summary, per_step, figures),
        "## Curvature",
        "On the fixed curvature subset: sharpness (top Hessian eigenvalue, Lanczos) against the stability "
        "threshold 2/lr (2(1+β)/lr with momentum); update sharpness u'Hu/|u|² along the optimizer's next update; "
        "traces of the Hessian (Hutchinson, ± standard error), the empirical Fisher and the Gauss-Newton matrix "
        "(Monte Carlo); the input-Jacobian norm and input-Hessian trace (dense inputs)."
        + (" The top eigenvalue of the generalized Gauss-Newton J^T H_out J (Lanczos; positive semi-definite, "
           "for cross-entropy the true Fisher) sits beside the sharpness: where they part, the Hessian's "
           "second-order term of the network carries the curvature. ggn_mvp_count counts its products."
           if ggn else ""),
        f"![Curvature]({figures['curvature']})",
        markdown_table(curv),
        f"Hessian-vector products over the run: {int(curvature['hvp_count'].sum())} "
        f"({len(curvature)} checkpoints, {curvature['hvp_count'].mean():.0f} per checkpoint)"
        + (f"; GGN-vector products: {int(curvature['ggn_mvp_count'].sum())}" if ggn else "") + ".",
        *([f"![Spectral density]({figures['density']})"] if figures.get("density") else []),
        *(timeline_section(timeline, figures.get("timeline"), optimizer) if timeline is not None else []),
        *(influence_section(influence) if influence else []),
        *(progress_section(progress, figures.get("progress")) if progress is not None else []),
        "## Gradient projections",
        "Each example's gradient, randomly projected (fixed seed), in a PCA plane fitted once over all checkpoints; "
        f"frames are in `{layout.IN_RUN['frames']}/`.\n\n![Gradient projections]({figures['gif']})",
        "## Resolved config",
        f"```yaml\n{config_yaml.rstrip()}\n```",
    ]
    return "\n\n".join(parts) + "\n"


DETECTOR_TEXT = {
    "cos_rule": "cosine between the example's gradient and the mean training gradient below {threshold} (score −cosine)",
    "opposing_groups": "the {top_k} largest |loss change| since the previous checkpoint (score |Δloss|), then split "
                       "into {n_groups} groups by gradient direction",
    "loss_trajectory": "loss_increasing / loss_decreasing: least-squares loss slope over the last {window} checkpoints "
                       "beyond ±{slope_threshold}; loss_volatile: volatility above {volatility_threshold}",
    "cartography": "confidence (mean p(label) so far) below {confidence_threshold} (score 1 − confidence)",
    "forgetting": "forgotten (correct, then wrong at the next checkpoint) at least {min_events} time(s), or never "
                  "learned (score: forgetting events; never learned above any count)",
    "el2n": "EL2N, the norm of softmax error (top {flag_fraction:.0%} flagged)",
    "grand": "GraNd, the gradient norm (top {flag_fraction:.0%} flagged)",
    "aum": "area under the margin so far below {threshold} (score −AUM)",
    "tracin": "TracIn self-influence, Σ lr·|g|² over checkpoints so far (top {flag_fraction:.0%} flagged)",
    "high_loss": "misclassified (score: loss)",
}


def detector_table(per_step: pd.DataFrame) -> pd.DataFrame:
    """Per detector: its figures at its last checkpoint (NaN where undefined there, e.g. the
    precision of a detector that flags nothing: never an earlier checkpoint's value), and its
    best AUROC over checkpoints with the step (NaN where no checkpoint has one)."""
    # The whole row of the last step: groupby().last() would take each column's last non-NaN value.
    last = per_step.sort_values("step", kind="stable").groupby("detector", sort=True).tail(1)
    out = last[["detector", "step", "n_flagged", "auroc", "average_precision", "precision_at_k", "recall_at_k",
                "precision", "recall"]].rename(columns={"step": "last_step"}).sort_values("detector").reset_index(drop=True)
    if per_step["auroc"].notna().any():
        defined = per_step[per_step["auroc"].notna()]
        best = defined.loc[defined.groupby("detector")["auroc"].idxmax()]
        out = out.merge(best[["detector", "auroc", "step"]].rename(columns={"auroc": "best_auroc", "step": "best_step"}),
                        on="detector", how="left")
    else:
        out = out[["detector", "last_step", "n_flagged"]]
    return out


def top_pairs_text(top: dict | None) -> list[str]:
    """The top opposing pair of each interval against two or more named planted groups
    (`scoring.top_pair_summary`): a sentence and a table; nothing where the data plants no groups."""
    if not top or not top.get("intervals"):
        return []
    rows = pd.DataFrame(top["intervals"])
    names = sorted({k for d in rows["planted_delta"] for k in d})
    table = pd.DataFrame({
        "interval": [f"{a}→{b}" for a, b in zip(rows["step_from"], rows["step_to"])],
        **{f"Δloss {n}": [d.get(n) for d in rows["planted_delta"]] for n in names},
        "opposed": rows["planted_opposed"].map({True: "yes", False: ""}),
        "top pair": [f"{a} ({na}) vs {b} ({nb})" for a, na, b, nb in
                     zip(rows["group_a"], rows["size_a"], rows["group_b"], rows["size_b"])],
        "cosine": rows["cosine"],
        "sides": [f"{sa} {ia}/{na} · {sb} {ib}/{nb}" for sa, ia, na, sb, ib, nb in
                  zip(rows["side_a"], rows["in_side_a"], rows["size_a"], rows["side_b"], rows["in_side_b"], rows["size_b"])],
        "side purity": rows["side_purity"],
        "purity": rows["purity"],
        "pair Δloss": [f"{fmt(a)} / {fmt(b)}" for a, b in zip(rows["mean_delta_a"], rows["mean_delta_b"])],
    })
    opposed = (f"over the {top['n_opposed']} intervals where the planted groups' losses move in opposite directions "
               f"(one rises while another falls, as where a spurious feature is learned), side purity mean "
               f"{fmt(top['opposed_mean_side_purity'])}, lowest {fmt(top['opposed_min_side_purity'])} (both groups at "
               f"least {scoring.PURE:.0%} pure in {top['n_opposed_pure']} of them), purity mean "
               f"{fmt(top['opposed_mean_purity'])}, lowest {fmt(top['opposed_min_purity'])}"
               if top["n_opposed"] else "in no interval do the planted groups' losses move in opposite directions")
    return [f"Top opposing pair of each interval (its most negative cosine) against the planted groups: each group "
            f"stands for a different planted group (sides: its members in it / its size); side purity is the lower of "
            f"the two groups' shares of their planted group, purity the share of all the pair's examples (1: one "
            f"group all of one planted group, the other all of another); {opposed}. pair Δloss: each group's mean "
            f"loss change over the interval (opposite signs: the pair in antiphase).",
            markdown_table(table)]


def signals_section(summary: dict, per_step: pd.DataFrame, figures: dict) -> list[str]:
    settings = summary["settings"]
    planted = summary.get("planted_count")
    truth = (f"The data plants {planted} training examples (ground truth); each detector's continuous score is "
             f"judged by AUROC, average precision and precision/recall at k = {planted}, its flags by precision and "
             "recall." if planted else "This dataset plants no ground truth, so only flag counts are shown.")
    described = [f"- `{name}`: " + DETECTOR_TEXT[name].format(**settings.get(name, {}))
                 for name in settings["detectors"]]
    g, gen = summary["groups"], summary["generalization"]
    pair = {None: "not applicable (the data plants no pair of groups)", True: "yes, at the intervals ending at steps "
            + ", ".join(map(str, g["planted_pair_steps"])), False: "no"}[g["planted_pair_found"]]
    delay = (f"Train accuracy first reached {gen['train_threshold']} at step {fmt(gen['step_memorized'])} and test "
             f"accuracy {gen['test_threshold']} at step {fmt(gen['step_generalized'])} (delay "
             f"{fmt(gen['delay_steps'])} steps; – = never).")
    around = pd.DataFrame(gen["flagged_around"])
    if not math.isnan(gen["step_generalized"]) and not around.empty:
        delay += " Mean flagged examples per checkpoint before and after that step, per detector:"
    groups_text = (f"Recovered groups: size-weighted purity {fmt(g['mean_purity'])} (groups drawn at random from the "
                   f"same selected examples: {fmt(g['chance_purity'])}); groups with a planted majority: "
                   f"{fmt(g['planted_group_purity'])}. Planted pair found as an opposing pair: {pair}."
                   if planted else "No planted truth to judge the groups against.")
    top = top_pairs_text(g.get("top_pairs"))
    return [
        "## Per-example dynamics and opposing signals",
        "Detectors, each scoring every training example at every checkpoint (all scores in "
        f"`{layout.IN_RUN['signals_detections']}`, per-checkpoint quality in `{layout.IN_RUN['signals_evaluation']}`):",
        "\n".join(described),
        truth,
        f"![Detector comparison]({figures['flagged']})",
        markdown_table(detector_table(per_step)),
        "### Opposing groups",
        groups_text,
        *top,
        f"![Opposing groups' losses]({figures['group_losses']})",
        f"![Loss changes]({figures['loss_changes']})",
        "### Dataset cartography",
        f"![Cartography]({figures['cartography']})",
        "### Generalization events",
        delay,
        *([markdown_table(around)] if delay.endswith(":") else []),
    ]


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


# The timeline stage's figures in the sweep's runs.parquet, one column each (timeline/summary.json's keys).
TIMELINE_SWEEP = ["n_spikes", "n_crossings", "n_antiphase",
                  *(f"{link}{k}" for link in ("spikes_near_crossing", "spikes_with_antiphase")
                    for k in ("", "_fraction", "_expected", "_expected_sd", "_p")),
                  "loss_group_correlation"]


def timeline_figures(summary: dict | None) -> dict:
    """A run's TIMELINE_SWEEP figures from its timeline summary (None where missing)."""
    return {k: (summary or {}).get(k) for k in TIMELINE_SWEEP}


def _steps(v) -> str:
    return f"{fmt(v)} steps" if not _missing(v) else MISSING


def timeline_links_table(summary: dict) -> pd.DataFrame:
    """The two links of the timeline (spikes near a sharpness crossing, spikes with the pair in antiphase): each
    with its count, fraction, the shuffled baseline (expected ± sd, p) and its resolution."""
    spikes = f"each spike's own step: logging interval {_steps(summary.get('spike_resolution'))}"
    rows = []
    for key, what, resolution in (
            ("spikes_near_crossing", "within the window of a sharpness crossing of 2/lr",
             f"{spikes}; crossings: checkpoint gap, median {_steps(summary.get('crossing_resolution_median'))}, "
             f"largest {_steps(summary.get('crossing_resolution_max'))}"),
            ("spikes_with_antiphase", "within the window of an active antiphase interval",
             f"{spikes}; antiphase: largest checkpoint gap inside one {_steps(summary.get('antiphase_resolution_max'))}")):
        rows.append({"link": what, "spikes": summary.get(key), "of": summary.get("n_spikes"),
                     "fraction": summary.get(f"{key}_fraction"), "expected by chance": summary.get(f"{key}_expected"),
                     "± sd": summary.get(f"{key}_expected_sd"), "p": summary.get(f"{key}_p"),
                     "resolution": resolution})
    return pd.DataFrame(rows)


def timeline_section(summary: dict, figure: str | None, optimizer: str) -> list[str]:
    """The run report's timeline (timeline/summary.json of gradscope.timeline): the events counted, how many loss
    spikes fall within the window of a sharpness crossing and of an active antiphase pair against the same events
    shuffled in time, the resolution of each link, and the correlation of the loss oscillation with the pair's
    loss difference."""
    s, n = summary["settings"], summary.get("n_events") or {}
    pair = summary.get("pair")
    window = (f"{fmt(summary['window'])} steps either side of a spike (timeline.link_window)"
              if summary.get("window") is not None else
              "twice the checkpoint interval a spike lies in, either side of it (timeline.link_window null"
              + (")" if summary.get("window_min") is None else f": {fmt(summary['window_min'])} steps)"
                 if summary["window_min"] == summary.get("window_max") else
                 f": {fmt(summary['window_min'])} to {fmt(summary.get('window_max'))} steps)"))
    span = summary.get("span") or [None, None]
    crossings = (f"{summary['n_crossings']} crossings of 2/lr ({n.get('sharpness_reach', 0)} reaching it, "
                 f"{n.get('sharpness_leave', 0)} leaving it, interpolated between checkpoints)"
                 if summary.get("edge_applies", True) else
                 f"no crossings of 2/lr: it is the stability threshold of gradient descent, not of {optimizer}, so "
                 "the crossing link is empty (0 spikes near a crossing, nothing expected)")
    antiphase = (f"{summary['n_antiphase']} antiphase intervals of the top opposing pair (groups {pair['group_a']} "
                 f"and {pair['group_b']}, found over steps {pair['step_from']}→{pair['step_to']} with gradient cosine "
                 f"{fmt(pair['cosine'])}): their loss changes between checkpoints correlated at most "
                 f"{fmt(s['antiphase_threshold'])} over {s['antiphase_window']} consecutive intervals"
                 if pair else "no antiphase intervals: the signals stage found no opposing pair of groups")
    corr = summary.get("loss_group_correlation")
    correlation = ("Correlation of the training loss's change with the change of the pair's loss difference "
                   f"(group {pair['group_a']} − group {pair['group_b']}) between consecutive checkpoints: "
                   f"r = {fmt(corr)}" if pair else "Correlation of the loss oscillation with a pair's loss difference: "
                   f"{MISSING} (no pair)")
    if pair and _missing(corr):
        correlation += " (fewer than 3 checkpoint intervals inside the logged steps, or a constant change)"
    return [
        "## Timeline: loss spikes, 2/lr and opposing groups",
        f"Events on one step axis (`{layout.IN_RUN['timeline_events']}`; each spike's links in "
        f"`{layout.IN_RUN['timeline_links']}`): {summary['n_spikes']} loss spikes (the training loss above the median "
        f"of its previous {s['spike_window']} logged values by more than {s['spike_margin']:.0%} of it), {crossings}; "
        f"{antiphase}. Memorized at step {fmt(summary.get('step_memorized'))}, generalized at step "
        f"{fmt(summary.get('step_generalized'))} (– = never; vertical lines in the figure).",
        *([f"![Timeline]({figure})"] if figure else []),
        f"Loss spikes linked to each, against the same events placed uniformly at random over steps "
        f"{fmt(span[0])} to {fmt(span[1])} ({summary['shuffles']} shuffles, seed {summary['seed']}; an antiphase "
        f"interval keeps its length): expected ± sd is the fraction of spikes near them by chance, p the fraction of "
        f"shuffles with at least as many. Window: {window}.",
        markdown_table(timeline_links_table(summary)),
        f"Resolution: {summary['resolution']}",
        correlation + ".",
    ]


def sweep_timeline_lines(runs: pd.DataFrame) -> list[str]:
    """The sweep's timeline table: per run, its loss spikes, the fraction near a crossing of 2/lr and with the
    top pair in antiphase against the shuffled baseline, and the loss-pair correlation (TIMELINE_SWEEP)."""
    if "n_spikes" not in runs:
        return []
    cols = {"run": "run", "n_spikes": "loss spikes", "spikes_near_crossing_fraction": "near a 2/lr crossing",
            "spikes_near_crossing_expected": "expected near a crossing", "spikes_near_crossing_p": "p (crossing)",
            "spikes_with_antiphase_fraction": "with antiphase", "spikes_with_antiphase_expected": "expected with antiphase",
            "spikes_with_antiphase_p": "p (antiphase)", "loss_group_correlation": "loss–pair correlation"}
    table = runs[[c for c in cols if c in runs]].rename(columns=cols)
    return ["## Timeline",
            "Per run (its report's timeline section): the fraction of its loss spikes within the window of a sharpness "
            "crossing of 2/lr and of an active antiphase interval of its top opposing pair, each against the fraction "
            "expected of the same events shuffled in time (p: the fraction of shuffles at least as high); – where a run "
            "has no spikes; the correlation of the training loss's change with the pair's loss difference between "
            f"checkpoints. Counts and the shuffles' sd are in `{layout.IN_SWEEP['runs']}`.",
            markdown_table(table)]


def influence_section(summary: dict) -> list[str]:
    """Train-to-test influence (influence/summary.json): the flipped-label measure and, for the
    test examples of highest final loss, their top proponents and opponents."""
    parts = ["## Which training examples shaped these predictions",
             f"TracIn-CP (Σ over the {len(summary['steps'])} checkpoints of lr × the inner product of the projected "
             f"gradients, k = {summary['proj_dim']}) of {summary['n_test_scored']} test examples against all "
             f"{summary['n_train']} training examples. A *proponent* lowered the test example's loss when trained "
             f"on, an *opponent* raised it. All pairs' per-checkpoint contributions: `{layout.IN_RUN['influence_contributions']}`."]
    flips = summary.get("flipped_opponents")
    if flips:
        rows = pd.DataFrame([{"among top": kind + "s", "flipped, of the test example's true class": v["rate"],
                              "chance": v["chance"], "lift": v["lift"]}
                             for kind, v in flips.items() if isinstance(v, dict)])
        parts += [f"How often a training example whose label was flipped ({flips['n_flipped']} of them) is among the "
                  "top opponents of test examples of its true class, against drawing training examples at random:",
                  markdown_table(rows)]
    for ex in summary.get("examples", []):
        table = []
        for kind in ("proponents", "opponents"):
            for rank, r in enumerate(ex[kind], 1):
                table.append({"": kind[:-1] if rank == 1 else "", "rank": rank, "train id": r["train_id"],
                              "label": r["label"], "true label": r["clean_label"],
                              "planted": "flipped" if r["planted"] and r["label"] != r["clean_label"]
                              else ("planted" if r["planted"] else ""), "score": r["score"]})
        parts += [f"**Test example {ex['test_id']}** (label {ex['label']}, predicted {ex['pred']}, final loss "
                  f"{fmt(ex['final_loss'])}):", markdown_table(pd.DataFrame(table))]
    return parts


PROGRESS_ROWS = 12  # checkpoints listed in the report's progress table (all are in progress.parquet)


def progress_section(progress: pd.DataFrame, figure: str | None) -> list[str]:
    """Nanda et al.'s progress measures (the run's progress table): the figure and, for up to
    PROGRESS_ROWS checkpoints spread over training (the first and last always), the losses, the key
    frequencies' share of the embedding and the weight norm."""
    pr = progress.sort_values("step").reset_index(drop=True)
    keep = sorted(set(np.linspace(0, len(pr) - 1, min(PROGRESS_ROWS, len(pr))).round().astype(int)))
    table = pr.loc[keep, ["step", "train_loss", "test_loss", "restricted_loss", "excluded_loss", "key_fraction",
                          "weight_norm"]]
    keys = ", ".join(map(str, pr["key_frequencies"].iloc[-1]))
    return ["## Progress measures of the grokking circuit",
            f"Nanda et al. 2023 (gradscope.progress). Key frequencies k = {keys} (the largest in the Fourier spectrum "
            "of the embedding of token a). Restricted loss: the logits over all pairs kept on the key frequencies' "
            "directions cos/sin(w_k(a ± b)) and the constant; excluded loss: those directions removed; both on the "
            "training pairs. In the paper the restricted loss falls before the test loss as the circuit forms, and "
            "the excluded loss rises as the memorizing part is cleaned up. key_fraction: the key frequencies' share "
            f"of the embedding's squared norm. Every checkpoint: `{layout.IN_RUN['progress']}`.",
            *([f"![Progress measures]({figure})"] if figure else []),
            markdown_table(table)]
