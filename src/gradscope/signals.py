"""Per-example training-dynamics detectors on the training split of the per-example table.

Every detector is a registered method (`DETECTORS`) with its own config block
(`signals.<name>`); each gives every (checkpoint, training example) a continuous score,
higher meaning more suspect, and a flag. All scores are saved, not only the flags. The
detectors see the trajectories of the per-example table (losses, margins, probabilities,
correctness, gradient norms and cosines, over checkpoints) and the learning rate at each
checkpoint:

- `cos_rule`: gradient opposition, score -cos(g_i, mean g) at each checkpoint; flagged when
  cos < threshold (the schema's default, -0.1, is the seed notebook's rule).
- `opposing_groups` (Rosenfeld & Risteski 2023, arXiv 2311.04163): score |loss_i(t) -
  loss_i(t_prev)| at each checkpoint after the first; the top_k flagged. Their grouping,
  opposing pairs and group loss curves are in `gradscope.opposing`.
- `loss_trajectory`: over the last `window` checkpoints, the least-squares slope of the loss
  per checkpoint and its volatility (total variation not explained by the net change, per
  checkpoint interval); three detectors: `loss_increasing` (score slope), `loss_decreasing`
  (score -slope), `loss_volatile` (score volatility), each flagged past its threshold.
- `cartography` (Swayamdipta et al. 2020): confidence (mean probability of the given label),
  variability (its standard deviation) and correctness (fraction correct) over the
  checkpoints so far; score 1 - confidence, flagged when confidence < threshold (their
  hard-to-learn region, where mislabeled examples sit).
- `forgetting` (Toneva et al. 2019): correct-to-wrong transitions between consecutive
  checkpoints so far; an example never classified correctly so far is "never learned" and
  scores above any possible count (t + 1 at checkpoint index t); flagged when it was
  forgotten at least `min_events` times or never learned.
- `el2n` and `grand` (Paul et al. 2021): the L2 norm of softmax error (probabilities minus
  one-hot label) and the gradient norm, at each checkpoint (one run stands in for their
  average over initializations); flagged: the top `flag_fraction`.
- `aum` (Pleiss et al. 2020): area under the margin, the mean over checkpoints so far of the
  given label's logit minus the largest other logit; score -AUM, flagged when AUM < threshold.
- `tracin` (Pruthi et al. 2020): self-influence, the sum over checkpoints so far of the
  learning rate times the squared gradient norm; flagged: the top `flag_fraction`.
- `high_loss`: the loss, flagged when misclassified (the classic small-loss reference).

"So far" means the checkpoints up to and including the one scored, so that every detector
has a score at every checkpoint and can be compared per checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from gradscope import config

# Per-example table columns the detectors read, as (checkpoints, examples) matrices.
TRAJECTORY_COLUMNS = ("loss", "p_true", "margin", "correct", "grad_norm", "grad_cos_mean", "el2n")


@dataclass
class Trajectories:
    """The training split's per-example table as (checkpoints, examples) matrices."""

    steps: np.ndarray  # (T,) checkpoint steps, ascending
    example_ids: np.ndarray  # (n,) ascending
    values: dict[str, np.ndarray]  # column -> (T, n)
    proj: np.ndarray | None  # (T, n, proj_dim) gradient projections, when the table has them
    lr: np.ndarray  # (T,) learning rate at each checkpoint

    @classmethod
    def from_table(cls, examples: pd.DataFrame, lr: pd.Series | None = None) -> "Trajectories":
        """`examples`: the per-example table (rows of the test split are ignored); `lr`: the
        learning rate indexed by logged step (metrics.parquet), read at each checkpoint as its
        last logged value at or before it; 1 where not given."""
        train = examples[examples["split"] == "train"] if "split" in examples.columns else examples
        train = train.sort_values(["step", "example_id"], kind="stable")
        steps, ids = np.unique(train["step"].to_numpy()), np.unique(train["example_id"].to_numpy())
        shape = (len(steps), len(ids))
        if len(train) != shape[0] * shape[1] or len(steps) == 0:
            raise ValueError(f"the per-example table must hold every training example at every checkpoint: "
                             f"{len(train)} rows for {shape[0]} checkpoints x {shape[1]} examples")
        values = {c: train[c].to_numpy().reshape(shape) for c in TRAJECTORY_COLUMNS if c in train.columns}
        values["correct"] = values["correct"].astype(bool)
        proj = None
        if "grad_proj" in train.columns and len(train):
            proj = np.stack(train["grad_proj"].to_numpy()).astype(np.float64).reshape(*shape, -1)
        return cls(steps=steps, example_ids=ids, values=values, proj=proj, lr=lr_at(lr, steps))


