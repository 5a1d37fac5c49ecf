"""lanczos_top, the Lanczos iteration (gradscope.curvature.lanczos), on matrices of known spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from gradscope.curvature import lanczos_top
from support.curvature import MatrixOperator

# torch.func.hessian's forward-mode pass loads jit-scripted decompositions inside torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def operator_with_spectrum(spectrum: torch.Tensor, seed: int) -> torch.Tensor:
    """Q diag(spectrum) Q^T for a random orthogonal Q: a symmetric matrix with known eigenvalues."""
    n = len(spectrum)
    Qm, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Qm @ torch.diag(spectrum) @ Qm.T


def test_lanczos_converges_before_n_and_stops_on_breakdown():
    gen = torch.Generator().manual_seed(31)
    n = 200
    Qm, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([5.0, 4.0]), torch.linspace(-1.0, 1.0, n - 2, dtype=torch.float64)])
    A = Qm @ torch.diag(spectrum) @ Qm.T
    # k = iters: every Ritz value and vector, largest first
    res = lanczos_top(MatrixOperator(A), k=30, iters=30, tol=None, seed=0, return_eigenvectors=True)
    assert res.steps == 30 and res.eigenvectors.shape == (30, n)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    np.testing.assert_allclose(res.eigenvalues[:2], [5.0, 4.0], rtol=1e-10)
    top = torch.from_numpy(res.eigenvectors[0])
    assert_close(A @ top, 5.0 * top, atol=1e-6, rtol=0)
    # Three distinct eigenvalues: the Krylov space is invariant after 3 steps.
    B = Qm @ torch.diag(torch.tensor([3.0] * 50 + [1.0] * 50 + [-2.0] * 100, dtype=torch.float64)) @ Qm.T
    res = lanczos_top(MatrixOperator(B), k=30, iters=30, tol=None, seed=0)
    assert res.steps == 3
    np.testing.assert_allclose(res.eigenvalues, [3.0, 1.0, -2.0], rtol=1e-10)
    # iters beyond n is clipped to n.
    assert lanczos_top(MatrixOperator(A[:5, :5]), iters=30, tol=None, seed=0).steps == 5


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_lanczos_tol_stops_at_first_certified_step(seed, k, tol):
    # Top eigenvalues 10, 9.5, 9.2, 9.0 over a bulk in [-1, 8]: gaps small enough that Lanczos takes a while.
    gen = torch.Generator().manual_seed(100 + seed)
    bulk = torch.rand(296, generator=gen, dtype=torch.float64) * 9 - 1
    spectrum = torch.cat([torch.tensor([10.0, 9.5, 9.2, 9.0], dtype=torch.float64), bulk])
    A = operator_with_spectrum(spectrum, seed)
    exact = np.sort(spectrum.numpy())[::-1]
    res = lanczos_top(MatrixOperator(A), iters=200, seed=seed, k=k, tol=tol, return_eigenvectors=True)
    theta, Y = res.eigenvalues, torch.from_numpy(res.eigenvectors)
    # The reported residuals are the true ones, |A y - theta y|, computed here directly.
    direct = (Y @ A - torch.from_numpy(theta)[:, None] * Y).norm(dim=1).numpy()
    np.testing.assert_allclose(res.residuals, direct, rtol=1e-6, atol=1e-12)
    assert res.residual == pytest.approx(float(np.max(direct / np.abs(theta))), rel=1e-6)
    assert np.all(direct <= tol * np.abs(theta))
    # The bound holds: each theta is within tol of an eigenvalue (here, of the true i-th largest).
    assert np.all(np.abs(theta - exact[:k]) <= tol * np.abs(theta))
    # It stopped at the first step where the bound held: one step fewer does not certify.
    fewer = lanczos_top(MatrixOperator(A), k=k, iters=res.steps - 1, tol=None, seed=seed)
    assert np.any(fewer.residuals > tol * np.abs(fewer.eigenvalues))
    assert 5 <= res.steps < 200  # not trivially short, nor run to the cap


def test_warm_start_from_nearby_eigenvectors_saves_steps():
    gen = torch.Generator().manual_seed(7)
    spectrum = torch.cat([torch.tensor([10.0, 9.0], dtype=torch.float64),
                          torch.rand(398, generator=gen, dtype=torch.float64) * 8])
    A = operator_with_spectrum(spectrum, 3)
    E = torch.randn(400, 400, generator=gen, dtype=torch.float64)
    B = A + 0.05 * (E + E.T) / 400**0.5  # the next checkpoint's Hessian: a small symmetric change
    before = lanczos_top(MatrixOperator(A), iters=100, k=2, tol=1e-8, return_eigenvectors=True)
    warm = before.eigenvectors  # A's top two eigenvectors
    exact = torch.linalg.eigvalsh(B).flip(0)[:2].numpy()
    cold = lanczos_top(MatrixOperator(B), iters=100, seed=1, k=2, tol=1e-4)
    hot = lanczos_top(MatrixOperator(B), iters=100, seed=1, k=2, tol=1e-4, warm=warm)
    for res in (cold, hot):
        np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-4)
    assert hot.steps < 0.8 * cold.steps
    # The warm start keeps a random part: a top direction missing from `warm` is still found.
    hidden = lanczos_top(MatrixOperator(B), iters=100, seed=1, k=1, tol=1e-4, warm=warm[1:])
    np.testing.assert_allclose(hidden.eigenvalues[0], exact[0], rtol=1e-4)
