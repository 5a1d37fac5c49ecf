"""Trace of a curvature operator by Hutchinson's estimator (Hutchinson 1989, "A stochastic
estimator of the trace of the influence matrix for Laplacian smoothing splines") with Rademacher
probes, as in PyHessian (Yao et al. 2020, "PyHessian: Neural Networks Through the Lens of the
Hessian"), stopped by a relative standard-error rule."""

from __future__ import annotations

import numpy as np
import torch

from gradscope.curvature._common import DEFAULTS, rademacher
from gradscope.operators import CurvatureOperator

MIN_SAMPLES = 10  # probes before the stopping rule is first checked (capped at max_samples)


def hutchinson_trace(op: CurvatureOperator, *, tol: float = DEFAULTS["trace_tol"], min_samples: int | None = None,
                     max_samples: int = DEFAULTS["trace_max_samples"], seed: int = 0) -> dict:
    """Hutchinson estimate of tr(A) = E[z^T A z] with Rademacher z, for any curvature operator:
    dict(trace, stderr, n_samples).

    Stops at the first count >= min_samples with stderr <= tol * |mean| (tol is RELATIVE to the
    estimate; stderr = sample std (ddof=1) / sqrt(count)), else at max_samples. A trace near zero
    therefore usually runs to max_samples. Defaults: the schema's curvature.trace_tol and
    trace_max_samples; min_samples MIN_SAMPLES, capped at max_samples (given explicitly, it must
    satisfy 2 <= min_samples <= max_samples).
    """
    if min_samples is None:
        min_samples = min(MIN_SAMPLES, max_samples)
    if not 2 <= min_samples <= max_samples:
        raise ValueError(f"need 2 <= min_samples <= max_samples, got {min_samples}, {max_samples}")
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    while True:
        z = rademacher(op.n, gen, op.dtype, op.device)
        samples.append(float(z @ op.matvec(z)))
        if len(samples) < min_samples:
            continue
        s = np.asarray(samples)
        mean, stderr = float(s.mean()), float(s.std(ddof=1) / np.sqrt(len(s)))
        if len(s) >= max_samples or stderr <= tol * abs(mean):
            return {"trace": mean, "stderr": stderr, "n_samples": len(s)}
