"""Interventions: retrain a run on a training set derived from its detections, against a control.

An experiment with an `intervene` block (docs/interventions.md) has, per seed and grid point, two
runs with its parent run's settings: the `flagged` arm trains on the parent's training set with a
detector's top-k examples (by score at one checkpoint) removed, down-weighted or relabelled to the
parent model's prediction; the `control` arm does the same to k random training examples with the
same count per label (removing any k examples changes a run, so an effect is flagged minus control).

- `choose`: the k examples of an arm; `derive`: the derived dataset; `intervene`: both, from the
  parent's detections (the workflow's derive_data).
- `run_row`: one run's figures (final and worst-group test accuracy, delay, spikes, sharpness).
- `effects`: per detector, k, action and figure, flagged minus control over seeds, with an interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

ACTIONS = ("remove", "downweight", "relabel")
ARMS = ("flagged", "control")
# The figures an intervention changes, compared as flagged minus control (effects) and per arm.
FIGURES = {
    "final_test_acc": "final test accuracy",
    "worst_group_test_acc": "worst-group test accuracy",
    "generalization_delay_steps": "generalization delay (steps)",
    "n_loss_spikes": "loss spikes",
    "max_sharpness": "maximum sharpness",
}
CONFIDENCE = 0.95  # the effects' interval: a t interval over seeds


class InterventionError(ValueError):
    """A derived dataset that cannot be made (k too large, the detector never scored at the step)."""


def scores_at(detections: pd.DataFrame, detector: str, step: int) -> pd.Series:
    """The detector's score of each training example at `step` (index example_id), from a run's detections table."""
    rows = detections[(detections["detector"] == detector) & (detections["step"] == step)]
    if rows.empty:
        scored = sorted(detections.loc[detections["detector"] == detector, "step"].unique().tolist())
        raise InterventionError(f"intervene.detector {detector!r} has no scores at step {step} in the parent's "
                                f"detections (it scored at steps {scored or 'none'}); set intervene.step to one of them")
    return rows.set_index("example_id")["score"]


def choose(scores: pd.Series, labels: pd.Series, k: int, arm: str, seed: int) -> np.ndarray:
    """The example ids an arm intervenes on, sorted.

    flagged: the k highest scores (ties broken by the lower example id, so the choice is the same
    on every machine). control: k examples drawn uniformly without replacement from all training
    examples, as many per label as the flagged ones have (labels: index example_id), from a stream
    of `seed` of its own."""
    if not 1 <= k <= len(scores):
        raise InterventionError(f"intervene.k is {k}, but the parent's training split has {len(scores)} examples; "
                                f"allowed: 1..{len(scores)}")
    order = pd.DataFrame({"score": scores.to_numpy(dtype=float), "id": scores.index.to_numpy()})
    order["score"] = order["score"].fillna(-np.inf)  # an unscored example is the least suspect
    flagged = order.sort_values(["score", "id"], ascending=[False, True], kind="mergesort")["id"].to_numpy()[:k]
    if arm == "flagged":
        return np.sort(flagged)
    if arm != "control":
        raise ValueError(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, k, 31]))
    chosen = []
    for label, count in labels.loc[flagged].value_counts().sort_index().items():
        pool = np.sort(labels.index[labels.to_numpy() == label].to_numpy())
        chosen.append(rng.choice(pool, size=int(count), replace=False))
    return np.sort(np.concatenate(chosen))


def _remap(ids, kept: np.ndarray) -> list[int]:
    """Old example ids (those still kept) as the derived table's row ids."""
    new_of = {int(old): new for new, old in enumerate(kept)}
    return [new_of[int(i)] for i in ids if int(i) in new_of]


