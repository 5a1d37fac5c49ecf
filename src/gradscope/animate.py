"""Animation of per-example gradient projections over checkpoints: DataFrames in, PNGs and a GIF out.

Each example's gradient is stored as a k-dimensional random projection (`grad_proj`). To
watch examples move over training, the projections are reduced to 2-D by one PCA fitted on
all checkpoints at once, so the axes mean the same thing in every frame; the axis limits are
fixed across frames too. Points are coloured by planted truth and by the cos-rule flag, so
the frames show whether the flagged examples are the planted ones and when they separate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import imageio.v3 as iio  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gradscope.artifacts import atomic_path  # noqa: E402

FRAME_FIGSIZE = (7.5, 7.0)  # fixed, and no tight bbox: every frame has the same pixel size
# Fixed margins (not constrained layout): the axes must not move between frames when the
# legend's counts change width; the legend sits in the bottom margin, off the data.
FRAME_MARGINS = dict(left=0.12, right=0.97, top=0.90, bottom=0.17)

# category -> (legend label, colour, marker size, draw order); rarer categories drawn on top
CATEGORIES = {
    "ordinary": ("ordinary", "#b0b0b0", 9, 1),
    "planted": ("planted, not flagged", "tab:orange", 22, 2),
    "flagged": ("flagged, not planted", "tab:blue", 22, 3),
    "both": ("planted & flagged", "tab:red", 26, 4),
}


@dataclass
class ProjectionLayout:
    """Everything the frames need: 2-D coordinates per (step, example) and fixed axes.

    points: columns step, example_id, pc1, pc2, planted, flagged (one row per step and
    selected example); steps: ascending checkpoint steps; mean, components, explained: the PCA
    (see `fit_pca`); xlim, ylim: axis limits shared by every frame.
    """

    points: pd.DataFrame
    steps: list[int]
    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray
    xlim: tuple[float, float]
    ylim: tuple[float, float]


def fit_pca(data: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows of `data` (n, k) by SVD of the centred matrix.

    Returns (mean (k,), components (n_components, k) with orthonormal rows, explained
    (n_components,) = fraction of total variance per component). Signs are fixed so the
    largest-magnitude entry of each component is positive, which makes the result
    deterministic (SVD signs are arbitrary).
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] < n_components:
        raise ValueError(f"fit_pca needs a 2-D array with at least {n_components} columns, got shape {data.shape}")
    mean = data.mean(axis=0)
    _, s, vt = np.linalg.svd(data - mean, full_matrices=False)
    comps = vt[:n_components].copy()
    if comps.shape[0] < n_components:  # fewer rows than components: pad with orthogonal zeros
        comps = np.vstack([comps, np.zeros((n_components - comps.shape[0], data.shape[1]))])
    idx = np.argmax(np.abs(comps), axis=1)
    comps *= np.where(comps[np.arange(len(comps)), idx] < 0, -1.0, 1.0)[:, None]
    total = float((s**2).sum())
    var = np.zeros(n_components)
    var[: min(n_components, s.size)] = (s[:n_components] ** 2)
    explained = var / total if total > 0 else var
    return mean, comps, explained


def project(data: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Coordinates (n, n_components) of the rows of `data` in a PCA from `fit_pca`."""
    return (np.asarray(data, dtype=np.float64) - mean) @ components.T


