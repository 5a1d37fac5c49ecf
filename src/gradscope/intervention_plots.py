"""The interventions' figure (gradscope.interventions): each effect (flagged minus control, mean over seeds
with its interval) against k, one panel per figure and one line per detector and action. Written by the
interventions stage (gradscope.pipeline.write_interventions) into the sweep report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope.interventions import CONFIDENCE, FIGURES
from gradscope.plots import _save, plt


def plot_effects(effects: pd.DataFrame, path, *, title: str, dpi: int = 110):
    """Panels for the figures some intervention measured (a figure NaN everywhere, such as worst-group accuracy
    without groups, gets none); in each, effect ± its t interval against k, a zero line, a line per detector
    and action. Returns the figure (closed: for its data)."""
    shown = [f for f in FIGURES if f in set(effects["figure"]) and effects.loc[effects["figure"] == f, "effect"].notna().any()]
    n = max(len(shown), 1)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), layout="constrained", squeeze=False)
    try:
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        if not shown:
            axes.flat[0].text(0.5, 0.5, "no effect measured", ha="center", va="center", transform=axes.flat[0].transAxes)
        for ax, figure in zip(axes.flat, shown):
            d = effects[effects["figure"] == figure]
            for (detector, action), line in d.groupby(["detector", "action"], sort=True):
                line = line.sort_values("k")
                k, y = line["k"].to_numpy(dtype=float), line["effect"].to_numpy(dtype=float)
                low, high = line["ci_low"].to_numpy(dtype=float), line["ci_high"].to_numpy(dtype=float)
                err = np.vstack([y - low, high - y])
                seeds = int(line["n_seeds"].max())
                ax.errorbar(k, y, yerr=np.where(np.isfinite(err), err, 0.0), marker="o", capsize=4, lw=1.4,
                            label=f"{detector}, {action} ({seeds} seed{'s' * (seeds != 1)})")
            ax.axhline(0.0, color="0.3", lw=0.9, ls="--")
            ax.set_xlabel("k (examples intervened on)")
            ax.set_ylabel(f"Δ {FIGURES[figure]}")
            ax.set_title(f"{FIGURES[figure]}: flagged − control", fontsize=10)
            if len(set(d["k"])) <= 8:
                ax.set_xticks(sorted(set(d["k"])))
            ax.legend(fontsize=8)
        fig.suptitle(f"{title}\nmean over seeds, bars: {CONFIDENCE:.0%} t interval (none with one seed)", fontsize=11)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)
    return fig
