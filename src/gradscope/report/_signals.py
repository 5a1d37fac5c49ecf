"""The run report's signals section: the detectors in words, their figures compared, the opposing groups."""

from __future__ import annotations

import math

import pandas as pd

from gradscope import layout, scoring
from gradscope.report._headline import fmt, markdown_table

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
