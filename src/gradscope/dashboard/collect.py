"""What a dashboard page carries: one run's artifacts read into plain, JSON-ready data.

Each run folder (`results/runs/{experiment}/{run}/`) is read as far as it goes: a run still
training, or one whose analysis failed, gives what exists (its status says which). Small
per-step tables travel as JSON lists, rounded to 6 significant digits; per-example
trajectories (examples x checkpoints) travel as base64 float32, decoded in the page only when
the run is shown. Per-example data is subsampled to `max_examples` training examples per run:
each detector's top `top_k` at every checkpoint first (always kept, even past the cap), the
planted examples (all of them up to half the cap, else a seeded sample of that many), then a
seeded random sample of the others up to the cap. Of the examples tables only the columns shown
are read (EXAMPLE_COLUMNS), and the gradient projections only of the examples kept.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope import artifacts, layout

METRIC_COLUMNS = ["step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "clipped_fraction",
                  "weight_norm", "wall_s"]
DYNAMICS_COLUMNS = ["weight_norm", "grad_norm", "grad_norm_top5", "grad_norm_mid90", "grad_norm_bottom5",
                    "adam_eff_lr_median", "adam_snr_median", "update_to_decay_ratio"]
CURVATURE_COLUMNS = ["sharpness", "sharpness_threshold", "update_sharpness", "hessian_trace", "hessian_trace_stderr",
                     "fisher_trace", "gauss_newton_trace", "gauss_newton_stderr", "input_jacobian_norm",
                     "input_hessian_trace", "lr"]
TRAJECTORY_COLUMNS = ["loss", "p_true", "margin", "grad_norm"]
EXAMPLE_COLUMNS = ["example_id", "label", "planted", *TRAJECTORY_COLUMNS]  # of the training rows (grad_proj: of those kept)
CARTOGRAPHY_COLUMNS = ["confidence", "variability", "correctness", "forgetting_events", "aum", "opposition",
                       "tracin_self_influence", "final_loss"]
SIGNAL_FILES = ("detections", "evaluation", "groups", "group_pairs", "group_losses", "loss_changes", "per_example")
HIST_BINS = 40


# ---- encoding -------------------------------------------------------------------------------
def clean(x):
    """JSON-ready: NaN and inf become None, floats rounded to 6 significant digits, numpy to Python."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return float(f"{x:.6g}") if math.isfinite(x) else None
    return x


def f32(array) -> str:
    """Base64 of a little-endian float32 array (the page decodes it into a Float32Array)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def columns(df: pd.DataFrame, names) -> dict:
    return {c: clean(df[c].to_numpy()) for c in names if c in df.columns}


# ---- status ---------------------------------------------------------------------------------
def run_status(folder: Path, logs_dir: Path | None = None) -> dict:
    """How far a run got: {"status", "detail"}, decided by `gradscope.results.run_status` (the status
    `gradscope runs` and `gradscope show` print: training, damaged, failed, stopped, pending,
    analysing or done; detail its note)."""
    from gradscope.results import run_status as status_of

    status = status_of(Path(folder), logs_dir, headline=False)
    return {"status": status["status"], "detail": status.get("note") or "trained and analysed"}


def parse_varying(name: str) -> dict:
    """`wd~1.0_seed~0` -> {"wd": 1.0, "seed": 0}: the grid values in a run's name, numbers as numbers."""
    out = {}
    for part in name.split("_"):
        if "~" not in part:
            continue
        key, value = part.split("~", 1)
        try:
            out[key] = int(value) if re.fullmatch(r"-?\d+", value) else float(value)
        except ValueError:
            out[key] = value
    return out


# ---- one run --------------------------------------------------------------------------------
def read_metrics(folder: Path) -> pd.DataFrame | None:
    """metrics.parquet; for a failed run its partial metrics; for a run in training the rows in its latest
    resumable checkpoint."""
    for name in ("metrics", "metrics_partial"):
        if layout.in_run(folder, name).exists():
            return artifacts.read_parquet(layout.in_run(folder, name))
    resume = layout.checkpoints_in(layout.in_run(folder, "resume"))
    if resume:
        from gradscope import checkpoints  # torch only for a run still in training

        try:
            rows = checkpoints.load_state(resume[-1]).get("metrics_rows") or []
        except Exception:  # a checkpoint being written: show nothing rather than fail the page
            rows = []
        return pd.DataFrame(rows, columns=list(artifacts.METRICS)) if rows else None
    return None