def robust_limits(values: np.ndarray, groups: np.ndarray | None = None, lo_pct: float = 0.5,
                  hi_pct: float = 99.5, margin: float = 0.08) -> tuple[float, float]:
    """Axis limits that hold every frame's bulk but ignore its few most extreme points.

    Per group (frame), the window between the `lo_pct` and `hi_pct` percentiles; the limits
    are the union of those windows plus a margin. Percentiles per frame rather than pooled
    keep a small cluster that exists in one frame only (planted examples that drift away
    late in training) in view, while a handful of outlier points at any checkpoint cannot
    squash the other frames.
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.zeros(len(values)) if groups is None else np.asarray(groups)
    keep = np.isfinite(values)
    values, groups = values[keep], groups[keep]
    if values.size == 0:
        return (-1.0, 1.0)
    windows = np.array([np.percentile(values[groups == g], [lo_pct, hi_pct]) for g in np.unique(groups)])
    lo, hi = float(windows[:, 0].min()), float(windows[:, 1].max())
    span = hi - lo
    if span <= 0:  # all equal: any window around the value
        span = max(abs(lo), 1.0)
    return (lo - margin * span, hi + margin * span)


def select_examples(examples: pd.DataFrame, n_points: int, seed: int = 0) -> np.ndarray:
    """Sorted ids of a fixed random subset of at most `n_points` examples.

    All planted examples are kept when they fit, since they are what the figure is about;
    the rest of the subset is drawn at random from the other examples with
    `numpy.random.default_rng(seed)`. If the planted ones alone exceed `n_points`, the subset
    is drawn from all examples so their share stays representative.
    """
    ids = np.unique(examples["example_id"].to_numpy())
    if len(ids) <= n_points:
        return ids
    rng = np.random.default_rng(seed)
    planted = np.unique(examples.loc[examples["planted"].astype(bool), "example_id"].to_numpy())
    if len(planted) > n_points:
        return np.sort(rng.choice(ids, size=n_points, replace=False))
    others = np.setdiff1d(ids, planted)
    extra = rng.choice(others, size=n_points - len(planted), replace=False)
    return np.sort(np.concatenate([planted, extra]))


def layout_projection(examples: pd.DataFrame, flagged: pd.DataFrame, *, n_points: int = 2000,
                      seed: int = 0) -> ProjectionLayout:
    """Select examples, fit the PCA once over all checkpoints, project, and fix the axis limits."""
    if "split" in examples.columns:  # the detectors judge the training split only
        examples = examples[examples["split"] == "train"]
    if examples.empty:
        raise ValueError("no examples to animate")
    ids = select_examples(examples, n_points, seed)
    sub = examples[examples["example_id"].isin(ids)].sort_values(["step", "example_id"]).reset_index(drop=True)
    # grad_proj arrives as an object column of arrays (or lists from Parquet); float16 storage
    # is widened so the SVD is not done in half precision
    data = np.stack([np.asarray(v, dtype=np.float64) for v in sub["grad_proj"].to_numpy()])
    mean, comps, explained = fit_pca(data)
    xy = project(data, mean, comps)

    flags = (flagged.groupby(["step", "example_id"])["flagged"].any().rename("flagged").reset_index()
             if len(flagged) else pd.DataFrame({"step": [], "example_id": [], "flagged": []}))
    points = pd.DataFrame({
        "step": sub["step"].to_numpy(dtype=np.int64),
        "example_id": sub["example_id"].to_numpy(dtype=np.int64),
        "pc1": xy[:, 0],
        "pc2": xy[:, 1],
        "planted": sub["planted"].to_numpy(dtype=bool),
    })
    flags = flags.astype({"step": np.int64, "example_id": np.int64})
    points = points.merge(flags, on=["step", "example_id"], how="left")
    # an example the detector did not score at a step was not flagged there
    points["flagged"] = points["flagged"].eq(True).to_numpy(dtype=bool)
    return ProjectionLayout(
        points=points,
        steps=sorted(int(s) for s in points["step"].unique()),
        mean=mean, components=comps, explained=explained,
        xlim=robust_limits(xy[:, 0], points["step"].to_numpy()),
        ylim=robust_limits(xy[:, 1], points["step"].to_numpy()),
    )


def render_projection_animation(examples: pd.DataFrame, flagged: pd.DataFrame, gif_path, frame_paths, *,
                                 n_points: int = 2000, frame_duration_s: float = 0.6, seed: int = 0,
                                 dpi: int = 110, title: str = "") -> ProjectionLayout:
    """Write one PNG per checkpoint and a looping GIF of them.

    Each frame is a scatter of the selected examples' gradient projections at one step, in
    the shared 2-D PCA, coloured as ordinary / planted / flagged / planted & flagged with
    per-frame counts in the legend. `frame_paths` lists one PNG path per distinct step, in
    ascending step order. Returns the layout (PCA and coordinates) the frames were drawn from.
    """
    layout = layout_projection(examples, flagged, n_points=n_points, seed=seed)
    frame_paths = [Path(p) for p in frame_paths]
    if len(frame_paths) != len(layout.steps):
        raise ValueError(f"{len(frame_paths)} frame paths for {len(layout.steps)} checkpoint steps")

    frames = []
    for step, frame_path in zip(layout.steps, frame_paths):
        _draw_frame(layout, step, frame_path, dpi=dpi, title=title)
        # read the PNG back so the GIF holds exactly the pixels of the frame files
        frames.append(iio.imread(frame_path)[..., :3])
    with atomic_path(gif_path) as tmp:
        # the pillow GIF writer takes duration in milliseconds; loop=0 repeats forever
        iio.imwrite(tmp, np.stack(frames), extension=".gif",
                    duration=int(round(frame_duration_s * 1000)), loop=0)
    return layout


def _draw_frame(layout: ProjectionLayout, step: int, path: Path, *, dpi: int, title: str) -> None:
    pts = layout.points[layout.points["step"] == step]
    planted, flagged = pts["planted"].to_numpy(), pts["flagged"].to_numpy()
    masks = {
        "ordinary": ~planted & ~flagged,
        "planted": planted & ~flagged,
        "flagged": ~planted & flagged,
        "both": planted & flagged,
    }
    fig, ax = plt.subplots(figsize=FRAME_FIGSIZE)
    fig.subplots_adjust(**FRAME_MARGINS)
    try:
        for key, mask in masks.items():
            label, color, size, z = CATEGORIES[key]
            # an empty scatter still gives a legend entry, so the legend is the same every frame
            ax.scatter(pts["pc1"].to_numpy()[mask], pts["pc2"].to_numpy()[mask], s=size, c=[color],
                       alpha=0.55 if key == "ordinary" else 0.85, linewidths=0, zorder=z,
                       label=f"{label} ({int(mask.sum()):,})")
        ax.set_xlim(*layout.xlim)
        ax.set_ylim(*layout.ylim)
        ax.set_xlabel(f"PC1 of gradient projection ({100 * layout.explained[0]:.1f}% var)")
        ax.set_ylabel(f"PC2 of gradient projection ({100 * layout.explained[1]:.1f}% var)")
        ax.grid(True, alpha=0.25)
        fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.005), ncols=2, markerscale=1.5, frameon=False)
        outside = ((pts["pc1"] < layout.xlim[0]) | (pts["pc1"] > layout.xlim[1])
                   | (pts["pc2"] < layout.ylim[0]) | (pts["pc2"] > layout.ylim[1])).sum()
        if outside:  # the limits are robust percentiles, so say what was left out of view
            ax.text(0.01, 0.01, f"{int(outside)} points outside view", transform=ax.transAxes,
                    fontsize="small", color="0.35", va="bottom")
        head = f"{title}\n" if title else ""
        ax.set_title(f"{head}step {step:,}  (frame {layout.steps.index(step) + 1}/{len(layout.steps)})")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    finally:
        plt.close(fig)
