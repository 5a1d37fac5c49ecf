"""hutchinson_trace (gradscope.curvature.hutchinson): its probes, standard error and stopping rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradscope.curvature import hutchinson_trace
from support.curvature import MatrixOperator

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def test_hutchinson_stderr_and_relative_stopping_rule():
    gen = torch.Generator().manual_seed(81)
    G = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    A = G @ G.T / 30 + torch.diag(torch.linspace(0.0, 2.0, 30, dtype=torch.float64))
    probes = []

    class Recording(MatrixOperator):
        def _matvec(self, v):
            probes.append(v.clone())
            return self.A @ v

    tol, lo, hi = 0.03, 5, 400
    out = hutchinson_trace(Recording(A), tol=tol, min_samples=lo, max_samples=hi, seed=2)
    z = torch.stack(probes)  # (n_samples, 30)
    assert out["n_samples"] == len(z) and lo <= len(z) < hi
    assert torch.all(z.abs() == 1)
    s = ((z @ A) * z).sum(1).numpy()  # z_i^T A z_i

    def stderr(m):
        return s[:m].std(ddof=1) / np.sqrt(m)

    assert out["trace"] == pytest.approx(s.mean(), rel=1e-12)
    assert out["stderr"] == pytest.approx(stderr(len(s)), rel=1e-12)
    assert stderr(len(s)) <= tol * abs(s.mean())
    # It stopped at the first count where the relative criterion held, not later.
    assert all(stderr(m) > tol * abs(s[:m].mean()) for m in range(lo, len(s)))
    assert abs(out["trace"] - float(torch.trace(A))) <= 3 * out["stderr"]


def test_hutchinson_uses_rademacher_probes():
    # z^T D z = tr(D) exactly for +-1 probes and diagonal D: zero variance, stop at min_samples.
    d = torch.linspace(-1.0, 3.0, 50, dtype=torch.float64)
    out = hutchinson_trace(MatrixOperator(torch.diag(d)), tol=1e-9, min_samples=4, max_samples=100, seed=0)
    assert out["n_samples"] == 4 and out["stderr"] < 1e-12
    assert out["trace"] == pytest.approx(float(d.sum()), rel=1e-12)
    with pytest.raises(ValueError):
        hutchinson_trace(MatrixOperator(torch.eye(5, dtype=torch.float64)), min_samples=10, max_samples=5)
    # Left to its default, min_samples (10) is capped at max_samples: the schema allows 2.
    assert hutchinson_trace(MatrixOperator(torch.diag(d)), tol=1e-9, max_samples=4)["n_samples"] == 4
