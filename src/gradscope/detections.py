"""What a run's detections found: every configured detector on the training trajectories, scored
against the planted truth where the data has one, the opposing groups, the generalization events,
and the run-level headline of them (the signals stage's tables, layout.SIGNALS, and its summary).

Pure computation on tables; gradscope.pipeline.detect_signals reads and writes the artifacts.
"""

from __future__ import annotations

import pandas as pd

from gradscope import opposing, report, scoring, signals


def analyze(tr: signals.Trajectories, metrics: pd.DataFrame, settings: dict, planted, planted_groups) -> tuple[dict, dict]:
    """The signals stage's tables ({name: table} of layout.SIGNALS but the summary) and its summary's
    figures (all but run_id and settings). settings: the filled `signals` section; planted and
    planted_groups: the dataset's planted truth (readers.planted_truth), None where it has none."""
    detections = signals.detect(tr, settings)
    evaluation = scoring.evaluate(detections, planted)
    groups, pairs, group_losses = opposing.find_groups(tr, **settings["opposing_groups"])
    changes = opposing.loss_changes(tr)
    per_example = signals.per_example(tr, planted, planted_groups)
    events = signals.generalization_events(metrics, train_threshold=settings["generalization"]["train_acc"],
                                           test_threshold=settings["generalization"]["test_acc"])
    around = signals.flagged_around(detections, events["step_generalized"])
    summary = {
        "n_train": len(tr.example_ids),
        "steps": tr.steps.tolist(),
        "planted_count": None if planted is None else len(planted),
        "planted_groups": sorted(planted_groups) if planted_groups else [],
        "per_step": evaluation.to_dict(orient="records"),
        "generalization": {**events, "flagged_around": around.to_dict(orient="records")},
        "groups": {**scoring.evaluate_groups(groups, pairs, planted, planted_groups),
                   "top_pairs": scoring.top_pair_summary(groups, pairs, changes, planted_groups)},
        "headline": headline(evaluation, per_example, pairs, planted),
    }
    tables = {"detections": detections, "evaluation": evaluation, "groups": groups, "group_pairs": pairs,
              "group_losses": group_losses, "loss_changes": changes, "per_example": per_example}
    return tables, summary


def headline(evaluation: pd.DataFrame, per_example: pd.DataFrame, pairs: pd.DataFrame, planted) -> dict:
    """Run-level figures of the signals stage for the sweep table."""
    head = {"opposing_pairs": int(pairs["opposing"].sum()),
            "min_group_cosine": float(pairs["cosine"].min()) if len(pairs) else float("nan")}
    if planted is None:
        return head
    table = report.detector_table(evaluation).set_index("detector")  # last-checkpoint figures and best AUROC
    best = table["auroc"].idxmax() if table["auroc"].notna().any() else None
    cos = table.loc["cos_rule"] if "cos_rule" in table.index else None
    head.update({
        "best_detector": best,
        "best_detector_final_auroc": float(table.loc[best, "auroc"]) if best else float("nan"),
        "final_auroc_cos_rule": float(cos["auroc"]) if cos is not None else float("nan"),
        "best_auroc_cos_rule": float(cos["best_auroc"]) if cos is not None else float("nan"),
        "opposition_auroc": scoring.auroc(per_example["opposition"], per_example["planted"]),
    })
    return head