def collect_run(folder, *, max_examples: int, top_k: int, seed: int) -> dict:
    """Everything the page shows for one run, from what exists in its folder. A file that does not
    read (a damaged run) leaves out only what it feeds, and is named, with the command that writes
    it again, in out["problems"]."""
    folder = Path(folder)
    out, problems = {}, []

    def read(reader, *args):
        try:
            return reader(*args)
        except (OSError, ValueError) as e:  # gradscope's readers name the file and how to write it again
            problems.append(str(e).splitlines()[0])
            return None

    metrics = read(read_metrics, folder)
    if metrics is not None and len(metrics):
        out["metrics"] = columns(metrics.sort_values("step"), METRIC_COLUMNS)
    optim = read(optim_settings, folder)
    if optim is not None:
        out["optim"] = optim
    if layout.in_run(folder, "dynamics").exists():
        dynamics = read(artifacts.read_parquet, layout.in_run(folder, "dynamics"))
        if dynamics is not None:
            out["dynamics"] = collect_dynamics(dynamics)
    curv_paths = layout.tables_in(folder, "curvature")
    from gradscope.readers import read_curvature  # sharpness_threshold null where 2/lr does not apply

    curvature = read(read_curvature, curv_paths) if curv_paths else None
    if curvature is not None:
        out["curvature"] = collect_curvature(curvature.sort_values("step"))
    signals = {}
    for name in SIGNAL_FILES:
        path = layout.in_run(folder, f"signals_{name}")
        if path.exists():
            table = read(artifacts.read_parquet, path)
            if table is not None:
                signals[name] = table
    if "evaluation" in signals:
        out["detectors"] = collect_evaluation(signals["evaluation"])
    if "group_losses" in signals and "group_pairs" in signals:
        out["groups"] = collect_groups(signals["group_losses"], signals["group_pairs"], signals.get("groups"))
    ex_paths = layout.tables_in(folder, "examples")
    from gradscope.readers import read_examples

    train = read(lambda: read_examples(ex_paths, EXAMPLE_COLUMNS, split="train")) if ex_paths else None
    if train is not None:
        def projections(ids):  # the kept examples' gradient projections, file by file
            return read(lambda: read_examples(ex_paths, ["example_id", "grad_proj"], split="train", ids=ids))

        out["examples"] = collect_examples(train, signals.get("detections"), signals.get("per_example"),
                                           signals.get("loss_changes"), max_examples=max_examples, top_k=top_k,
                                           seed=seed, projections=projections)
    if problems:
        out["problems"] = problems
    return out


def collect_dynamics(dyn: pd.DataFrame) -> dict | None:
    """Per layer (parameter tensor) and logged step: the dynamics columns as `[layer][step]` lists."""
    if dyn.empty:
        return None
    steps = sorted(dyn["step"].unique())
    layers = list(dict.fromkeys(dyn["layer"]))  # model order
    out = {"step": clean(steps), "layers": layers}
    for col in DYNAMICS_COLUMNS:
        wide = dyn.pivot_table(index="layer", columns="step", values=col, aggfunc="first", dropna=False)
        wide = wide.reindex(index=layers, columns=steps)
        values = wide.to_numpy(dtype=float)
        if np.isfinite(values).any():
            out[col] = clean(values)
    return out


def collect_curvature(curv: pd.DataFrame) -> dict:
    out = {"step": clean(curv["step"].to_numpy()), **columns(curv, CURVATURE_COLUMNS)}
    out["top_eigenvalues"] = clean([list(v) if v is not None else [] for v in curv["top_eigenvalues"]])
    # spectral densities by step: the Hessian's (curvature.density) and the GGN's (with curvature.ggn)
    for key in ("density", "ggn_density"):
        out[key] = {}
        if f"{key}_grid" not in curv:
            continue
        for step, grid, dens in zip(curv["step"], curv[f"{key}_grid"], curv[key]):
            if grid is not None and len(grid):
                out[key][str(int(step))] = {"grid": clean(np.asarray(grid)), "density": clean(np.asarray(dens))}
    return out


def collect_evaluation(ev: pd.DataFrame) -> dict:
    out = {}
    for det, d in ev.sort_values("step").groupby("detector", sort=True):
        out[det] = columns(d, ["step", "n_flagged", "auroc", "average_precision", "precision_at_k", "recall_at_k"])
    return out


