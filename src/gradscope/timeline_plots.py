"""The timeline figure (gradscope.timeline): one run's training loss with its spikes, sharpness against
2/lr with its crossings, and the top opposing pair's group losses with their antiphase intervals, on one
step axis. Written by the timeline stage (gradscope.pipeline.write_timeline) into the run report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope.plots import STEP_LABEL, TRAIN_COLOR, _save, plt
from gradscope.signal_plots import PAIR_COLORS  # group_a, group_b: a pair drawn as the signal figures draw it

TIMELINE_FIGSIZE = (11.0, 10.0)
SPIKE_COLOR, REACH_COLOR, LEAVE_COLOR, ANTIPHASE_COLOR = "tab:red", "tab:green", "tab:purple", "gold"
EVENT_LINES = {"memorization": ("0.25", ":"), "generalization": ("tab:orange", "-.")}


def log_spaced(steps) -> bool:
    """Whether checkpoint steps are log-spaced: at least three, and the last gap at least four times the first
    (`train.checkpoints.log_spaced`; evenly spaced checkpoints have equal gaps)."""
    s = np.unique(np.asarray(steps, dtype=float)[np.isfinite(np.asarray(steps, dtype=float))])
    gaps = np.diff(s)
    return len(s) >= 3 and gaps[-1] >= 4 * gaps[0]


def plot_timeline(metrics: pd.DataFrame, curvature: pd.DataFrame, events: pd.DataFrame, pair_losses: pd.DataFrame | None,
                  pair: dict | None, path, *, title: str, dpi: int = 110):
    """One run's timeline (gradscope.timeline) on one step axis, three panels: the training loss with each loss
    spike marked (its peak, its extent shaded); sharpness against 2/lr with the checkpoints' crossings marked (no
    line and no crossings where 2/lr does not apply); the top opposing pair's group losses with its antiphase
    intervals shaded. Memorization and generalization are vertical lines through every panel, the spikes dotted
    red lines through the lower two. The step axis is log (step + 1) where the checkpoints are log-spaced
    (`log_spaced`), else linear; its label says which. Returns the figure (closed: for its data)."""
    m = metrics.sort_values("step")
    c = curvature.sort_values("step") if curvature is not None else pd.DataFrame({"step": [], "sharpness": []})
    ev = events if events is not None else pd.DataFrame({"kind": [], "step": [], "step_start": [], "step_end": []})
    log_x = log_spaced(c["step"] if len(c) else m["step"])
    shift = 1.0 if log_x else 0.0  # a log axis draws step + 1, so that step 0 stays visible
    of = {k: ev[ev["kind"] == k] for k in ("loss_spike", "sharpness_reach", "sharpness_leave", "antiphase",
                                           "memorization", "generalization")}
    fig, (ax_l, ax_s, ax_g) = plt.subplots(3, 1, figsize=TIMELINE_FIGSIZE, sharex=True, layout="constrained",
                                           height_ratios=(1.2, 1.0, 1.0))
    try:
        # training loss and its spikes
        xm, loss = m["step"].to_numpy(dtype=float) + shift, m["train_loss"].to_numpy(dtype=float)
        ax_l.plot(xm, np.where(loss > 0, loss, np.nan) if np.nanmin(loss) > 0 else loss, color=TRAIN_COLOR, lw=1.4,
                  label="training loss")
        spikes = of["loss_spike"]
        for e in spikes.itertuples(index=False):
            ax_l.axvspan(e.step_start + shift, e.step_end + shift, color=SPIKE_COLOR, alpha=0.12, lw=0)
        if len(spikes):
            peak = np.interp(spikes["step"].to_numpy(dtype=float), m["step"].to_numpy(dtype=float), loss)
            ax_l.plot(spikes["step"].to_numpy(dtype=float) + shift, peak, ls="none", marker="v", ms=8,
                      color=SPIKE_COLOR, markeredgecolor="black", label=f"loss spike ({len(spikes)})")
        if np.nanmin(loss) > 0:
            ax_l.set_yscale("log")
            ax_l.set_ylabel("training loss (log scale)")
        else:
            ax_l.set_ylabel("training loss")
        ax_l.set_title("Training loss and its spikes (above the rolling baseline by the margin; extent shaded)")

        # sharpness against 2/lr
        xc, sharp = c["step"].to_numpy(dtype=float) + shift, c["sharpness"].to_numpy(dtype=float)
        ax_s.plot(xc, sharp, color="tab:red", marker="o", ms=4, lw=1.4, label="sharpness (top Hessian eigenvalue)")
        thresholds = c["sharpness_threshold"].to_numpy(dtype=float) if "sharpness_threshold" in c else np.array([])
        applies = bool(np.isfinite(thresholds).any())
        if applies:
            ax_s.plot(xc, thresholds, color="0.2", ls="--", lw=1.3,
                      label=f"2/lr = {float(np.nanmedian(thresholds)):.4g}")
            for kind, color, marker, name in (("sharpness_reach", REACH_COLOR, "^", "reaches 2/lr"),
                                              ("sharpness_leave", LEAVE_COLOR, "v", "leaves 2/lr")):
                d = of[kind]
                if len(d):
                    at = d["step"].to_numpy(dtype=float)
                    level = np.interp(at, c["step"].to_numpy(dtype=float), np.nan_to_num(thresholds, nan=np.nanmedian(thresholds)))
                    ax_s.plot(at + shift, level, ls="none", marker=marker, ms=10, color=color, markeredgecolor="black",
                              label=f"sharpness {name} ({len(d)})")
            finite = sharp[np.isfinite(sharp)]
            top = max(float(np.nanmax(thresholds)), finite.max() if finite.size else 0.0)
            ax_s.set_ylim(bottom=min(0.0, finite.min() if finite.size else 0.0), top=1.15 * top)
            ax_s.set_title("Sharpness against the stability threshold 2/lr (crossings interpolated between checkpoints)")
        else:
            ax_s.set_title("Sharpness (2/lr, the threshold of gradient descent, does not apply to this optimizer: "
                           "no crossings)")
        ax_s.set_ylabel("sharpness")

        # the top pair's group losses and its antiphase intervals
        anti = of["antiphase"]
        if pair is not None and pair_losses is not None and len(pair_losses):
            xp = pair_losses["step"].to_numpy(dtype=float) + shift
            for col, group, color in (("loss_a", pair["group_a"], PAIR_COLORS[0]), ("loss_b", pair["group_b"], PAIR_COLORS[1])):
                ax_g.plot(xp, pair_losses[col].to_numpy(dtype=float), color=color, marker="o", ms=4, lw=1.8,
                          label=f"group {group}")
            both = pair_losses[["loss_a", "loss_b"]].to_numpy(dtype=float)
            spans = bool((both > 0).all() and np.nanmax(both) > 10 * np.nanmin(both))  # log only over a decade
            if spans:
                ax_g.set_yscale("log")
            ax_g.set_ylabel("mean loss of the group" + (" (log scale)" if spans else ""))
            ax_g.set_title(f"Top opposing pair (steps {pair['step_from']}→{pair['step_to']}, gradient cosine "
                           f"{pair['cosine']:.2f}); antiphase shaded")
        else:
            ax_g.text(0.5, 0.5, "no opposing pair of groups found", ha="center", va="center", transform=ax_g.transAxes)
            ax_g.set_ylabel("mean loss of the group")
            ax_g.set_title("Top opposing pair")
        few = len(anti) <= 5  # each interval's r written over it; more would overlap: their mean in the legend
        label = (f"antiphase ({len(anti)}; r of the loss changes shown)" if few else
                 f"antiphase ({len(anti)} intervals; mean r of the loss changes {anti['value'].mean():.2f})")
        for i, e in enumerate(anti.itertuples(index=False)):
            ax_g.axvspan(e.step_start + shift, e.step_end + shift, color=ANTIPHASE_COLOR, alpha=0.35, lw=0,
                         label=label if i == 0 else None)
            if few:
                ax_g.text((e.step_start + e.step_end) / 2 + shift, 0.97, f"r = {e.value:.2f}",
                          transform=ax_g.get_xaxis_transform(), ha="center", va="top", fontsize=8)

        # events through the panels, each named once: the spikes (dotted, lower panels; named in the sharpness
        # panel's legend) and memorization / generalization (every panel; named in the loss panel's legend)
        for ax in (ax_s, ax_g):
            for i, at in enumerate(spikes["step"].to_numpy(dtype=float)):
                ax.axvline(at + shift, color=SPIKE_COLOR, ls=":", lw=1.0, alpha=0.8,
                           label="loss spike (dotted)" if i == 0 and ax is ax_s else None)
        for kind, (color, ls) in EVENT_LINES.items():
            for ax in (ax_l, ax_s, ax_g):
                for i, at in enumerate(of[kind]["step"].to_numpy(dtype=float)):
                    ax.axvline(at + shift, color=color, ls=ls, lw=1.6,
                               label=f"{kind} (step {at:,.0f})" if i == 0 and ax is ax_l else None)
        for ax in (ax_l, ax_s, ax_g):
            ax.grid(True, which="major", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
        if log_x:
            ax_g.set_xscale("log")
        ax_g.set_xlabel(STEP_LABEL + ", as the checkpoints are log-spaced" if log_x else "step (linear scale)")
        fig.suptitle(title)
        _save(fig, path, dpi)
    finally:
        plt.close(fig)
    return fig
