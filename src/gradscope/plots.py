"""Static figures of a run or a sweep: DataFrames in, PNG files out.

Every function takes the tables defined in `gradscope.artifacts` (or a subset of their
columns), draws one figure with matplotlib's object-oriented API on the non-interactive Agg
backend, and writes it atomically as PNG. Figure sizes are fixed (no tight bounding box), so
the pixel size of a figure is `figsize * dpi` and does not depend on the data.

Steps are drawn on a log axis at `step + 1` wherever the interesting dynamics span decades
(grokking happens orders of magnitude after memorization) and step 0 must stay visible;
the axis label says so. Curvature uses linear steps, since the edge of stability is read there.
The progress measures' figure is in `gradscope.progress_plots` (`plot_progress`, importable from here).
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd

# the figures' shared ground (signal_plots, timeline_plots and intervention_plots take these names from here)
from gradscope._figures import STEP_LABEL, TEST_COLOR, TRAIN_COLOR, plt
from gradscope._figures import save as _save
from gradscope.progress_plots import PROGRESS_FIGSIZE, plot_progress  # noqa: F401  (plots.plot_progress, as before)

# Fixed figure sizes in inches; chosen so that size * dpi is a whole number of pixels at
# common dpis, which keeps PNG shapes predictable.
TRAINING_FIGSIZE = (12.0, 4.5)
FLAGGED_FIGSIZE = (16.0, 4.5)  # three panels (count, AUROC, average precision) and the legend
FLAGGED_FIGSIZE_ONE = (8.5, 4.5)  # count only: no ground truth
CURVATURE_FIGSIZE = (8.0, 9.0)
SWEEP_FIGSIZE = (13.0, 5.0)
SWEEP_SHARPNESS_FIGSIZE = (10.0, 8.0)
# A sharpness this many times below 2/lr would be a flat line at the bottom of a linear axis.
LOG_SHARPNESS_RATIO = 10.0
# Accuracy that counts as "reached" for the markers of the grokking delay.
REACHED_ACC = 0.95


def plot_training(metrics: pd.DataFrame, path, *, title: str, dpi: int = 110) -> None:
    """Loss (log y) and accuracy of train vs test against step + 1 on a log axis.

    Dotted vertical lines mark the first step at which train and test accuracy reach
    `REACHED_ACC`, so the grokking delay (memorization long before generalization) reads as
    the gap between the two lines.
    """
    m = metrics.sort_values("step")
    x = m["step"].to_numpy(dtype=float) + 1.0
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=TRAINING_FIGSIZE, layout="constrained")
    try:
        for col, color, name in (("train_loss", TRAIN_COLOR, "train"), ("test_loss", TEST_COLOR, "test")):
            y = m[col].to_numpy(dtype=float)
            # a log axis cannot show zero or negative loss; mask them rather than fail
            y = np.where(y > 0, y, np.nan)
            ax_loss.plot(x, y, color=color, lw=1.6, label=name)
        ax_loss.set_xscale("log")
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel(STEP_LABEL)
        ax_loss.set_ylabel("loss (log scale)")
        ax_loss.set_title("Loss")
        ax_loss.grid(True, which="major", alpha=0.3)
        ax_loss.legend()

        for col, color, name in (("train_acc", TRAIN_COLOR, "train"), ("test_acc", TEST_COLOR, "test")):
            acc = m[col].to_numpy(dtype=float)
            ax_acc.plot(x, acc, color=color, lw=1.6, label=name)
            reached = _first_reaching(x, acc, REACHED_ACC)
            if reached is not None:
                ax_acc.axvline(reached, color=color, ls=":", lw=1.3,
                               label=f"{name} acc ≥ {REACHED_ACC:g} at step {int(round(reached - 1)):,}")
        ax_acc.set_xscale("log")
        ax_acc.set_ylim(-0.02, 1.02)
        ax_acc.set_xlabel(STEP_LABEL)
        ax_acc.set_ylabel("accuracy (fraction correct)")
        ax_acc.set_title("Accuracy")
        ax_acc.grid(True, which="major", alpha=0.3)
        ax_acc.legend(loc="best")
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_flagged(per_step: pd.DataFrame, path, *, title: str, dpi: int = 110) -> None:
    """Detector comparison: examples flagged per checkpoint by each detector and, where the
    data plants ground truth, each detector's AUROC and average precision against it.

    The quality panels appear only where `auroc` exists and is not all NaN (runs with planted
    examples); dashed lines mark chance (AUROC 0.5; average precision = the planted fraction
    is not known here, so none is drawn there). One legend, outside the panels, names the
    detectors.
    """
    has_truth = "auroc" in per_step.columns and per_step["auroc"].notna().any()
    panels = [("n_flagged", "flagged examples (count)", "Flagged per checkpoint")]
    if has_truth:
        panels += [("auroc", "AUROC vs planted examples", "AUROC per checkpoint"),
                   ("average_precision", "average precision vs planted", "Average precision per checkpoint")]
    fig, axes = plt.subplots(1, len(panels), figsize=FLAGGED_FIGSIZE if has_truth else FLAGGED_FIGSIZE_ONE,
                             layout="constrained", squeeze=False)
    try:
        detectors = sorted(per_step["detector"].unique()) if len(per_step) else []
        colors = _colors(len(detectors))
        markers = "osD^v<>ph*XP"
        for ax, (column, ylabel, panel_title) in zip(axes[0], panels):
            for i, (det, color) in enumerate(zip(detectors, colors)):
                d = per_step[per_step["detector"] == det].sort_values("step")
                if d[column].notna().any():
                    ax.plot(d["step"].to_numpy(dtype=float) + 1.0, d[column].to_numpy(dtype=float),
                            marker=markers[i % len(markers)], ms=3.5, lw=1.4, color=color, label=det)
            if column == "auroc":
                ax.axhline(0.5, color="0.35", ls="--", lw=1.2)
            if column != "n_flagged":
                ax.set_ylim(0.0, 1.02)
            else:
                ax.set_ylim(bottom=0)
            ax.set_xscale("log")
            ax.set_xlabel(STEP_LABEL)
            ax.set_ylabel(ylabel)
            ax.set_title(panel_title)
            ax.grid(True, alpha=0.3)
        if detectors:  # an empty table still gives a (blank) figure, without a legend warning
            fig.legend(*axes[0, 0].get_legend_handles_labels(), title="detector", loc="outside right center")
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def _finite_values(c: pd.DataFrame, column: str) -> np.ndarray:
    values = c[column].to_numpy(dtype=float) if column in c else np.array([])
    return values[np.isfinite(values)]


def _finite(c: pd.DataFrame, column: str) -> bool:
    return _finite_values(c, column).size > 0


def plot_curvature(curvature: pd.DataFrame, metrics: pd.DataFrame, path, *, title: str, dpi: int = 110) -> None:
    """Every curvature measure over training, stacked on the train loss's linear step axis.

    Panels: train loss; sharpness (top Hessian eigenvalue; lighter: the next eigenvalues; the
    update sharpness u'Hu/|u|^2 when measured) against 2/lr; the Hessian trace (± 1 s.e.) with
    the empirical Fisher and Gauss-Newton traces; and, for dense inputs, the input-Jacobian
    norm and input-Hessian trace. Sharpness rising to and hovering at 2/lr is the edge of
    stability (Cohen et al. 2021). When sharpness stays far below the threshold, the sharpness
    axis is logarithmic so that both the curve and the line stay visible. Where 2/lr does not
    apply (an adaptive optimizer: sharpness_threshold null, see report.edge_assessed) no line is drawn.
    """
    c = curvature.sort_values("step")
    m = metrics.sort_values("step")
    sensitivity = _finite(c, "input_jacobian_norm") or _finite(c, "input_hessian_trace")
    n_panels = 4 if sensitivity else 3
    fig, axes = plt.subplots(n_panels, 1, figsize=(CURVATURE_FIGSIZE[0], CURVATURE_FIGSIZE[1] * n_panels / 3),
                             sharex=True, layout="constrained")
    ax_l, ax_s, ax_t = axes[:3]
    try:
        loss = m["train_loss"].to_numpy(dtype=float)
        ax_l.plot(m["step"].to_numpy(), loss, color=TRAIN_COLOR, lw=1.4, label="train loss")
        if np.nanmin(loss) > 0:  # losses span decades during training; log only when legal
            ax_l.set_yscale("log")
            ax_l.set_ylabel("train loss (log scale)")
        else:
            ax_l.set_ylabel("train loss")
        ax_l.set_title("Train loss")
        ax_l.grid(True, alpha=0.3)

        steps = c["step"].to_numpy()
        sharp = c["sharpness"].to_numpy(dtype=float)
        if "top_eigenvalues" in c:
            k = max(len(v) for v in c["top_eigenvalues"])
            for j in range(1, k):
                vals = [v[j] if len(v) > j else np.nan for v in c["top_eigenvalues"]]
                ax_s.plot(steps, vals, marker=".", lw=1.0, color="tab:red", alpha=0.35,
                          label="next eigenvalues" if j == 1 else None)
        ax_s.plot(steps, sharp, marker="o", ms=4, lw=1.4, color="tab:red", label="sharpness (top Hessian eigenvalue)")
        if _finite(c, "update_sharpness"):
            ax_s.plot(steps, c["update_sharpness"].to_numpy(dtype=float), marker="s", ms=3, lw=1.2, color="tab:orange",
                      label="update sharpness u'Hu/|u|²")
        if _finite(c, "ggn_top_eigenvalue"):
            ax_s.plot(steps, c["ggn_top_eigenvalue"].to_numpy(dtype=float), marker="^", ms=3, lw=1.2, color="tab:brown",
                      label="top Gauss-Newton eigenvalue")
        thresholds = c["sharpness_threshold"].to_numpy(dtype=float)
        thresholds = thresholds[np.isfinite(thresholds)]
        threshold = float(np.median(thresholds)) if thresholds.size else math.nan
        if np.isfinite(threshold):
            ax_s.axhline(threshold, color="0.2", ls="--", lw=1.3, label=f"2/lr = {threshold:.4g}")
        finite = sharp[np.isfinite(sharp)]
        far_below = (np.isfinite(threshold) and finite.size and finite.min() > 0
                     and threshold / finite.max() >= LOG_SHARPNESS_RATIO)
        if far_below:
            ax_s.set_yscale("symlog", linthresh=max(finite.min(), 1e-12))
            ax_s.set_ylabel("eigenvalue (symlog scale)")
        else:
            ax_s.set_ylabel("eigenvalue")
            if np.isfinite(threshold):
                ggn_top = _finite_values(c, "ggn_top_eigenvalue")  # may exceed the Hessian's
                top = max(threshold, finite.max() if finite.size else threshold, ggn_top.max(initial=-np.inf))
                drawn = np.concatenate([finite, _finite_values(c, "update_sharpness"), ggn_top])  # every curve in view
                bottom = min(0.0, drawn.min() if drawn.size else 0.0)
                if bottom < 0:  # a margin below a negative value, as matplotlib leaves one
                    bottom -= 0.04 * (1.12 * top - bottom)
                ax_s.set_ylim(bottom=bottom, top=1.12 * top)
        ax_s.set_title("Sharpness vs edge-of-stability threshold" if np.isfinite(threshold) else
                       "Sharpness (2/lr not drawn: the threshold of gradient descent, not of this optimizer)")
        ax_s.grid(True, alpha=0.3)
        ax_s.legend(loc="best", fontsize="small")

        trace = c["hessian_trace"].to_numpy(dtype=float)
        err = c["hessian_trace_stderr"].to_numpy(dtype=float) if "hessian_trace_stderr" in c else None
        ax_t.errorbar(steps, trace, yerr=err, fmt="o-", ms=4, lw=1.4, capsize=3, color="tab:purple",
                      label="Hessian (Hutchinson ± 1 s.e.)")
        if _finite(c, "fisher_trace"):
            ax_t.plot(steps, c["fisher_trace"].to_numpy(dtype=float), "s-", ms=3, lw=1.2, color="tab:green",
                      label="empirical Fisher")
        if _finite(c, "gauss_newton_trace"):
            gn_err = c["gauss_newton_stderr"].to_numpy(dtype=float) if "gauss_newton_stderr" in c else None
            ax_t.errorbar(steps, c["gauss_newton_trace"].to_numpy(dtype=float), yerr=gn_err, fmt="^-", ms=3, lw=1.2,
                          capsize=2, color="tab:brown", label="Gauss-Newton (Monte Carlo ± 1 s.e.)")
        ax_t.set_ylabel("trace")
        ax_t.set_title("Curvature traces")
        ax_t.grid(True, alpha=0.3)
        ax_t.legend(loc="best", fontsize="small")
        if sensitivity:
            ax_i = axes[3]
            ax_i.plot(steps, c["input_jacobian_norm"].to_numpy(dtype=float), "o-", ms=3, lw=1.2, color="tab:blue",
                      label="input-Jacobian norm ‖∂f/∂x‖_F")
            ax_i2 = ax_i.twinx()
            ax_i2.plot(steps, c["input_hessian_trace"].to_numpy(dtype=float), "s--", ms=3, lw=1.2, color="tab:cyan",
                       label="input-Hessian trace of the loss")
            ax_i.set_ylabel("input-Jacobian norm")
            ax_i2.set_ylabel("input-Hessian trace")
            ax_i.set_title("Sensitivity to the input (mean over the subset)")
            ax_i.grid(True, alpha=0.3)
            lines = ax_i.get_legend_handles_labels(), ax_i2.get_legend_handles_labels()
            ax_i.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], loc="best", fontsize="small")
        axes[-1].set_xlabel("step")
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def _has_lists(c: pd.DataFrame, column: str) -> bool:
    return column in c and any(len(v) for v in c[column] if v is not None)


def plot_density(curvature: pd.DataFrame, path, *, title: str, dpi: int = 110) -> None:
    """Spectral density (stochastic Lanczos quadrature) at each checkpoint, coloured by step: the
    Hessian's, and beside it the generalized Gauss-Newton's when the table has it (curvature.ggn),
    on the same density axis. The GGN is positive semi-definite: its mass sits on [0, top], where
    the Hessian's negative eigenvalues (non-convexity) show only in the left panel."""
    c = curvature.sort_values("step")
    panels = [("density_grid", "density", "Hessian")]
    if _has_lists(c, "ggn_density"):
        panels.append(("ggn_density_grid", "ggn_density", "Gauss-Newton (GGN)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 5) if len(panels) > 1 else (8, 5),
                             sharey=True, layout="constrained", squeeze=False)
    try:
        colors = plt.get_cmap("viridis")(np.linspace(0, 1, max(len(c), 2)))
        for ax, (grid_col, dens_col, name) in zip(axes[0], panels):
            for color, (_, row) in zip(colors, c.iterrows()):
                grid, dens = np.asarray(row[grid_col], dtype=float), np.asarray(row[dens_col], dtype=float)
                if grid.size:
                    ax.plot(grid, np.maximum(dens, 1e-12), color=color, lw=1.2, label=f"step {int(row['step'])}")
            ax.set_yscale("log")
            ax.set_xlabel(f"{name} eigenvalue")
            ax.set_title(f"{name} spectral density" if len(panels) > 1 else title)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelleft=True)  # sharey hides them; each panel should read on its own
        peak = max((float(np.max(d)) for col in ("density", "ggn_density") if col in c for d in c[col] if len(d)),
                   default=1.0)
        axes[0, 0].set_ylim(bottom=max(1e-12, 1e-6 * peak))  # below, only the Gaussian kernels' tails
        axes[0, 0].set_ylabel("density (log scale)")
        axes[0, -1].legend(loc="upper right", fontsize="small", ncol=2)
        if len(panels) > 1:
            fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_sweep(metrics_by_run: dict[str, pd.DataFrame], path, *, title: str, dpi: int = 110) -> None:
    """Train and test accuracy of every run of a sweep against step + 1 (log axis).

    One colour per run, the same in both panels; one shared legend to the right keeps the
    panels uncluttered for up to ~10 runs (more runs get a continuous colour map).
    """
    fig, (ax_tr, ax_te) = plt.subplots(1, 2, figsize=SWEEP_FIGSIZE, sharey=True, layout="constrained")
    try:
        names = list(metrics_by_run)
        for name, color in zip(names, _colors(len(names))):
            m = metrics_by_run[name].sort_values("step")
            x = m["step"].to_numpy(dtype=float) + 1.0
            ax_tr.plot(x, m["train_acc"].to_numpy(dtype=float), color=color, lw=1.5, label=name)
            ax_te.plot(x, m["test_acc"].to_numpy(dtype=float), color=color, lw=1.5)
        for ax, split in ((ax_tr, "Train"), (ax_te, "Test")):
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(STEP_LABEL)
            ax.set_title(f"{split} accuracy")
            ax.grid(True, alpha=0.3)
        ax_tr.set_ylabel("accuracy (fraction correct)")
        ax_te.tick_params(labelleft=True)  # sharey hides them; each panel should read on its own
        if names:
            fig.legend(loc="outside right upper", title="run", fontsize="small")
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_sweep_sharpness(curvature_by_run: dict[str, pd.DataFrame], metrics_by_run: dict[str, pd.DataFrame], path, *,
                         title: str, dpi: int = 110) -> None:
    """Edge of stability across a sweep: each run's sharpness against (linear) steps with its
    own 2/lr line dashed in the same colour, above each run's training loss on the same axis.

    Sharpness is drawn on a log axis when the runs' thresholds span more than a factor of 3
    (a sweep over learning rates), so that every run's 2/lr line is readable.
    """
    fig, (ax_s, ax_l) = plt.subplots(2, 1, figsize=SWEEP_SHARPNESS_FIGSIZE, sharex=True, layout="constrained",
                                     height_ratios=[2, 1])
    try:
        names = list(curvature_by_run)
        thresholds = []
        for name, color in zip(names, _colors(len(names))):
            c = curvature_by_run[name].sort_values("step")
            threshold = float(c["sharpness_threshold"].iloc[0])  # NaN where 2/lr does not apply (report.edge_assessed)
            thresholds.append(threshold)
            ax_s.plot(c["step"], c["sharpness"], color=color, lw=1.8, marker="o", ms=3, label=f"{name}")
            if np.isfinite(threshold):
                ax_s.axhline(threshold, color=color, ls="--", lw=1.2, label=f"2/lr = {threshold:.3g}")
            m = metrics_by_run[name].sort_values("step")
            loss = m["train_loss"].to_numpy(dtype=float)
            ax_l.plot(m["step"], np.where(loss > 0, loss, np.nan), color=color, lw=1.2)
        drawn = [t for t in thresholds if np.isfinite(t)]
        if drawn and max(drawn) > 3 * min(drawn):
            ax_s.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 4, not 4 x 10^0
            ax_s.yaxis.set_major_formatter(plain)
            ax_s.yaxis.set_minor_formatter(plain)
        _label_thresholds(ax_s, thresholds, _colors(len(names)))
        ax_s.set_ylabel("sharpness (top Hessian eigenvalue)")
        ax_s.set_title("Sharpness (solid) and its stability threshold 2/lr (dashed), per run" if drawn else
                       "Sharpness per run (2/lr, the threshold of gradient descent, does not apply to their optimizer)")
        ax_s.grid(True, alpha=0.3)
        if names:
            ax_s.legend(loc="best", fontsize="small", ncols=2)
        ax_l.set_yscale("log")
        ax_l.set_xlabel("step")
        ax_l.set_ylabel("train loss (log scale)")
        ax_l.grid(True, alpha=0.3)
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


# ---- helpers ----------------------------------------------------------------------------
def _label_thresholds(ax, thresholds: list[float], colors: list) -> None:
    """Name each distinct 2/lr line on a right-hand axis of the same scale: a tick at the line,
    labelled "2/lr = value" in the colour of the first run that has it."""
    first = {}
    for t, color in zip(thresholds, colors):
        if np.isfinite(t):
            first.setdefault(t, color)
    if not first:
        return
    right = ax.secondary_yaxis("right")
    right.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(list(first)))
    right.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    right.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"2/lr = {v:.4g}"))  # 2000, not 2e+03
    right.tick_params(labelsize="small")
    for tick, color in zip(right.yaxis.get_major_ticks(len(first)), first.values()):  # in FixedLocator's order
        tick.label2.set_color(color)


def _colors(n: int) -> list:
    """Distinct colours: tab10 while it lasts, then tab20 (its ten hues first, then their light
    variants), then evenly spaced samples of a colour map."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in [*range(0, 20, 2), *range(1, 20, 2)][:n]]
    cmap = plt.get_cmap("turbo")
    return [cmap(v) for v in np.linspace(0.05, 0.95, n)]


def _first_reaching(x: np.ndarray, y: np.ndarray, level: float):
    """First x at which y >= level, or None if it never does."""
    hit = np.flatnonzero(np.nan_to_num(y, nan=-np.inf) >= level)
    return float(x[hit[0]]) if hit.size else None
