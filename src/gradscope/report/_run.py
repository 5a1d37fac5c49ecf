"""The run report (report.md): its page, with the influence and progress stages' sections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from gradscope import layout
from gradscope.report._headline import EDGE_TAIL, EDGE_TOLERANCE, HEADLINE, fmt, headline_figures, markdown_table
from gradscope.report._signals import signals_section
from gradscope.report._timeline import timeline_section
from gradscope.signals import edge_assessed


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


def influence_section(summary: dict) -> list[str]:
    """Train-to-test influence (influence/summary.json): the flipped-label measure and, for the
    test examples of highest final loss, their top proponents and opponents."""
    parts = ["## Which training examples shaped these predictions",
             f"TracIn-CP (Σ over the {len(summary['steps'])} checkpoints of lr × the inner product of the projected "
             f"gradients, k = {summary['proj_dim']}) of {summary['n_test_scored']} test examples against all "
             f"{summary['n_train']} training examples. A *proponent* lowered the test example's loss when trained "
             f"on, an *opponent* raised it. All pairs' per-checkpoint contributions: `{layout.IN_RUN['influence_contributions']}`."]
    if "n_test" in summary:  # its cost (summaries written before the stage recorded it say nothing)
        pairs = summary["n_test_scored"] * summary["n_train"] * len(summary["steps"])
        parts.append(f"Scored: {summary['n_test_scored']} of the {summary['n_test']} test examples "
                     f"({summary.get('test_chosen', '')}; `influence.test_examples`, `test_selection`, `test_ids`), "
                     f"{pairs:,} test × training × checkpoint products, in {fmt(summary['seconds'])} s.")
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
