"""The figure of the grokking circuit's progress measures (gradscope.progress) beside the loss curves."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope._figures import STEP_LABEL, TEST_COLOR, TRAIN_COLOR, plt, save

PROGRESS_FIGSIZE = (10.0, 9.0)


def plot_progress(progress: pd.DataFrame, metrics: pd.DataFrame, path, *, title: str, dpi: int = 110) -> None:
    """Progress measures of the grokking circuit (gradscope.progress) on the loss curves' log step axis.

    Top: train and test loss (every logged step) with the restricted loss (logits kept on the key
    frequencies' directions) and the excluded loss (those directions removed), both on the training
    pairs, at the checkpoints. Below, on the same axis: the fraction of the embedding's squared norm
    in the key frequencies (and in each checkpoint's own top frequencies, where those differ); the
    weight norm (every logged step) with test accuracy on a second axis. Nanda et al. 2023 read
    circuit formation as the restricted loss falling before the test loss, and cleanup as the
    excluded loss rising while the weight norm falls.
    """
    pr, m = progress.sort_values("step"), metrics.sort_values("step")
    fig, (ax_l, ax_f, ax_w) = plt.subplots(3, 1, figsize=PROGRESS_FIGSIZE, sharex=True, layout="constrained",
                                           height_ratios=(2.0, 1.0, 1.0))
    try:
        xm, xp = m["step"].to_numpy(dtype=float) + 1.0, pr["step"].to_numpy(dtype=float) + 1.0
        for col, color, label in (("train_loss", TRAIN_COLOR, "train loss"), ("test_loss", TEST_COLOR, "test loss")):
            y = m[col].to_numpy(dtype=float)
            ax_l.plot(xm, np.where(y > 0, y, np.nan), color=color, lw=1.5, label=label)
        keys = ", ".join(map(str, pr["key_frequencies"].iloc[-1]))
        for col, color, marker, label in (("restricted_loss", "tab:green", "o", "restricted loss (key frequencies only)"),
                                          ("excluded_loss", "tab:red", "s", "excluded loss (key frequencies removed)")):
            y = pr[col].to_numpy(dtype=float)
            ax_l.plot(xp, np.where(y > 0, y, np.nan), color=color, marker=marker, ms=4, lw=1.4, label=label)
        ax_l.set_xscale("log")
        ax_l.set_yscale("log")
        ax_l.set_ylabel("loss (log scale)")
        ax_l.set_title(f"Loss; restricted and excluded losses on the training pairs (key frequencies k = {keys})")
        ax_l.grid(True, which="major", alpha=0.3)
        ax_l.legend(loc="best", fontsize=9)

        ax_f.plot(xp, pr["key_fraction"].to_numpy(dtype=float), color="tab:purple", marker="o", ms=4, lw=1.4,
                  label="in the key frequencies")
        if any(list(a) != list(b) for a, b in zip(pr["key_frequencies"], pr["top_frequencies"])):
            ax_f.plot(xp, pr["top_fraction"].to_numpy(dtype=float), color="tab:purple", ls="--", marker=".", lw=1.0,
                      label="in each checkpoint's own top frequencies")
        ax_f.set_ylim(0.0, 1.02)
        ax_f.set_ylabel("fraction of\nembedding norm²")
        ax_f.set_title("Embedding's Fourier spectrum over token a: share of the key frequencies")
        ax_f.grid(True, which="major", alpha=0.3)
        ax_f.legend(loc="best", fontsize=9)

        ax_w.plot(xm, m["weight_norm"].to_numpy(dtype=float), color="0.2", lw=1.5, label="weight norm")
        ax_w.set_ylabel("weight norm (L2, all parameters)")
        ax_w.set_xlabel(STEP_LABEL)
        ax_w.grid(True, which="major", alpha=0.3)
        ax_a = ax_w.twinx()
        ax_a.plot(xm, m["test_acc"].to_numpy(dtype=float), color=TEST_COLOR, lw=1.0, ls=":", label="test accuracy")
        ax_a.set_ylim(-0.02, 1.02)
        ax_a.set_ylabel("test accuracy", color=TEST_COLOR)
        lines = ax_w.get_lines() + ax_a.get_lines()
        ax_w.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=9)
        ax_w.set_title("Weight norm (as logged in training) and test accuracy")
        fig.suptitle(title)
        save(fig, path, dpi)
    finally:
        plt.close(fig)