def lr_at(lr: pd.Series | None, steps: np.ndarray) -> np.ndarray:
    """The learning rate in force at each checkpoint step: its last logged value (`lr`, indexed by
    logged step, metrics.parquet) at or before the step; 1 where not given."""
    rates = np.ones(len(steps))
    if lr is not None and len(lr):
        lr = lr.sort_index()
        pos = np.searchsorted(lr.index.to_numpy(), steps, side="right") - 1
        rates = lr.to_numpy(dtype=float)[np.clip(pos, 0, None)]
    return rates


Scores = dict[str, tuple[np.ndarray, np.ndarray]]  # detector name -> (score, flagged), each (T, n); NaN score = none
DETECTORS: dict[str, Callable[[Trajectories, dict], Scores]] = {}


def register(name: str):
    def add(fn):
        DETECTORS[name] = fn
        return fn
    return add


def _cumulative_mean(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x, axis=0) / np.arange(1, len(x) + 1)[:, None]


def top_fraction(score: np.ndarray, fraction: float) -> np.ndarray:
    """Flags, per checkpoint (row), the ceil(fraction * n) highest scores."""
    return top_k(score, math.ceil(fraction * score.shape[1] - 1e-9))


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Flags, per checkpoint (row), the k highest scores (ties in example order)."""
    order = np.argsort(-score, axis=1, kind="stable")
    flagged = np.zeros(score.shape, dtype=bool)
    np.put_along_axis(flagged, order[:, :k], True, axis=1)
    return flagged


@register("cos_rule")
def cos_rule(tr: Trajectories, s: dict) -> Scores:
    cos = tr.values["grad_cos_mean"]
    return {"cos_rule": (-cos, cos < s["threshold"])}


@register("opposing_groups")
def opposing_groups(tr: Trajectories, s: dict) -> Scores:
    score = np.full(tr.values["loss"].shape, np.nan)
    score[1:] = np.abs(np.diff(tr.values["loss"], axis=0))
    flagged = np.zeros(score.shape, dtype=bool)
    if len(score) > 1:
        flagged[1:] = top_k(score[1:], s["top_k"])
    return {"opposing_groups": (score, flagged)}


def trajectory_stats(loss: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Slope (least squares, per checkpoint) and volatility ((sum |d| - |sum d|) / (window - 1),
    d the consecutive changes) of each example's loss over the last `window` checkpoints up to
    each checkpoint; NaN before `window` checkpoints exist."""
    T, n = loss.shape
    slope, vol = np.full((T, n), np.nan), np.full((T, n), np.nan)
    x = np.arange(window) - (window - 1) / 2
    for t in range(window - 1, T):
        seg = loss[t - window + 1 : t + 1]  # (window, n)
        slope[t] = x @ (seg - seg.mean(0)) / (x @ x)
        d = np.diff(seg, axis=0)
        vol[t] = (np.abs(d).sum(0) - np.abs(d.sum(0))) / (window - 1)
    return slope, vol


@register("loss_trajectory")
def loss_trajectory(tr: Trajectories, s: dict) -> Scores:
    slope, vol = trajectory_stats(tr.values["loss"], s["window"])
    with np.errstate(invalid="ignore"):
        return {
            "loss_increasing": (slope, slope > s["slope_threshold"]),
            "loss_decreasing": (-slope, slope < -s["slope_threshold"]),
            "loss_volatile": (vol, vol > s["volatility_threshold"]),
        }


def cartography(tr: Trajectories) -> dict[str, np.ndarray]:
    """Confidence, variability and correctness over the checkpoints so far, each (T, n)."""
    p = tr.values["p_true"]
    confidence = _cumulative_mean(p)
    variability = np.sqrt(np.clip(_cumulative_mean(p**2) - confidence**2, 0, None))
    return {"confidence": confidence, "variability": variability,
            "correctness": _cumulative_mean(tr.values["correct"].astype(float))}


