"""Bring your own data: an example for gradscope's `python` data source.

In a config:

    data:
      generator: python
      python: {factory: "user_code.my_data:noisy_waves", kwargs: {n_train: 2000, n_test: 1000}, label_noise: 0.1}

gradscope calls factory(**kwargs) and expects ((x_train, y_train), (x_test, y_test)): inputs
(n, ...) in the shape the model receives, labels as class indices (numpy arrays or tensors).
Seed it from its arguments, so the same config gives the same data; gradscope's own
label_noise, subsample and standardize settings apply on top.
"""

from __future__ import annotations

import numpy as np


def noisy_waves(n_train: int = 2000, n_test: int = 1000, length: int = 40, n_classes: int = 4, noise: float = 0.5,
                seed: int = 0):
    """1-D signals (1, length): class c is a sine of frequency c + 1 with a random phase and amplitude, plus noise."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(n_classes, size=n)
    t = np.linspace(0, 1, length, endpoint=False)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    amp = rng.uniform(0.5, 1.5, size=(n, 1))
    x = amp * np.sin(2 * np.pi * (y[:, None] + 1) * t + phase) + noise * rng.standard_normal((n, length))
    x = x[:, None, :].astype(np.float32)  # (n, 1, length): one channel
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])
