"""Figures of the signals stage: opposing groups' loss curves, the Δloss distribution, the cartography map.

Same conventions as `gradscope.plots` (fixed sizes, Agg backend, atomic PNG writes, steps
on a log axis at step + 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope.plots import STEP_LABEL, TRAIN_COLOR, _save, plt
from gradscope.scoring import planted_pairs

GROUP_LOSSES_FIGSIZE = (15.0, 4.8)  # up to three intervals side by side
LOSS_CHANGES_FIGSIZE = (15.0, 8.0)  # up to 4 x 3 intervals
CARTOGRAPHY_FIGSIZE = (8.0, 6.5)
MAX_INTERVALS = 12
PAIR_COLORS = ("tab:red", "tab:blue")


def strongest_pairs(pairs: pd.DataFrame, n: int = 3, preferred=None) -> pd.DataFrame:
    """The opposing pair with the most negative cosine in each interval, for the n intervals
    where it is most negative, in step order; pairs marked `preferred` (a boolean per row of
    `pairs`, e.g. the planted pair recovered) come before all others."""
    marked = pairs.assign(_preferred=False if preferred is None else np.asarray(preferred, dtype=bool))
    opposing = marked[marked["opposing"]].sort_values(["_preferred", "cosine"], ascending=[False, True])
    best = opposing.drop_duplicates(["step_from", "step_to"]).head(n)
    return best.sort_values("step_to").drop(columns="_preferred")


def plot_group_losses(group_losses: pd.DataFrame, pairs: pd.DataFrame, composition: pd.DataFrame,
                      metrics: pd.DataFrame, path, *, title: str, dpi: int = 110) -> None:
    """The signature plot of opposing signals: for the intervals with the most strongly
    opposing pair of groups, both groups' mean loss at every checkpoint, the interval in which
    they were selected shaded, and the mean training loss in grey. The legend gives each
    group's size and its majority planted class with its share (purity). Where the planted
    pair was recovered (two different planted groups as majorities, each over half), those
    intervals are shown first."""
    chosen = strongest_pairs(pairs, preferred=planted_pairs(pairs, composition))
    n = max(len(chosen), 1)
    fig, axes = plt.subplots(1, n, figsize=GROUP_LOSSES_FIGSIZE, layout="constrained", squeeze=False)
    try:
        comp = composition.set_index(["step_from", "step_to", "group"]) if len(composition) else None
        m = metrics.sort_values("step")
        for ax, pair in zip(axes[0], chosen.itertuples(index=False)):
            ax.plot(m["step"] + 1.0, m["train_loss"], color="0.55", lw=1.3, label="all training examples")
            for group, color in zip((pair.group_a, pair.group_b), PAIR_COLORS):
                d = group_losses[(group_losses["step_to"] == pair.step_to) & (group_losses["group"] == group)]
                d = d.sort_values("step")
                label = f"group {group}"
                if comp is not None:
                    c = comp.loc[(pair.step_from, pair.step_to, group)]
                    label += f" (n={int(c['size'])}, {c['purity']:.0%} {c['majority']})"
                ax.plot(d["step"] + 1.0, d["mean_loss"], color=color, lw=2.0, marker="o", ms=3.5, label=label)
            ax.axvspan(pair.step_from + 1.0, pair.step_to + 1.0, color="gold", alpha=0.3, label="selection interval")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(STEP_LABEL)
            ax.set_ylabel("mean loss of the group (log scale)")
            ax.set_title(f"steps {pair.step_from}→{pair.step_to}: gradient cosine {pair.cosine:.2f}")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        if chosen.empty:
            axes[0, 0].text(0.5, 0.5, "no opposing pair of groups found", ha="center", va="center",
                            transform=axes[0, 0].transAxes)
            axes[0, 0].set_axis_off()
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_loss_changes(loss_changes: pd.DataFrame, planted_ids, path, *, title: str, dpi: int = 110) -> None:
    """Histogram of the per-example loss change over each checkpoint interval (at most 12,
    evenly spread), counts on a log axis; planted examples stacked in orange where there are any."""
    intervals = loss_changes[["step_from", "step_to"]].drop_duplicates().sort_values("step_to")
    if len(intervals) > MAX_INTERVALS:
        intervals = intervals.iloc[np.linspace(0, len(intervals) - 1, MAX_INTERVALS).round().astype(int)]
    n = max(len(intervals), 1)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=LOSS_CHANGES_FIGSIZE, layout="constrained", squeeze=False)
    planted = set(int(i) for i in planted_ids) if planted_ids is not None else set()
    try:
        for ax in axes.ravel()[len(intervals):]:
            ax.set_axis_off()
        for ax, (a, b) in zip(axes.ravel(), intervals.itertuples(index=False)):
            d = loss_changes[(loss_changes["step_from"] == a) & (loss_changes["step_to"] == b)]
            is_planted = d["example_id"].isin(planted).to_numpy()
            delta = d["delta_loss"].to_numpy(dtype=float)
            lim = max(np.abs(delta).max(), 1e-12)
            bins = np.linspace(-lim, lim, 41)
            parts, labels, colors = [delta[~is_planted]], ["not planted" if planted else "all"], [TRAIN_COLOR]
            if is_planted.any():
                parts.append(delta[is_planted]), labels.append("planted"), colors.append("tab:orange")
            ax.hist(parts, bins=bins, stacked=True, color=colors, label=labels)
            ax.axvline(0, color="0.3", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"steps {a}→{b}", fontsize=10)
            ax.set_xlabel("Δ loss over the interval")
            ax.set_ylabel("examples (log scale)")
            ax.grid(True, alpha=0.3)
        if len(intervals):
            axes[0, 0].legend(fontsize=8)
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_cartography(per_example: pd.DataFrame, path, *, title: str, dpi: int = 110) -> None:
    """Dataset cartography (Swayamdipta et al. 2020): variability against confidence over the
    whole run, coloured by correctness; planted examples ringed in black."""
    fig, ax = plt.subplots(figsize=CARTOGRAPHY_FIGSIZE, layout="constrained")
    try:
        points = ax.scatter(per_example["variability"], per_example["confidence"], c=per_example["correctness"],
                            cmap="viridis", vmin=0, vmax=1, s=14, alpha=0.8, linewidths=0)
        planted = per_example[per_example["planted"]]
        if len(planted):
            ax.scatter(planted["variability"], planted["confidence"], facecolors="none", edgecolors="black", s=40,
                       linewidths=0.9, label=f"planted ({len(planted)})")
            ax.legend(loc="upper right")
        fig.colorbar(points, ax=ax, label="correctness (fraction of checkpoints correct)")
        ax.set_xlabel("variability (std of p(label) over checkpoints)")
        ax.set_ylabel("confidence (mean p(label) over checkpoints)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ax.text(0.01, 0.02, "hard to learn", transform=ax.transAxes, fontsize=9, color="0.3")
        ax.text(0.01, 0.95, "easy to learn", transform=ax.transAxes, fontsize=9, color="0.3")
        ax.text(0.75, 0.5, "ambiguous", transform=ax.transAxes, fontsize=9, color="0.3")
        ax.grid(True, alpha=0.3)
        ax.set_title(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)