@register("cartography")
def cartography_detector(tr: Trajectories, s: dict) -> Scores:
    confidence = cartography(tr)["confidence"]
    return {"cartography": (1 - confidence, confidence < s["confidence_threshold"])}


def forgetting(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forgetting events (correct at one checkpoint, wrong at the next) so far, and never-learned
    so far; each (T, n)."""
    events = np.zeros(correct.shape, dtype=np.int64)
    events[1:] = np.cumsum(correct[:-1] & ~correct[1:], axis=0)
    never = ~np.logical_or.accumulate(correct, axis=0)
    return events, never


@register("forgetting")
def forgetting_detector(tr: Trajectories, s: dict) -> Scores:
    events, never = forgetting(tr.values["correct"])
    rank = np.arange(1, len(events) + 1)[:, None]  # t + 1 exceeds any count of events up to t
    score = np.where(never, rank, events).astype(float)
    return {"forgetting": (score, never | (events >= s["min_events"]))}


@register("el2n")
def el2n(tr: Trajectories, s: dict) -> Scores:
    score = tr.values["el2n"]
    return {"el2n": (score, top_fraction(score, s["flag_fraction"]))}


@register("grand")
def grand(tr: Trajectories, s: dict) -> Scores:
    score = tr.values["grad_norm"]
    return {"grand": (score, top_fraction(score, s["flag_fraction"]))}


@register("aum")
def aum(tr: Trajectories, s: dict) -> Scores:
    area = _cumulative_mean(tr.values["margin"])
    return {"aum": (-area, area < s["threshold"])}


@register("tracin")
def tracin(tr: Trajectories, s: dict) -> Scores:
    score = np.cumsum(tr.lr[:, None] * tr.values["grad_norm"] ** 2, axis=0)
    return {"tracin": (score, top_fraction(score, s["flag_fraction"]))}


@register("high_loss")
def high_loss(tr: Trajectories, s: dict) -> Scores:
    return {"high_loss": (tr.values["loss"], ~tr.values["correct"])}


def detect(tr: Trajectories, settings: dict) -> pd.DataFrame:
    """Run the detectors named in settings["detectors"], each with settings[name]; the long
    table (step, example_id, detector, score, flagged), without the checkpoints a detector does
    not score (a NaN score). `settings` is the `signals` section; what it leaves out takes the
    schema's default."""
    unknown = [d for d in settings.get("detectors", ()) if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {sorted(DETECTORS)}")
    settings = config.filled("signals", settings)
    T, n = len(tr.steps), len(tr.example_ids)
    parts = []
    for name in settings["detectors"]:
        for detector, (score, flagged) in DETECTORS[name](tr, settings[name]).items():
            keep = ~np.isnan(score).ravel()
            parts.append(pd.DataFrame({
                "step": np.repeat(tr.steps, n)[keep],
                "example_id": np.tile(tr.example_ids, T)[keep],
                "detector": detector,
                "score": score.ravel()[keep].astype(float),
                "flagged": flagged.ravel()[keep].astype(bool),
            }))
    columns = ["step", "example_id", "detector", "score", "flagged"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def per_example(tr: Trajectories, planted_ids=None, groups: dict | None = None) -> pd.DataFrame:
    """One row per training example over the whole run (all checkpoints): cartography
    coordinates, forgetting, AUM, opposition, TracIn self-influence, final loss and correctness, and the
    planted truth (planted flag; planted group name, "" for none)."""
    carto = cartography(tr)
    events, never = forgetting(tr.values["correct"])
    ids = tr.example_ids
    group = np.full(len(ids), "", dtype=object)
    for name, members in (groups or {}).items():
        group[np.isin(ids, members)] = name
    return pd.DataFrame({
        "example_id": ids,
        "confidence": carto["confidence"][-1],
        "variability": carto["variability"][-1],
        "correctness": carto["correctness"][-1],
        "forgetting_events": events[-1],
        "never_learned": never[-1],
        "aum": _cumulative_mean(tr.values["margin"])[-1],
        "opposition": opposition(tr),
        "tracin_self_influence": np.sum(tr.lr[:, None] * tr.values["grad_norm"] ** 2, axis=0),
        "final_loss": tr.values["loss"][-1],
        "final_correct": tr.values["correct"][-1],
        "planted": np.isin(ids, list(planted_ids)) if planted_ids is not None else np.zeros(len(ids), dtype=bool),
        "planted_group": group.astype(str),
    })


def opposition(tr: Trajectories) -> np.ndarray:
    """Run-level gradient opposition of each example: the mean of -cos(g_i, mean g) over the
    checkpoints after the first (over all of them when there is one)."""
    cos = tr.values["grad_cos_mean"]
    return -(cos[1:] if len(cos) > 1 else cos).mean(0)


def generalization_events(metrics: pd.DataFrame, *, train_threshold: float, test_threshold: float) -> dict:
    """When train accuracy first reaches train_threshold, when test accuracy first reaches
    test_threshold at or after that step, and the delay between them (NaN where never)."""
    def first(column, threshold, after=-math.inf):
        hit = metrics.loc[(metrics[column] >= threshold) & (metrics["step"] >= after), "step"]
        return float(hit.iloc[0]) if len(hit) else float("nan")

    fit = first("train_acc", train_threshold)
    gen = first("test_acc", test_threshold, after=fit) if not math.isnan(fit) else float("nan")
    return {"train_threshold": train_threshold, "test_threshold": test_threshold,
            "step_memorized": fit, "step_generalized": gen, "delay_steps": gen - fit}


def edge_assessed(optimizer: str) -> bool:
    """Whether a run's sharpness is judged against 2/lr (`edge_of_stability`): the stability threshold of
    gradient descent (with momentum 2(1+beta)/lr), not of an adaptive optimizer, whose edge is in its
    preconditioned sharpness.

    The one place that decides it (re-exported as report.edge_assessed): the curvature stage records
    sharpness_threshold as null where it does not apply (and `readers.read_curvature` masks a table
    written before it did), so the headline, the tables, the figures, the CLI and the dashboards leave
    2/lr and the edge_* figures out."""
    return optimizer == "sgd"


def edge_of_stability(curvature: pd.DataFrame, *, tolerance: float, tail: float) -> dict:
    """Whether a run's sharpness sits at its stability threshold 2/lr (Cohen et al. 2021).

    `curvature`: one row per checkpoint with step, sharpness and sharpness_threshold (2/lr, or
    2(1+beta)/lr with momentum, per row so that a schedule is followed). Training is taken to
    span steps 0 to the last checkpoint's step (the last step is always a checkpoint); the tail
    is the checkpoints at or after (1 - tail) of it. Returns step_reached (the first checkpoint
    with sharpness >= (1 - tolerance) * threshold; NaN where never), tail_max_rel_dev (the
    largest |sharpness / threshold - 1| over the tail; NaN without a finite tail point) and
    at_edge (that deviation is at most tolerance)."""
    c = curvature.sort_values("step")
    step = c["step"].to_numpy(dtype=float)
    ratio = c["sharpness"].to_numpy(dtype=float) / c["sharpness_threshold"].to_numpy(dtype=float)
    reached = np.flatnonzero(ratio >= 1 - tolerance)
    dev = np.abs(ratio[step >= (1 - tail) * step.max()] - 1) if len(step) else np.array([])
    dev = dev[np.isfinite(dev)]
    worst = float(dev.max()) if dev.size else float("nan")
    return {"step_reached": float(step[reached[0]]) if reached.size else float("nan"),
            "tail_max_rel_dev": worst, "at_edge": bool(worst <= tolerance)}


def flagged_around(detections: pd.DataFrame, step: float) -> pd.DataFrame:
    """Per detector, the mean number of flagged examples per checkpoint before `step` and at or after it."""
    counts = detections.groupby(["detector", "step"])["flagged"].sum().reset_index()
    before = counts[counts["step"] < step].groupby("detector")["flagged"].mean()
    after = counts[counts["step"] >= step].groupby("detector")["flagged"].mean()
    out = pd.DataFrame({"flagged_before": before, "flagged_after": after}).reindex(sorted(counts["detector"].unique()))
    return out.rename_axis("detector").reset_index()[["detector", "flagged_before", "flagged_after"]]
