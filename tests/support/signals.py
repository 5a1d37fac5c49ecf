"""Signals inputs with a planted answer."""

import numpy as np
import pandas as pd

from gradscope import signals


def planted_pair_trajectories(seed=0, n=80, steps=(0, 10, 20, 30), dim=16):
    """Two planted groups (ids 0-9, 10-19) whose gradients point in opposite directions and whose
    losses swing the most, alternating: A rises while B falls, then the reverse."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    rows = []
    for t, s in enumerate(steps):
        for i in range(n):
            group = "A" if i < 10 else "B" if i < 20 else ""
            sign = {"A": 1.0, "B": -1.0, "": 0.0}[group]
            swing = 3.0 * (1 if t % 2 else -1) * sign
            g = sign * direction * 4 + rng.standard_normal(dim) if group else rng.standard_normal(dim)
            rows.append(dict(step=s, split="train", example_id=i, loss=1.0 + swing + 0.05 * rng.random(),
                             p_true=0.5, margin=0.0, correct=True, grad_norm=1.0, grad_cos_mean=0.0, el2n=0.5,
                             grad_proj=g))
    return signals.Trajectories.from_table(pd.DataFrame(rows))
