"""What every figure module shares: matplotlib on the headless Agg backend, the atomic PNG save,
the log step axis's label and the train and test colours."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402, F401  (after the backend is chosen; the figure modules' plt)

from gradscope.artifacts import atomic_path  # noqa: E402

STEP_LABEL = "step + 1 (log scale)"
TRAIN_COLOR, TEST_COLOR = "tab:blue", "tab:orange"


def save(fig, path, dpi: int) -> None:
    """`fig` written to `path` as PNG at `dpi`, atomically, on a white background."""
    # the temporary name ends in .tmp, so the format must be given, not inferred
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