def derive(train: pd.DataFrame, test: pd.DataFrame, meta: dict, chosen: np.ndarray, *, action: str, weight: float,
           predictions: pd.Series | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The parent's dataset with the `chosen` training examples intervened on; the test split unchanged.

    remove: the rows are left out and the rest numbered 0.. again (`parent_example_id` keeps each
    row's id in the parent; planted ids and groups are renumbered). downweight: a `weight` column,
    `weight` for the chosen, 1 for the others (training multiplies each example's loss by it).
    relabel: their `label` set to `predictions` (the parent model's, index example_id); `clean_label`
    and `planted` stay, so a relabelled flip that the model got right is no longer noisy."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    train = train.copy()
    train["parent_example_id"] = train["example_id"].to_numpy()
    is_chosen = train["example_id"].isin(chosen).to_numpy()
    meta = {**meta}
    if action == "remove":
        train = train[~is_chosen].reset_index(drop=True)
        kept = train["parent_example_id"].to_numpy()
        train["example_id"] = np.arange(len(train), dtype=np.int64)
        planted = meta.get("planted")
        if planted:
            planted = {**planted, "train_ids": _remap(planted["train_ids"], kept)}
            if planted.get("groups"):
                planted["groups"] = {g: _remap(ids, kept) for g, ids in planted["groups"].items()}
            meta["planted"] = planted
    elif action == "downweight":
        train["weight"] = np.where(is_chosen, weight, 1.0)
    else:
        if predictions is None:
            raise ValueError("relabel needs the parent model's predictions")
        new = predictions.reindex(train.loc[is_chosen, "example_id"]).to_numpy()
        if np.isnan(new.astype(float)).any():
            raise InterventionError("the parent's examples table has no prediction for some chosen examples")
        train.loc[is_chosen, "label"] = new.astype(np.int64)
    meta["n_train"] = len(train)
    return train, test, meta


def predictions(examples: pd.DataFrame) -> pd.Series:
    """The parent model's prediction of each training example (index example_id), from its examples
    table at the intervention's step: what `relabel` sets the chosen examples' labels to."""
    return examples[examples["split"] == "train"].set_index("example_id")["pred"]


def intervene(train: pd.DataFrame, test: pd.DataFrame, meta: dict, detections: pd.DataFrame, spec: dict,
              examples: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """An arm's dataset from its parent's: the examples `choose` picks from the parent's detections at
    the step (spec: the run's `data.intervene` block), intervened on as `derive` does. examples: the
    parent's examples table at the step (split, example_id, pred), which `relabel` needs.

    Returns the derived train, test and meta, and what was chosen ({chosen_ids, chosen_planted}:
    the parent's ids and how many of them are planted)."""
    scores = scores_at(detections, spec["detector"], spec["step"])
    labels = train.set_index("example_id")["label"]
    chosen = choose(scores.reindex(labels.index), labels, spec["k"], spec["arm"], spec["seed"])
    predicted = predictions(examples) if spec["action"] == "relabel" and examples is not None else None
    chosen_planted = int(train.loc[train["example_id"].isin(chosen), "planted"].sum())
    train, test, meta = derive(train, test, meta, chosen, action=spec["action"], weight=spec.get("weight", 1.0),
                               predictions=predicted)
    return train, test, meta, {"chosen_ids": chosen.tolist(), "chosen_planted": chosen_planted}


def group_accuracy(test_examples: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """Test accuracy per planted group (the test table's `group` column; "" is no group) at one
    checkpoint, from that checkpoint's examples table (its test rows' `correct`); {} without groups."""
    if "group" not in test.columns:
        return {}
    rows = test_examples[test_examples["split"] == "test"][["example_id", "correct"]]
    joined = rows.merge(test[["example_id", "group"]], on="example_id", how="inner")
    joined = joined[joined["group"] != ""]
    return {str(g): float(d["correct"].mean()) for g, d in joined.groupby("group", sort=True)}


def run_row(head: dict, timeline: dict | None, groups: dict[str, float]) -> dict:
    """One run's figures (FIGURES) from its headline (report.headline), timeline summary and group accuracies."""
    return {
        "final_test_acc": head.get("final_test_acc"),
        "worst_group_test_acc": min(groups.values()) if groups else None,
        "generalization_delay_steps": head.get("generalization_delay_steps"),
        "n_loss_spikes": (timeline or {}).get("n_spikes"),
        "max_sharpness": head.get("max_sharpness"),
        **{f"test_acc_{g}": v for g, v in groups.items()},
    }


def _t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def effects(runs: pd.DataFrame) -> pd.DataFrame:
    """Flagged minus control per detector, k, action and figure, paired by seed.

    runs: one row per run with `arm` (parent, flagged, control), detector, k, action, seed and the
    FIGURES. A row per (detector, k, action, figure): n_seeds (seeds with both arms and the figure),
    the mean of each arm and of the parent, effect (mean paired difference), effect_sd (its standard
    deviation over seeds), ci_low and ci_high (a t interval at CONFIDENCE; NaN with one seed),
    control_sd (the control's seed-to-seed spread) and `beyond_spread`: the effect's size exceeds
    the seed-to-seed spread of the paired differences and of the control (False with one seed)."""
    rows = []
    arms = runs[runs["arm"].isin(ARMS)]
    parent = runs[runs["arm"] == "parent"].set_index("seed")
    for (detector, k, action), d in arms.groupby(["detector", "k", "action"], sort=True):
        flagged = d[d["arm"] == "flagged"].set_index("seed")
        control = d[d["arm"] == "control"].set_index("seed")
        for figure in FIGURES:
            pair = pd.concat([pd.to_numeric(flagged[figure], errors="coerce").rename("f"),
                              pd.to_numeric(control[figure], errors="coerce").rename("c")], axis=1).dropna()
            diff = (pair["f"] - pair["c"]).to_numpy(dtype=float)
            n = len(diff)
            sd = float(np.std(diff, ddof=1)) if n > 1 else float("nan")
            control_sd = float(np.std(pair["c"], ddof=1)) if n > 1 else float("nan")
            half = _t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
            mean = float(diff.mean()) if n else float("nan")
            parents = pd.to_numeric(parent[figure], errors="coerce").reindex(pair.index).dropna() if len(parent) else []
            rows.append({
                "detector": detector, "k": int(k), "action": action, "figure": figure, "n_seeds": n,
                "parent_mean": float(np.mean(parents)) if len(parents) else float("nan"),
                "flagged_mean": float(pair["f"].mean()) if n else float("nan"),
                "control_mean": float(pair["c"].mean()) if n else float("nan"),
                "effect": mean, "effect_sd": sd, "ci_low": mean - half, "ci_high": mean + half,
                "control_sd": control_sd,
                "beyond_spread": bool(n > 1 and abs(mean) > max(sd, control_sd)),
            })
    return pd.DataFrame(rows, columns=["detector", "k", "action", "figure", "n_seeds", "parent_mean", "flagged_mean",
                                       "control_mean", "effect", "effect_sd", "ci_low", "ci_high", "control_sd",
                                       "beyond_spread"])
