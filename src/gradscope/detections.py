"""What a run's detections found: every configured detector on the training trajectories, scored
against the planted truth where the data has one, the opposing groups, the generalization events,
and the run-level headline of them (the signals stage's tables, layout.SIGNALS, and its summary).

Pure computation on tables; gradscope.pipeline.detect_signals reads and writes the artifacts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from gradscope import opposing, report, scoring, signals

# What the signals stage reads of the examples tables: no detector reads the gradient projections
# (grad_proj, most of a table's bytes); only the opposing groups (opposing.find_groups, always run) do,
# and only for the top_k examples of largest |loss change| over each checkpoint interval, at its
# first checkpoint. read_trajectories reads those rows' projections and no others.
COLUMNS = ("split", "example_id", *signals.TRAJECTORY_COLUMNS)


class SomeProjections:
    """Stands in for Trajectories.proj where only some (checkpoint, example) rows were read: indexing
    [t, positions] gives those rows (positions: example positions, as find_groups asks for them); a row
    that was not read raises KeyError."""

    def __init__(self, shape: tuple, rows: dict):
        self.shape, self.ndim = tuple(shape), len(shape)
        self.rows = rows  # checkpoint index -> (sorted positions, (m, k) float64)

    def __getitem__(self, key):
        t, positions = key
        have, values = self.rows.get(int(t), (np.zeros(0, np.int64), None))
        positions = np.asarray(positions)
        at = np.searchsorted(have, positions)
        if len(positions) and (at.max() >= len(have) or not np.array_equal(have[at], positions)):
            raise KeyError(f"gradient projections at checkpoint {t} were not read for some of {positions.tolist()}")
        return values[at]


def groups_need(loss: np.ndarray, top_k: int) -> dict[int, np.ndarray]:
    """{checkpoint index: sorted example positions} whose projections opposing.find_groups reads: the
    top_k of largest |loss change| over each interval (t - 1, t), at t - 1 (its selection, repeated)."""
    need: dict[int, set] = {}
    for t in range(1, len(loss)):
        delta = loss[t] - loss[t - 1]
        top = np.argsort(-np.abs(delta), kind="stable")[: min(top_k, len(delta))]
        need.setdefault(t - 1, set()).update(top.tolist())
    return {t: np.array(sorted(p), dtype=np.int64) for t, p in need.items()}


def read_trajectories(paths, lr: pd.Series | None, settings: dict) -> signals.Trajectories:
    """The training trajectories of a run's examples tables as the signals stage needs them (`settings`:
    its filled section): the detectors' columns (COLUMNS) of every row and the projections of only the
    rows the opposing groups use (SomeProjections), each file's read one file at a time."""
    from gradscope import layout
    from gradscope.readers import read_examples, read_projections

    tr = signals.Trajectories.from_table(read_examples(paths, COLUMNS, split="train"), lr=lr)
    files = {layout.step_of(f): f for f in layout.partition_files(paths)}
    if "grad_proj" not in pq.read_schema(next(iter(files.values()))).names:
        return tr  # no projections: proj None, as Trajectories.from_table leaves it (find_groups says what is missing)
    rows, k = {}, 0
    for t, positions in groups_need(tr.values["loss"], settings["opposing_groups"]["top_k"]).items():
        ids, proj = read_projections(files[int(tr.steps[t])], {"train": tr.example_ids[positions]})["train"]
        if not np.array_equal(ids, tr.example_ids[positions]):
            raise ValueError(f"{files[int(tr.steps[t])]}: grad_proj rows missing for some training examples")
        rows[t], k = (positions, proj.astype(np.float64)), proj.shape[1]
    tr.proj = SomeProjections((len(tr.steps), len(tr.example_ids), k), rows) if rows or len(tr.steps) < 2 else None
    return tr


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