def collect_groups(losses: pd.DataFrame, pairs: pd.DataFrame, groups: pd.DataFrame | None) -> list[dict]:
    """Per checkpoint interval: each group's mean loss over all checkpoints, its size, and the pairs with their cosine."""
    intervals = []
    for (a, b), d in losses.sort_values(["step_from", "step_to"]).groupby(["step_from", "step_to"], sort=True):
        p = pairs[(pairs["step_from"] == a) & (pairs["step_to"] == b)]
        sizes = {} if groups is None else groups[(groups["step_from"] == a) & (groups["step_to"] == b)].groupby("group").size()
        entry = {"from": int(a), "to": int(b), "groups": [], "pairs": []}
        for g, dg in d.sort_values("step").groupby("group"):
            entry["groups"].append({"group": int(g), "size": int(sizes.get(g, 0)) if len(sizes) else None,
                                    "step": clean(dg["step"].to_numpy()), "mean_loss": clean(dg["mean_loss"].to_numpy())})
        for row in p.itertuples(index=False):
            entry["pairs"].append({"a": int(row.group_a), "b": int(row.group_b), "cosine": clean(row.cosine),
                                   "opposing": bool(row.opposing)})
        intervals.append(entry)
    return intervals


def _histograms(values_by_key: dict, planted: dict) -> dict:
    """Per key (a step or an interval): counts of clean and planted examples over shared-per-key bins."""
    out = {}
    for key, (ids, values) in values_by_key.items():
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        lo, hi = float(values[finite].min()), float(values[finite].max())
        if hi <= lo:
            hi = lo + 1e-6
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        is_planted = np.array([planted.get(int(i), False) for i in ids])
        out[key] = {"edges": clean(edges),
                    "clean": np.histogram(values[finite & ~is_planted], edges)[0].tolist(),
                    "planted": np.histogram(values[finite & is_planted], edges)[0].tolist()}
    return out


def select_examples(ids: np.ndarray, planted: np.ndarray, flagged: set, max_examples: int, seed: int,
                    max_planted: int | None = None) -> np.ndarray:
    """Sorted ids: every flagged example; every planted one, or where there are more than `max_planted`
    (None: no bound) a seeded sample of that many; then a seeded random sample of the rest (unplanted
    first, then the planted left out) up to max_examples."""
    ids = np.asarray(ids)
    planted = np.asarray(planted, bool)
    rng = np.random.default_rng(seed)
    keep = set(flagged) & set(ids.tolist())
    marked = np.array(sorted(set(ids[planted].tolist()) - keep), dtype=np.int64)
    if max_planted is not None and len(marked) > max_planted:
        chosen = rng.choice(marked, size=max(int(max_planted), 0), replace=False)
        left = np.setdiff1d(marked, chosen)
        marked = chosen
    else:
        left = np.zeros(0, np.int64)
    keep |= set(marked.tolist())
    for pool in (np.array(sorted(set(ids[~planted].tolist()) - keep), dtype=np.int64), left):
        room = max(max_examples - len(keep), 0)
        if room and len(pool):
            keep |= set(rng.choice(pool, size=min(room, len(pool)), replace=False).tolist())
    return np.array(sorted(keep), dtype=np.int64)


def planted_cap(max_examples: int) -> int:
    """The planted examples the dashboard keeps at most: half of max_examples (rounded up)."""
    return max_examples - max_examples // 2


def collect_examples(train: pd.DataFrame, detections: pd.DataFrame | None, per_example: pd.DataFrame | None,
                     loss_changes: pd.DataFrame | None, *, max_examples: int, top_k: int, seed: int,
                     projections=None) -> dict:
    """Trajectories of the sampled training examples, the mean over all of them, their gradient-projection PCA,
    each detector's top-k per checkpoint, and loss / Δloss histograms over all training examples.

    train: the training rows (step, example_id, label, planted and the trajectory columns; grad_proj
    too, or `projections`: ids -> the step, example_id and grad_proj rows of those examples)."""
    from gradscope.animate import fit_pca, project, robust_limits  # the GIF's PCA: the same axes in both

    steps = sorted(int(s) for s in train["step"].unique())
    first = train[train["step"] == steps[0]].sort_values("example_id")
    planted_of = dict(zip(first["example_id"].astype(int), first["planted"].astype(bool)))
    topk = {}
    if detections is not None and len(detections):
        best = (detections.dropna(subset=["score"]).sort_values(["detector", "step", "score"], ascending=[True, True, False],
                                                                kind="stable")
                .groupby(["detector", "step"], sort=True).head(top_k))
        for (det, step), d in best.groupby(["detector", "step"], sort=True):
            topk.setdefault(det, {})[str(int(step))] = clean(d["example_id"].to_numpy())
    flagged = {int(i) for det in topk.values() for ids in det.values() for i in ids}
    chosen = select_examples(first["example_id"].to_numpy(), first["planted"].to_numpy(), flagged, max_examples, seed,
                             max_planted=planted_cap(max_examples))
    n, t = len(chosen), len(steps)
    sub = train[train["example_id"].isin(chosen)].sort_values(["example_id", "step"])
    out = {"step": steps, "ids": clean(chosen), "label": clean(first.set_index("example_id").loc[chosen, "label"].to_numpy()),
           "planted": clean(first.set_index("example_id").loc[chosen, "planted"].to_numpy()), "n_train": len(first),
           "topk": topk, "mean": {}, "traj": {}}
    for col in TRAJECTORY_COLUMNS:
        wide = sub.pivot(index="example_id", columns="step", values=col).reindex(index=chosen, columns=steps)
        out["traj"][col] = f32(wide.to_numpy())  # (examples, checkpoints), row-major
        out["mean"][col] = clean(train.groupby("step")[col].mean().reindex(steps).to_numpy())
    proj = None
    if "grad_proj" in sub.columns and len(sub):
        proj = np.stack(sub["grad_proj"].map(np.asarray).to_numpy()).astype(np.float64)
    elif projections is not None and len(sub):
        rows = projections(chosen)
        if rows is not None and "grad_proj" in rows.columns:
            rows = rows.sort_values(["example_id", "step"], kind="stable")
            if (len(rows) == len(sub) and np.array_equal(rows["example_id"].to_numpy(), sub["example_id"].to_numpy())
                    and np.array_equal(rows["step"].to_numpy(), sub["step"].to_numpy())):
                proj = np.stack(rows["grad_proj"].map(np.asarray).to_numpy()).astype(np.float64)
    if proj is not None:
        if proj.shape[1] >= 2:
            mean, comps, explained = fit_pca(proj)
            xy = project(proj, mean, comps)  # rows ordered (example, step)
            cube = xy.reshape(n, t, 2).transpose(1, 0, 2)  # (checkpoints, examples, 2)
            stp = sub["step"].to_numpy()
            out["pca"] = {"xy": f32(cube), "explained": clean(explained),
                          "xrange": clean(robust_limits(xy[:, 0], stp)), "yrange": clean(robust_limits(xy[:, 1], stp))}
    if per_example is not None and len(per_example):
        pe = per_example.set_index("example_id").reindex(chosen)
        out["cartography"] = {c: f32(pe[c].to_numpy(dtype=float)) for c in CARTOGRAPHY_COLUMNS if c in pe.columns}
        out["cartography"]["planted_group"] = [g if isinstance(g, str) else "" for g in pe["planted_group"]]
    out["loss_hist"] = _histograms({str(s): (d["example_id"].to_numpy(), d["loss"].to_numpy())
                                    for s, d in train.groupby("step")}, planted_of)
    if loss_changes is not None and len(loss_changes):
        out["dloss_hist"] = _histograms({f"{a}-{b}": (d["example_id"].to_numpy(), d["delta_loss"].to_numpy())
                                         for (a, b), d in loss_changes.groupby(["step_from", "step_to"], sort=True)},
                                        planted_of)
    return out


def optim_settings(folder: Path) -> dict | None:
    """The run's optimizer and gradient clipping (its config.yaml), for the Training tab: the
    clipped-steps panel says clipping is off rather than draw a line at 0; None without a config.yaml."""
    import yaml

    path = layout.in_run(folder, "config")
    if not path.exists():
        return None
    try:
        optim = (yaml.safe_load(path.read_text()) or {}).get("optim") or {}
    except yaml.YAMLError as e:
        raise ValueError(f"cannot read {path}: {str(e).splitlines()[0]}") from e
    return {"name": optim.get("name"), "grad_clip": clean(optim.get("grad_clip"))}
